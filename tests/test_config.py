from pathlib import Path

import pytest

from bridge.config import ConfigError, load_config

GOOD = """\
pumble:
  api_key: ${PUMBLE_KEY_FOR_TEST}
sources:
  shop:
    type: shopify
    secret: ${SHOP_SECRET:-fallback-secret}
routes:
  - name: new-orders
    match:
      event: "order.*"
    channel: orders
    text: "Order {{ order.number }}"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(text)
    return path


def test_interpolates_variables_and_defaults(tmp_path):
    config = load_config(write(tmp_path, GOOD), {"PUMBLE_KEY_FOR_TEST": "k-123"})
    assert config.pumble.api_key.get_secret_value() == "k-123"
    assert config.sources["shop"].secret.get_secret_value() == "fallback-secret"
    assert config.routes[0].match.event == ["order.*"]  # one string is a one-item list


def test_variable_set_wins_over_default(tmp_path):
    config = load_config(write(tmp_path, GOOD),
                         {"PUMBLE_KEY_FOR_TEST": "k", "SHOP_SECRET": "from-env"})
    assert config.sources["shop"].secret.get_secret_value() == "from-env"


def test_missing_variable_names_file_line_and_variable(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert str(caught.value) == (
        f"{path}:2: pumble.api_key: environment variable PUMBLE_KEY_FOR_TEST is not set "
        "(set it, or write ${PUMBLE_KEY_FOR_TEST:-default})"
    )


@pytest.mark.parametrize("where", ["pumble", "account"])
def test_a_pumble_base_url_without_scheme_or_host_is_refused_in_one_line(tmp_path, where):
    text = GOOD.replace("  api_key: ${PUMBLE_KEY_FOR_TEST}\n", {
        "pumble": "  api_key: k\n  base_url: api-ext.pumble.com\n",
        "account": "  api_key: k\n  accounts:\n    other:\n      api_key: k2\n"
                   "      base_url: api-ext.pumble.com\n"}[where])
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), {})
    message = str(caught.value)
    assert "base_url" in message and "'api-ext.pumble.com' is not an http(s) URL" in message
    assert "\n" not in message


def test_escaped_dollar_stays_literal(tmp_path):
    text = GOOD.replace('"Order {{ order.number }}"', '"costs $${PRICE}"')
    config = load_config(write(tmp_path, text), {"PUMBLE_KEY_FOR_TEST": "k"})
    assert config.routes[0].text == "costs ${PRICE}"


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "sources:\n  shop: {type: shopify\n  secret: x\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    message = str(caught.value)
    assert message.startswith(f"{path}:")
    assert "not valid YAML" in message


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml", {})


def test_unknown_key_suggests_the_right_one(tmp_path):
    path = write(tmp_path, GOOD.replace("    channel: orders", "    chanel: orders"))
    with pytest.raises(ConfigError) as caught:
        load_config(path, {"PUMBLE_KEY_FOR_TEST": "k"})
    problems = caught.value.problems
    assert f"{path}:11: routes[0].chanel: unknown key (did you mean 'channel'?)" in problems
    assert f"{path}:8: routes[0].channel: required key is missing" in problems


def test_empty_secret_is_refused(tmp_path):
    path = write(tmp_path, GOOD.replace("${SHOP_SECRET:-fallback-secret}", "${SHOP_SECRET:-}"))
    with pytest.raises(ConfigError, match=r"sources\.shop\.secret: is empty"):
        load_config(path, {"PUMBLE_KEY_FOR_TEST": "k"})


def test_route_takes_one_body_not_two(tmp_path):
    path = write(tmp_path, GOOD.replace('    text: "Order {{ order.number }}"\n',
                                        '    text: "x"\n    template: order_created.j2\n'))
    with pytest.raises(ConfigError, match="give one of 'template'"):
        load_config(path, {"PUMBLE_KEY_FOR_TEST": "k"})


def test_environment_overrides(tmp_path):
    config = load_config(write(tmp_path, GOOD), {
        "PUMBLE_KEY_FOR_TEST": "k",
        "PUMBLE_BASE_URL": "http://127.0.0.1:1234",
        "REDIS_URL": "redis://127.0.0.1:6390/3",
    })
    assert config.pumble.base_url == "http://127.0.0.1:1234"
    assert config.redis.url == "redis://127.0.0.1:6390/3"


def test_pumble_api_key_variable_fills_an_absent_key(tmp_path):
    text = GOOD.replace("  api_key: ${PUMBLE_KEY_FOR_TEST}\n", "  base_url: http://x\n")
    config = load_config(write(tmp_path, text), {"PUMBLE_API_KEY": "from-env"})
    assert config.pumble.api_key.get_secret_value() == "from-env"


def test_secrets_do_not_show_in_repr(tmp_path):
    config = load_config(write(tmp_path, GOOD),
                         {"PUMBLE_KEY_FOR_TEST": "k-very-secret", "SHOP_SECRET": "s-very-secret"})
    assert "very-secret" not in repr(config)
    assert "very-secret" not in str(config.model_dump())


def test_example_config_is_valid():
    example = Path(__file__).parent.parent / "config.example.yaml"
    config = load_config(example, {})
    assert config.pumble.api_key is None  # no key: `run` uses the built-in fake
    assert [r.name for r in config.routes] == ["new-orders", "order-updates",
                                               "other-shop-events"]


def test_bare_sections_take_defaults(tmp_path):
    text = "pumble:\nredis:\nsources:\n  shop: {type: shopify, secret: s}\n"
    config = load_config(write(tmp_path, text), {"REDIS_URL": "redis://r:1/0"})
    assert config.pumble.api_key is None
    assert config.redis.url == "redis://r:1/0"


def test_wrong_type_names_the_line(tmp_path):
    path = write(tmp_path, GOOD.replace("    channel: orders", "    channel: orders\n"
                                        "    as_bot: perhaps"))
    with pytest.raises(ConfigError) as caught:
        load_config(path, {"PUMBLE_KEY_FOR_TEST": "k"})
    assert str(caught.value).startswith(f"{path}:12: routes[0].as_bot: Input should be a valid "
                                        "boolean")


def test_unknown_time_zone_is_refused(tmp_path):
    path = write(tmp_path, GOOD + "timezone: Mars/Olympus\n")
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Olympus'"):
        load_config(path, {"PUMBLE_KEY_FOR_TEST": "k"})
