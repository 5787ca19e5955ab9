"""Log lines: JSON with the event's ids from receipt to Pumble's message id; secrets masked in
every line, whatever logs them; text on a terminal, JSON elsewhere, BRIDGE_LOG_FORMAT first."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from bridge import logs
from bridge.cli import main
from bridge.config import load_config
from bridge.web import create_app
from tests.conftest import TEST_KEY, TEST_SECRET, signed_order
from tests.test_e2e import ROOT, clean_env

ADMIN_TOKEN = "admin-token-0123456789abcdef"
API_TOKEN = "bigcommerce-api-token-42"
REDIS_PASSWORD = "redis-pass-987"
SECRETS = (TEST_KEY, TEST_SECRET, ADMIN_TOKEN, API_TOKEN, REDIS_PASSWORD)


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logs.Redactor]]:
    """The bridge's own handler, writing JSON into a buffer, with a redactor of its own (as
    each process builds its own)."""
    stream, redactor = io.StringIO(), logs.Redactor()
    root = logging.getLogger()
    level = root.level
    handler = logs.setup(stream=stream, fmt="json", force=True, redactor=redactor)
    try:
        yield stream, redactor
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_has_its_fields():
    record = logging.LogRecord("bridge.delivery", logging.WARNING, __file__, 1,
                               "job %s: %s", ("n-1", "ü \"quoted\""), None)
    record.event_id, record.route, record.job_id = "evt-1", "big-orders", "n-1"
    line = json.loads(logs.JsonFormatter().format(record))
    assert line == {"time": line["time"], "level": "WARNING", "logger": "bridge.delivery",
                    "message": 'job n-1: ü "quoted"', "event_id": "evt-1",
                    "route": "big-orders", "job_id": "n-1"}
    assert line["time"].endswith("Z") and line["time"][10] == "T"


@given(st.lists(st.floats(min_value=0, max_value=4e9) | st.sampled_from(
    [1.9995, 5.9999996, 5.9999994, 1_765_000_000.0004995, 1_765_000_000.9999995]), max_size=6))
def test_a_lines_time_is_its_records_to_the_millisecond_in_utc(times):
    formatter = logs.JsonFormatter()  # one, as a handler has: the lines follow one another
    for created in times:
        record = logging.LogRecord("bridge.web", logging.INFO, __file__, 1, "at", (), None)
        record.created = created
        assert json.loads(formatter.format(record))["time"] == datetime.fromtimestamp(
            created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.mark.parametrize("value", [2**70, object()])
def test_a_context_value_json_cannot_hold_still_makes_a_line(value):
    record = logging.LogRecord("bridge.web", logging.INFO, __file__, 1, "odd", (), None)
    record.event_id = value
    assert json.loads(logs.JsonFormatter().format(record))["event_id"] in (2**70, str(value))


def test_an_event_is_followed_from_receipt_to_its_message_id(captured, bridge, fake_pumble,
                                                             redis_url):
    stream, _redactor = captured
    b = bridge()
    client = create_app(b.config, redis_url, watch=False).test_client()
    body, headers = signed_order(8001, webhook_id="wh-followed")
    assert client.post("/webhooks/shop", data=body, headers=headers).status_code == 202
    b.drain()
    [message] = fake_pumble.messages()

    followed = [line for line in lines(stream) if line.get("event_id") == "wh-followed"]
    received, delivered = followed[0], followed[-1]
    assert received["logger"] == "bridge.web" and received["source"] == "shop"
    assert received["event_type"] == "order.created" and received["level"] == "INFO"
    assert delivered["logger"] == "bridge.delivery"
    assert delivered["message_id"] == message["id"]
    assert delivered["route"] == "new-orders" and delivered["source"] == "shop"
    assert delivered["job_id"].startswith("n-")
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines(stream))


def _config_with_secrets(tmp_path):
    path = tmp_path / "secrets.yaml"
    path.write_text(yaml.safe_dump({
        "pumble": {"api_key": TEST_KEY},
        "redis": {"url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:6399/0"},
        "admin": {"token": ADMIN_TOKEN},
        "sources": {"shop": {"type": "shopify", "secret": TEST_SECRET},
                    "bc": {"type": "bigcommerce", "secret": "bc-secret-0001",
                           "api_token": API_TOKEN, "store_hash": "abc123"}},
    }))
    return path


def _log_by_mistake(log: logging.Logger) -> None:
    log.info("calling Pumble with key %s", TEST_KEY)
    log.warning(f"the secret is {TEST_SECRET}")
    log.info("%(token)s", {"token": ADMIN_TOKEN})
    log.info("route", extra={"route": API_TOKEN})
    log.info("wrong arguments %d", REDIS_PASSWORD)  # does not format: still masked
    try:
        raise RuntimeError(f"connect failed: redis://:{REDIS_PASSWORD}@host key={TEST_KEY}")
    except RuntimeError:
        log.exception("failed")


def test_configured_secrets_never_reach_a_line(captured, tmp_path):
    stream, redactor = captured
    config = load_config(_config_with_secrets(tmp_path), {})
    assert set(SECRETS) <= logs.config_secrets(config)
    logs.redact_secrets(config, redactor)
    _log_by_mistake(logging.getLogger("bridge.test"))
    written = stream.getvalue()
    for secret in SECRETS:
        assert secret not in written
    assert written.count(logs.MASK) >= len(SECRETS)
    assert lines(stream)[-1]["exception"].startswith("Traceback")


def test_without_the_redactor_they_would(tmp_path):
    """The control: the same mistakes, written without the filter, do show the secrets."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    log = logging.getLogger("bridge.test.unfiltered")
    log.addHandler(handler)
    log.propagate, log.level = False, logging.INFO
    try:
        _log_by_mistake(log)
    finally:
        log.removeHandler(handler)
    assert all(secret in stream.getvalue() for secret in SECRETS)


@pytest.mark.parametrize("command", [["check"], ["routes", "test", "--type", "order.paid"]])
def test_the_cli_masks_its_configs_secrets_and_writes_json_off_a_terminal(tmp_path, command):
    path = _config_with_secrets(tmp_path)
    code = ("import logging, sys; from bridge.cli import main; "
            f"code = main(['--config', {str(path)!r}, *{command!r}]); "
            f"logging.getLogger('bridge.oops').warning('key %s secret %s', {TEST_KEY!r}, "
            f"{TEST_SECRET!r}); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60,
                          env={k: v for k, v in clean_env().items() if k != logs.FORMAT_ENV})
    assert done.returncode == 0, done.stderr
    [line] = [json.loads(text) for text in done.stderr.splitlines()]
    assert line["message"] == f"key {logs.MASK} secret {logs.MASK}"
    assert line["logger"] == "bridge.oops" and line["level"] == "WARNING"

    as_text = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                             text=True, timeout=60, env=clean_env(BRIDGE_LOG_FORMAT="text"))
    assert as_text.stderr.rstrip().endswith(
        f"WARNING bridge.oops: key {logs.MASK} secret {logs.MASK}")
    assert TEST_KEY not in as_text.stderr + done.stderr


def test_a_worker_process_writes_json_that_names_the_message(bridge, fake_pumble, tmp_path):
    b = bridge()
    notification = b.enqueue("order #8002")
    env = clean_env(BRIDGE_DATA_DIR=str(tmp_path / "data"))
    env.pop(logs.FORMAT_ENV, None)
    done = subprocess.run([sys.executable, "-m", "bridge", "--config", str(b.path), "worker",
                           "--burst"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    [message] = fake_pumble.messages()
    written = [json.loads(text) for text in done.stderr.splitlines()]  # every line is JSON
    [delivered] = [line for line in written if line.get("message_id")]
    assert delivered["message_id"] == message["id"]
    assert delivered["event_id"] == notification.event_id
    assert TEST_KEY not in done.stderr


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stream", "environ", "chosen"), [
    (_Terminal(), {}, "text"),
    (io.StringIO(), {}, "json"),
    (_Terminal(), {"BRIDGE_LOG_FORMAT": "json"}, "json"),
    (io.StringIO(), {"BRIDGE_LOG_FORMAT": "text"}, "text"),
    (io.StringIO(), {"BRIDGE_LOG_FORMAT": "yaml"}, "json"),  # not a format: the default
])
def test_the_format_follows_the_terminal_unless_told(stream, environ, chosen):
    assert logs.choose_format(stream, environ) == chosen


def test_a_short_secret_is_masked_where_it_stands_alone_not_inside_words(captured):
    """A short value would garble any text it happens to be part of; a long one cannot be part
    of unrelated text by chance, so it is masked wherever it is (inside a URL-encoded string)."""
    stream, redactor = captured
    redactor.add(["s", "pw1", "long-enough-secret-0123"])
    log = logging.getLogger("bridge.test")
    log.info("embedded Redis already running at redis.sock")
    log.info("redis://:pw1@host key=s ['pw1'] s")
    log.info("token%3Dlong-enough-secret-0123%26next")
    assert [line["message"] for line in lines(stream)] == [
        "embedded Redis already running at redis.sock",
        f"redis://:{logs.MASK}@host key={logs.MASK} ['{logs.MASK}'] {logs.MASK}",
        f"token%3D{logs.MASK}%26next"]


def test_check_warns_of_each_short_secret_by_its_place_not_its_value(tmp_path, caplog,
                                                                     monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)  # the suite's server would replace redis.url
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "redis": {"url": "redis://:pw1@127.0.0.1:6399/0"},
        "sources": {"shop": {"type": "shopify", "secret": ["sh0rt", "long-enough-secret-0123"]}}}))
    with caplog.at_level(logging.WARNING, logger="bridge"):
        assert main(["--config", str(path), "check"]) == 0
    warned = [record.getMessage() for record in caplog.records]
    assert warned == [f"{path}: {place} is shorter than {logs.SAFE_SECRET_LENGTH} characters: "
                      "easy to guess, and masked in logs only where it stands alone; use a "
                      "longer one" for place in ("sources.shop.secret[0]", "redis.url's password")]
    assert not any("sh0rt" in text or "pw1" in text for text in warned)


# -- gunicorn's access line ------------------------------------------------------------------------

class _Environ(dict):
    """A WSGI environ that remembers which keys were read one by one (not through items())."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def get(self, key: str, default: object = None) -> object:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> object:
        self.read.add(key)
        return super().__getitem__(key)


def _access_request() -> tuple[object, object, _Environ]:
    from gunicorn.http.wsgi import Response

    environ = _Environ({
        "REMOTE_ADDR": "203.0.113.7", "REQUEST_METHOD": "POST", "RAW_URI": "/webhooks/shop?x=1",
        "PATH_INFO": "/webhooks/shop", "QUERY_STRING": "x=1", "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_REFERER": 'https://a.example/"quoted"', "HTTP_USER_AGENT": "Shopify-Captain-Hook",
        "HTTP_AUTHORIZATION": "Basic YWRhOnNlY3JldA==", "HTTP_X_SHOPIFY_TOPIC": "orders/create",
        "wsgi.url_scheme": "http", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000"})

    class Request:
        headers = (("USER-AGENT", "Shopify-Captain-Hook"), ("X-SHOPIFY-TOPIC", "orders/create"))

    response = Response(Request, None, None)  # never written: only what the line reads
    response.status = "202 ACCEPTED"
    response.headers = [("Content-Type", "application/json"), ("Content-Length", "120")]
    response.sent = 120
    return response, Request, environ


@pytest.mark.parametrize("fmt", [
    None,  # gunicorn's default
    '%(h)s %(t)s "%(r)s" %(s)s %(b)s %(m)s %(U)s %(q)s %(H)s %(B)s %(u)s %(p)s',
    '%(h)s "%(r)s" %(s)s %({x-shopify-topic}i)s %({content-type}o)s %({server_port}e)s',
])
def test_the_access_line_is_gunicorns_own(fmt):
    """Our logger builds fewer atoms for a format that names no header or environ variable;
    every line reads as gunicorn's own logger writes it."""
    import datetime

    from gunicorn.config import Config
    from gunicorn.glogging import Logger

    lines = []
    for logger_class in (Logger, logs.gunicorn_logger_class()):
        cfg = Config()
        if fmt:
            cfg.set("access_log_format", fmt)
        logger = logger_class(cfg)
        logger.now = lambda: "[07/Dec/2026:18:00:00 +0000]"  # both lines in the same second
        response, request, environ = _access_request()
        atoms = logger.atoms_wrapper_class(logger.atoms(response, request, environ,
                                                        datetime.timedelta(seconds=1.5)))
        lines.append(logger.cfg.access_log_format % atoms)
    assert lines[0] == lines[1]
    assert "203.0.113.7" in lines[1] and "202" in lines[1]


@pytest.mark.parametrize("fmt", [
    None,  # gunicorn's default: our quick atoms
    '%(h)s "%(a)s" %(s)s',  # quick atoms only, fewer of them
    '%(h)s %(t)s "%(r)s" %(s)s %(b)s %(m)s %(U)s %(q)s %(H)s %(B)s %(u)s %(p)s',
    '%(h)s "%(r)s" %(s)s %({x-shopify-topic}i)s %({content-type}o)s %({server_port}e)s',
])
def test_the_access_line_written_is_gunicorns_own(fmt, monkeypatch):
    """What ``access`` hands the log, quick atoms or not, reads as gunicorn's own logger's line,
    its time included (formatted once a second: gunicorn's own format of the same second)."""
    import datetime
    import time

    from gunicorn.config import Config
    from gunicorn.glogging import Logger

    now, strftime = 1_796_666_400.25, time.strftime  # both loggers' clock in the same second
    monkeypatch.setattr("time.time", lambda: now)
    monkeypatch.setattr("time.strftime",
                        lambda fmt, when=None: strftime(fmt, when or time.localtime(now)))
    lines = []
    for logger_class in (Logger, logs.gunicorn_logger_class()):
        cfg = Config()
        cfg.set("accesslog", "-")
        if fmt:
            cfg.set("access_log_format", fmt)
        logger = logger_class(cfg)
        records: list[logging.LogRecord] = []
        monkeypatch.setattr(logger.access_log, "handle", records.append)
        response, request, environ = _access_request()
        logger.access(response, request, environ, datetime.timedelta(seconds=1.5))
        lines.append(records[0].getMessage())
    assert lines[0] == lines[1]
    assert "203.0.113.7" in lines[1]


def test_the_access_atoms_read_no_environ_key_left_out():
    """ACCESS_ATOMS_ENVIRON names every environ key gunicorn's atoms read one by one: an upgrade
    reading another would otherwise print '-' for it."""
    import datetime

    from gunicorn.config import Config
    from gunicorn.glogging import Logger

    response, request, environ = _access_request()
    Logger(Config()).atoms(response, request, environ, datetime.timedelta(seconds=1))
    assert environ.read <= set(logs.ACCESS_ATOMS_ENVIRON)
