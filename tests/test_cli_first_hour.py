"""The first hour with the CLI: what a newcomer meets before anything is configured for real."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from bridge import __version__, samples
from bridge.cli import DEFAULT_PORT, main
from bridge.config import data_dir, load_config
from bridge.local_server import LocalServer
from bridge.web import create_app
from tests.conftest import TEST_KEY, free_port, wait_until
from tests.test_e2e import ROOT, clean_env

UNSET_SECRET = "${FIRST_HOUR_UNSET_SECRET}"  # a webhook secret's variable nobody sets


@pytest.fixture(autouse=True)
def no_environment(monkeypatch):
    for name in ("PUMBLE_API_KEY", "PUMBLE_BASE_URL", "BRIDGE_CONFIG", "BRIDGE_DATA_DIR",
                 "PORT", "FIRST_HOUR_UNSET_SECRET"):
        monkeypatch.delenv(name, raising=False)


def test_version_and_every_default_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"pumble-bridge {__version__}"
    with pytest.raises(SystemExit):
        main(["fake-pumble", "--help"])
    fake_help = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--port PORT port to listen on (default: 8025)" in fake_help
    assert "--host HOST address to listen on (default: 127.0.0.1)" in fake_help
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    run_help = " ".join(capsys.readouterr().out.split())
    assert "the embedded Redis (when no Redis URL is configured)" in run_help
    assert "a fake Pumble (when no Pumble API key is)" in run_help
    assert "--host HOST address to listen on (default: 127.0.0.1)" in run_help


def test_the_data_dir_is_beside_the_config_unless_bridge_data_dir_says(tmp_path):
    config = tmp_path / "conf" / "config.yaml"
    assert data_dir({}, config) == tmp_path / "conf" / ".pumble-bridge"
    assert data_dir({"BRIDGE_DATA_DIR": str(tmp_path / "d")}, config) == tmp_path / "d"


def test_dlq_list_from_elsewhere_uses_the_configs_data_dir_says_so_and_logs_nothing(tmp_path):
    """Run from another directory, `dlq list` finds the Redis beside the config, says which, and
    writes no log line (a one-shot command is quiet); its webhook secret's variable is unset."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "config.yaml").write_text(yaml.safe_dump(
        {"sources": {"shop": {"type": "shopify", "secret": UNSET_SECRET}}}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-m", "bridge", "--config", str(conf / "config.yaml"),
                           "dlq", "list"], cwd=elsewhere, capture_output=True, text=True,
                          timeout=60, env=clean_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout == "0 dead letter(s)\n"
    data = conf / ".pumble-bridge"
    said, socket_url = done.stderr, done.stderr.split(" ")[5].rstrip(",")  # the one line
    assert said == (f"pumble-bridge dlq: embedded Redis at {socket_url}, data in {data} "
                    "(BRIDGE_DATA_DIR, else beside the config file)\n")
    assert socket_url.startswith("unix://") and socket_url.endswith(".sock")
    assert (conf / ".pumble-bridge" / "redis").is_dir()
    assert not (elsewhere / ".pumble-bridge").exists()


def test_pumble_and_dlq_list_need_no_webhook_secret(tmp_path, fake_pumble, redis_url,
                                                    queue_name, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "pumble": {"base_url": fake_pumble.url, "api_key": TEST_KEY},
        "redis": {"url": redis_url, "queue": queue_name},
        "sources": {"shop": {"type": "shopify", "secret": UNSET_SECRET}}}))
    assert main(["--config", str(path), "pumble", "send", "orders", "no secret needed"]) == 0
    assert fake_pumble.messages("orders")[0]["text"] == "no secret needed"
    assert main(["--config", str(path), "dlq", "list"]) == 0
    assert capsys.readouterr().out.endswith("0 dead letter(s)\n")
    # The control: a command that verifies webhooks does need it, and says which variable.
    assert main(["--config", str(path), "check"]) == 2
    assert "environment variable FIRST_HOUR_UNSET_SECRET is not set" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "flag"), [
    (["fake-pumble", "--port", "{port}"], "--port"),
    (["serve", "--port", "{port}"], "--port (or PORT)"),
])
def test_a_port_in_use_is_one_line_naming_the_flag(argv, flag, write_config, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["--config", str(write_config()),
                     *(arg.format(port=port) for arg in argv)])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (f"pumble-bridge: cannot listen on 127.0.0.1:{port} (Address already in "
                   f"use): choose another port with {flag}\n")


def test_send_sample_topic_is_parsed_as_that_event(write_config, redis_url, queue_name,
                                                    rq_queue, capsys):
    every_event = {"name": "all", "channel": "orders", "text": "{{ event.type }}"}
    path = write_config(redis_url=redis_url, queue=queue_name, routes=[every_event])
    with LocalServer(create_app(load_config(path, {}), redis_url)) as receiver:
        assert main(["--config", str(path), "send-sample", "--url", receiver.url,
                     "--topic", "orders/cancelled"]) == 0
    out = capsys.readouterr().out
    assert "(orders/cancelled, order #" in out and " -> 202 " in out
    assert json.loads(out.partition(" -> 202 ")[2])["type"] == "order.cancelled"


def test_send_sample_follows_port_and_names_what_it_cannot_reach(write_config, monkeypatch,
                                                                 capsys):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("PORT", str(port))
    assert main(["--config", str(write_config()), "send-sample"]) == 2
    assert (f"pumble-bridge: cannot reach the receiver at http://127.0.0.1:{port}/webhooks/shop"
            in capsys.readouterr().err)


@pytest.mark.parametrize("topic", samples.TOPICS)
def test_the_shipped_sample_payloads_are_the_samples_of_order_1001(topic):
    shipped = ROOT / "docs" / "examples" / "shopify" / f"{topic.replace('/', '_')}.json"
    assert json.loads(shipped.read_text()) == samples.shopify_payload(topic, 1001)


def test_the_env_example_names_the_variables_the_procfile_needs():
    """`cp .env.example .env; honcho start`: the config it names exists once copied as the docs
    say, and the receiver's port is the one send-sample uses by default."""
    lines = [line for line in (ROOT / ".env.example").read_text().splitlines()
             if line and not line.startswith("#")]
    env = dict(line.split("=", 1) for line in lines)
    assert env["BRIDGE_CONFIG"] == "config.yaml" and env["PORT"] == str(DEFAULT_PORT)
    deploying = (ROOT / "docs" / "deploying.md").read_text()
    assert "cp config.example.yaml config.yaml" in deploying and "cp .env.example .env" in deploying


def test_run_then_send_sample_lifecycle_draws_the_readmes_picture(tmp_path):
    """The README's first hour: `run` says where to look and that it is ready; a second `run`
    in its data dir, or on its ports, is refused in one line; `send-sample --lifecycle` (to the
    port PORT names) posts an order with its payment, fulfilment and refund as replies in its
    thread and a check mark on it."""
    config = tmp_path / "config.yaml"
    config.write_text((ROOT / "config.example.yaml").read_text())
    port, fake_port = free_port(), free_port()
    log = tmp_path / "run.log"

    def refused(*flags: str, **env: str) -> str:
        done = subprocess.run([sys.executable, "-m", "bridge", "--config", str(config), "run",
                               *flags], cwd=ROOT, env=clean_env(**env), capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        return done.stderr

    with log.open("w") as output:
        first = subprocess.Popen([sys.executable, "-m", "bridge", "--config", str(config), "run",
                                  "--port", str(port), "--fake-pumble-port", str(fake_port)],
                                 cwd=ROOT, env=clean_env(), stdout=output,
                                 stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "ready: try" in log.read_text(), "run to say it is ready")
        lines = log.read_text().splitlines()
        ready = next(at for at, line in enumerate(lines) if line.startswith("ready: try"))
        assert lines[ready - 3:ready + 1] == [  # the banner's end, then the ready line
            f"  here, and shown as a channel at http://127.0.0.1:{fake_port}/_fake/",
            "  Nothing reaches a real Pumble.", "!" * 78,
            f"ready: try `pumble-bridge --config {config} send-sample --url "
            f"http://127.0.0.1:{port}`"]

        data = tmp_path / ".pumble-bridge"
        assert refused("--port", str(free_port())) == (
            f"pumble-bridge: another `pumble-bridge run` is using {data}: stop it first, or "
            "give this one its own BRIDGE_DATA_DIR\n")
        other_dir = {"BRIDGE_DATA_DIR": str(tmp_path / "other")}
        assert refused("--port", str(port), **other_dir).endswith(
            "): choose another port with --port\n")
        assert refused("--port", str(free_port()), "--fake-pumble-port", str(fake_port),
                       **other_dir).endswith("): choose another port with --fake-pumble-port\n")

        sample = subprocess.run([sys.executable, "-m", "bridge", "--config", str(config),
                                 "send-sample", "--lifecycle"], cwd=ROOT, capture_output=True,
                                text=True, timeout=60, env=clean_env(PORT=str(port)))
        assert sample.returncode == 0, sample.stdout + sample.stderr
        assert [line.split(" (")[1].split(",")[0] for line in sample.stdout.splitlines()] == \
            list(samples.LIFECYCLE)

        def posted() -> list[dict]:
            return httpx.get(f"http://127.0.0.1:{fake_port}/_fake/messages").json()["messages"]

        wait_until(lambda: len(posted()) == 4 and posted()[0]["reactions"], "the four messages")
        root, *replies = posted()
        assert root["text"].startswith("🛒 New order #")
        assert [r["code"] for r in root["reactions"]] == [":white_check_mark:"]
        for reply, head in zip(replies, ("💰 Order paid", "🚚 Order fulfilled", "💸 Refund"),
                               strict=True):
            assert reply["text"].startswith(head), reply["text"]
        assert all(reply["threadReplyInfo"]["rootId"] == root["id"] for reply in replies)
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=60)
    assert first.returncode == 0, log.read_text()


@pytest.mark.alone  # the 5 s include starting Python and the bridge
@pytest.mark.parametrize(("command", "then"), [
    (["worker"], "retrying (Ctrl-C to stop)"),
    (["serve", "--dev"], "webhooks are answered 503 until it does"),
])
def test_redis_out_of_reach_is_said_within_seconds(command, then, write_config, tmp_path):
    """Not silence while the worker's connection retries (minutes), nor a receiver that starts
    as if all were well: one line naming the Redis (not its password) and what happens next."""
    redis_port = free_port()  # nothing listens there
    said = tmp_path / "stderr"
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "bridge", "--config", str(write_config()), *command,
         *(["--port", str(free_port())] if command[0] == "serve" else [])],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=said.open("w"), env=clean_env(
            REDIS_URL=f"redis://:hunter2-secret@127.0.0.1:{redis_port}/0",
            BRIDGE_LOG_FORMAT="text"))
    try:
        wait_until(lambda: "does not answer" in said.read_text(), "the warning", timeout=5)
    finally:
        process.kill()
        process.wait()
    assert time.monotonic() - started < 5
    [line] = [line for line in said.read_text().splitlines() if "does not answer" in line]
    assert f"WARNING bridge: Redis at redis://127.0.0.1:{redis_port}/0 does not answer (" in line
    assert line.endswith(then)
    assert "hunter2-secret" not in said.read_text()
