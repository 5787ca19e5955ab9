"""Log lines: one JSON object a line for machines, plain text for a person; no secret written.

Format: JSON when stderr is not a terminal (a service manager, a container, a file), text when
it is; ``BRIDGE_LOG_FORMAT=json`` or ``text`` decides instead. A JSON line has ``time`` (UTC,
ISO 8601, milliseconds), ``level``, ``logger`` and ``message``, then, where the code knows
them, ``event_id``, ``event_type``, ``source``, ``route``, ``job_id`` and ``message_id``
(passed with ``extra=``), and ``exception`` with the traceback. The receiver's line names the
event's ``event_id`` and ``source``; the worker's lines name the same ``event_id`` with the
``job_id``, the ``route`` and, once sent, Pumble's ``message_id``: filtering on one
``event_id`` follows a webhook from receipt to the message. gunicorn's own lines (start-up,
the access log) go through the same handler.

Secrets: every value the config holds as a secret (Pumble keys, webhook signing secrets,
source API tokens, the admin token, the Redis password) is replaced by ``[redacted]`` in any
line, its arguments, its context fields and its traceback, should a bug or a library ever log
one. The process builds its ``Redactor`` and installs it with ``setup``;
``redact_secrets(config, redactor)`` adds a config's secrets to it, which the CLI does whenever
it loads one.
A secret of ``SAFE_SECRET_LENGTH`` characters or more is masked wherever it occurs; a shorter
one only where it stands whole (between ``:`` and ``@`` in a URL, after ``key=``, in quotes),
not inside a longer word, which a short value would garble ("embedded Redi[redacted]").
``short_secrets(config)`` names the shorter ones, for a warning at start.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, SecretStr

from bridge.config import Config

FORMAT_ENV = "BRIDGE_LOG_FORMAT"
FORMATS = ("json", "text")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONTEXT = ("event_id", "event_type", "source", "route", "job_id", "message_id")
MASK = "[redacted]"
# Shorter secrets are guessable, and masking them inside words would garble unrelated text.
SAFE_SECRET_LENGTH = 12
CHATTY = ("httpx", "werkzeug")  # a line per request; our own lines say what matters
# Keys of a source's platform options that hold credentials (bigcommerce's api_token, …).
_SECRET_OPTION = re.compile(r"token|secret|password|api_?key", re.IGNORECASE)


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        # The time's text up to its second, for the second it was made for: most lines of a
        # busy process fall in the same second, and datetime's formatting is a third of a line.
        self._second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT:
            value = getattr(record, key, None)
            if value not in (None, ""):
                entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        try:
            return orjson.dumps(entry, default=str).decode()
        except orjson.JSONEncodeError:  # an int past 64 bits in a context field: still a line
            return json.dumps(entry, ensure_ascii=False, default=str)

    def _time(self, created: float) -> str:
        """``created`` in UTC, ISO 8601 to the millisecond (``2026-12-07T19:30:31.042Z``)."""
        fraction, whole = math.modf(created)
        micro = round(fraction * 1e6)  # rounded as datetime.fromtimestamp rounds it
        second = int(whole) + micro // 1_000_000
        cached, text = self._second
        if second != cached:
            text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = (second, text)
        return f"{text}.{micro % 1_000_000 // 1000:03d}Z"


class Redactor(logging.Filter):
    """Replaces known secret values in everything a record will print. Install it on handlers
    (a filter on a logger does not see records propagated from its children)."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def add(self, secrets: Iterable[str]) -> None:
        with self._lock:
            known = self._secrets | {s for s in secrets if s}
            if known != self._secrets:
                # Longest first: a secret containing another is masked whole.
                self._pattern = re.compile("|".join(
                    _occurrence(s) for s in sorted(known, key=len, reverse=True)))
                self._secrets = known  # after the pattern: filter() reads them in this order

    def redact(self, text: str) -> str:
        pattern = self._pattern
        return pattern.sub(MASK, text) if pattern is not None else text

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self._secrets
        if not secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit: print them, masked, not a traceback
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = message, None
        context = {key: value for key in CONTEXT
                   if isinstance(value := getattr(record, key, None), str)}
        # Whatever the pattern masks is first a plain substring of the message or its context:
        # looking for those (str's own search) costs a tenth of the pattern's, and most lines
        # hold no secret, so are then left as they are.
        text = "\0".join((message, *context.values()))
        if any(secret in text for secret in secrets):
            record.msg = self.redact(message)
            for key, value in context.items():
                setattr(record, key, self.redact(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def _occurrence(secret: str) -> str:
    """The pattern of a secret: anywhere when long, else only not inside a longer word."""
    escaped = re.escape(secret)
    if len(secret) >= SAFE_SECRET_LENGTH:
        return escaped
    before = r"(?<!\w)" if re.match(r"\w", secret[0]) else ""
    after = r"(?!\w)" if re.match(r"\w", secret[-1]) else ""
    return f"{before}{escaped}{after}"


def _secrets_by_place(config: Config) -> dict[str, str]:
    """Where each secret value of a config is (a dotted path) -> the value: its SecretStr fields
    wherever they are, credential-like keys of the sources' platform options, and the password
    in the Redis URL."""
    found: dict[str, str] = {}

    def walk(value: Any, place: str) -> None:
        if isinstance(value, SecretStr):
            found[place] = value.get_secret_value()
        elif isinstance(value, BaseModel):
            for name, field in type(value).model_fields.items():
                # A source's platform keys are written beside its type and secret.
                key = "" if name == "options" else f".{field.alias or name}"
                walk(getattr(value, name), f"{place}{key}".lstrip("."))
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, str) and _SECRET_OPTION.search(str(key)):
                    found[f"{place}.{key}"] = item
                else:
                    walk(item, f"{place}.{key}")
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                walk(item, f"{place}[{index}]")

    walk(config, "")
    if config.redis.url:
        try:
            password = urlsplit(config.redis.url).password
        except ValueError:
            password = None
        if password:
            found["redis.url's password"] = password
    return {place: value for place, value in found.items() if value}


def config_secrets(config: Config) -> set[str]:
    """Every secret value in a config (see ``_secrets_by_place``)."""
    return set(_secrets_by_place(config).values())


def short_secrets(config: Config) -> list[str]:
    """Where the config holds a secret shorter than ``SAFE_SECRET_LENGTH`` characters."""
    return [place for place, value in _secrets_by_place(config).items()
            if len(value) < SAFE_SECRET_LENGTH]


def redact_secrets(config: Config, redactor: Redactor) -> None:
    """From now on, mask this config's secrets in every line the handler writes."""
    redactor.add(config_secrets(config))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (it may be replaced after setup)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, _value: IO[str]) -> None:
        pass


def choose_format(stream: IO[str], environ: Mapping[str, str] = os.environ) -> str:
    """``BRIDGE_LOG_FORMAT`` if it says json or text, else text on a terminal, else json."""
    chosen = (environ.get(FORMAT_ENV) or "").strip().lower()
    if chosen in FORMATS:
        return chosen
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def setup(*, redactor: Redactor, stream: IO[str] | None = None, fmt: str | None = None,
          level: int = logging.INFO, force: bool = False) -> logging.Handler | None:
    """Log to stderr (or ``stream``) as JSON or text (``fmt``, else ``choose_format``), with
    the secrets ``redactor`` knows (now and later) masked. Like ``logging.basicConfig``, leaves
    alone a process whose logging was set up by someone else (a test runner, an application
    embedding the bridge) unless ``force``; calling it again replaces the handler it installed.
    Returns the handler, or None."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "_bridge_handler", False)]
    if root.handlers and not ours and not force:
        return None
    for handler in ours:
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    fmt = fmt or choose_format(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(redactor)
    handler._bridge_handler = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for chatty in CHATTY:
        logging.getLogger(chatty).setLevel(logging.WARNING)
    return handler


# What of the WSGI environ gunicorn's access-log atoms read, but for its ``{name}e`` ones
# (tests/test_logs.py fails if a gunicorn upgrade reads more).
ACCESS_ATOMS_ENVIRON = ("REMOTE_ADDR", "REQUEST_METHOD", "RAW_URI", "SERVER_PROTOCOL",
                        "PATH_INFO", "QUERY_STRING", "HTTP_REFERER", "HTTP_USER_AGENT",
                        "HTTP_AUTHORIZATION")


class _Read(dict):
    """The environ's values an access-log atom reads, but none as an ``{name}e`` atom (which
    gunicorn makes of every item)."""

    def items(self) -> Any:
        return ()


# The atoms of gunicorn's default access format, which ``access`` writes without building the
# others (tests/test_logs.py checks each line against gunicorn's own).
QUICK_ATOMS = frozenset("hlutrsbfa")
_FORMAT_ATOM = re.compile(r"%\((.*?)\)")


def _quick_atoms(logger: Any, resp: Any, environ: dict[str, Any]) -> dict[str, Any]:
    """gunicorn's atoms ``QUICK_ATOMS``, as its ``atoms`` makes them and its ``SafeAtoms``
    escapes them (a ``"`` in a text atom written ``\\"``)."""
    status = resp.status
    sent = getattr(resp, "sent", None)
    atoms = {
        "h": environ.get("REMOTE_ADDR", "-"),
        "l": "-",
        "u": logger._get_user(environ) or "-",
        "t": logger.now(),
        "r": f"{environ['REQUEST_METHOD']} {environ['RAW_URI']} {environ['SERVER_PROTOCOL']}",
        "s": status.split(None, 1)[0] if isinstance(status, str) else status,
        "b": (sent is not None and str(sent)) or "-",
        "f": environ.get("HTTP_REFERER", "-"),
        "a": environ.get("HTTP_USER_AGENT", "-"),
    }
    return {key: value.replace('"', '\\"') if isinstance(value, str) else value
            for key, value in atoms.items()}


class _Answered:
    """What gunicorn's access-log atoms read of a response, but its headers."""

    headers = ()

    def __init__(self, response: Any):
        self.status = response.status
        self.sent = getattr(response, "sent", None)


def gunicorn_logger_class() -> type:
    """gunicorn's logger, sending its error and access lines to the root handler (so they are
    formatted and masked like ours) instead of its own handlers."""
    from gunicorn.glogging import Logger

    class BridgeGunicornLogger(Logger):
        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            for gunicorn_log in (self.error_log, self.access_log):
                for handler in list(gunicorn_log.handlers):
                    if getattr(handler, "_gunicorn", False):
                        gunicorn_log.removeHandler(handler)
                gunicorn_log.propagate = True

        def atoms(self, resp: Any, req: Any, environ: dict[str, Any],
                  request_time: Any) -> dict[str, Any]:
            """gunicorn's atoms of an access line. Each request header, response header and
            environ variable is one too (``{name}i``, ``{name}o``, ``{name}e``): building and
            escaping those was most of the line's cost, so they are made only for a format
            that names one (the default does not)."""
            if "{" in self.cfg.access_log_format:
                return super().atoms(resp, req, environ, request_time)
            read = _Read({key: environ[key] for key in ACCESS_ATOMS_ENVIRON if key in environ})
            return super().atoms(_Answered(resp), (), read, request_time)

        def access(self, resp: Any, req: Any, environ: dict[str, Any],
                   request_time: Any) -> None:
            """gunicorn's access line. For a format of ``QUICK_ATOMS`` only (its default), those
            atoms alone are made, and the line is handed to the log whole: gunicorn's twenty,
            each escaped, and its time formatted anew every request, were most of the line."""
            fmt = self.cfg.access_log_format
            if not self.access_log_enabled or not set(_FORMAT_ATOM.findall(fmt)) <= QUICK_ATOMS:
                super().access(resp, req, environ, request_time)
                return
            atoms = _quick_atoms(self, resp, environ)  # outside the try, as gunicorn's are
            try:
                self.access_log.info(fmt % atoms)
            except Exception:
                self.error(traceback.format_exc())

        def now(self) -> str:
            """gunicorn's time of a line (``[07/Dec/2026:18:00:00 +0000]``), formatted once a
            second."""
            second = int(time.time())
            cached, text = self._now
            if second != cached:
                text = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(second))
                self._now = (second, text)
            return text

        _now: tuple[int, str] = (-1, "")

    return BridgeGunicornLogger
