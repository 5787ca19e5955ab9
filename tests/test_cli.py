import pytest

from bridge.cli import main
from bridge.gunicorn_app import GunicornApp
from tests.conftest import free_port


def test_check_accepts_a_good_config(write_config, capsys):
    path = write_config()
    assert main(["--config", str(path), "check"]) == 0
    assert "OK (1 source(s), 1 route(s))" in capsys.readouterr().out


def test_check_fails_with_every_reason(write_config, capsys):
    path = write_config(routes=[
        {"name": "a", "channel": "x", "template": "missing.j2"},
        {"name": "b", "channel": "x", "text": "{{ oops", "match": {"source": ["shopp"]}},
    ])
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    lines = path.read_text().splitlines()

    def line_of(text: str) -> int:
        return next(i for i, line in enumerate(lines, 1) if text in line)

    assert (f"{path}:{line_of('template: missing.j2')}: routes[0].template (route 'a'): "
            "template 'missing.j2' not found") in err
    assert (f"{path}:{line_of('text:')}: routes[1].text (route 'b'): template syntax "
            "error") in err
    assert (f"{path}:{line_of('match:')}: routes[1].match (route 'b'): source 'shopp' is not "
            "under sources:") in err


def test_a_when_that_does_not_compile_is_placed_on_its_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("sources:\n  s: {type: shopify, secret: x}\nroutes:\n  - name: big\n"
                    "    channel: orders\n    when: order.total >=\n")
    assert main(["--config", str(path), "check"]) == 2
    assert f"{path}:6: routes[0].when (route 'big'): " in capsys.readouterr().err


def test_unknown_source_type_is_reported(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("sources:\n  s: {type: shopfy, secret: x}\n")
    assert main(["--config", str(path), "check"]) == 2
    assert (f"{path}:2: sources.s.type: unknown source type 'shopfy' (known: bigcommerce, hmac, "
            "shopify, standard-webhooks, stripe, woocommerce)") in capsys.readouterr().err


def test_missing_config_file_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BRIDGE_CONFIG", raising=False)
    assert main(["--config", str(tmp_path / "none.yaml"), "check"]) == 2
    assert "no such config file" in capsys.readouterr().err


def test_bridge_config_variable_names_the_file(write_config, monkeypatch, capsys):
    monkeypatch.setenv("BRIDGE_CONFIG", str(write_config()))
    assert main(["check"]) == 0


def test_worker_without_a_key_refuses_clearly(write_config, capsys):
    assert main(["--config", str(write_config(api_key="")), "worker", "--burst"]) == 2
    assert "no Pumble API key" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--workers", "--threads"])
def test_serve_refuses_no_processes_or_threads_in_one_line(flag, write_config, capsys):
    assert main(["--config", str(write_config()), "serve", flag, "0"]) == 2
    assert capsys.readouterr().err == ("pumble-bridge: --workers and --threads must be 1 or "
                                       "more\n")


@pytest.mark.parametrize("value", ["0", "two", "-1", ""])
@pytest.mark.parametrize("flags", [[], ["--workers", "3"]])  # gunicorn would read it all the same
def test_a_web_concurrency_that_is_no_number_of_processes_is_one_line(
        value, flags, write_config, monkeypatch, capsys):
    monkeypatch.setenv("WEB_CONCURRENCY", value)
    monkeypatch.setattr(GunicornApp, "run", lambda app: None)  # never serve, if it got so far
    assert main(["--config", str(write_config()), "serve", "--port", str(free_port()),
                 *flags]) == 2
    assert capsys.readouterr().err == (f"pumble-bridge: WEB_CONCURRENCY: {value!r} is not a "
                                       "number of processes (1 or more)\n")


def test_platform_keys_are_checked_with_their_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("sources:\n  s:\n    type: shopify\n    secret: x\n    tolerence: 5\n")
    assert main(["--config", str(path), "check"]) == 2
    assert f"{path}:5: sources.s.tolerence: unknown key" in capsys.readouterr().err


def test_a_misspelt_key_is_two_marked_lines(tmp_path, capsys):
    """As docs/configuration.md shows it: the key that is not, the key that is missing."""
    path = tmp_path / "config.yaml"
    path.write_text("sources:\n  shop: {type: shopify, secret: try-me-not-a-real-secret}\n"
                    "routes:\n  - name: new-orders\n    match:\n      event: [order.created]\n"
                    "    chanel: orders\n")
    assert main(["--config", str(path), "check"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"pumble-bridge: {path}:4: routes[0].channel: required key is missing",
        f"pumble-bridge: {path}:7: routes[0].chanel: unknown key (did you mean 'channel'?)"]
