"""The receiver: a Flask app that verifies each webhook and answers only once it is in Redis.

Its views are module-level blueprints (webhooks, health, metrics; the admin pages in
``bridge.admin``) that read what they need from ``current_app.extensions[EXTENSION]``, a
``Receiver`` that ``create_app`` builds from the config. The work on a webhook is
``bridge.accept`` (its answers are listed there); this module adds 404 for a source the config
does not have and 413 for a body larger than ``receiver.max_body_bytes``. ``POST
/webhooks/<source>`` for a configured source is answered before Flask's machinery, by
``_WebhooksFirst``, exactly as the ``receive`` view would (tests/test_web_webhooks_first.py).
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from flask import Blueprint, Flask, Response, abort, current_app, g, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import HTTP_STATUS_CODES, parse_options_header
from werkzeug.wsgi import get_input_stream

from bridge import logs
from bridge.accept import Answer, Inbound, Store, accept
from bridge.admin import install_admin, rate_limiter
from bridge.config import Config
from bridge.metrics import Metrics
from bridge.pipeline import Pipeline
from bridge.queue import NotificationQueue, connect
from bridge.reload import Reloader
from bridge.sources import WebhookRequest

EXTENSION = "pumble_bridge"
WEBHOOKS_PATH = "/webhooks/"
PRIVATE_PATHS = ("/admin", "/metrics")
EVERYWHERE = ("/healthz", "/readyz")


@dataclass(frozen=True)
class Receiver:
    """What the receiver's views read: the live config (``pipelines``), where webhooks are
    stored, what counts them, and the settings read once at start."""

    config: Config
    pipelines: Reloader[Pipeline]
    store: Store
    metrics: Metrics
    max_body: int
    admin_port: int | None  # with ``admin.listen``: the port the admin pages are served on


def receiver_of(app: Flask) -> Receiver:
    return app.extensions[EXTENSION]


def _receiver() -> Receiver:
    return receiver_of(current_app)


def create_app(config: Config, redis_url: str, *, watch: bool = True,
               redactor: logs.Redactor | None = None, metrics: Metrics | None = None) -> Flask:
    """The receiver for a loaded config; raises ConfigError before serving anything.

    With ``watch``, routes, templates and sources follow the config file as it changes (or on
    SIGHUP), from the first request on (bridge.reload; under gunicorn its master watches
    instead); ``redis``, ``receiver``, ``delivery`` and ``admin`` settings are read once, at
    start. ``redactor``: the process's (bridge.logs), told the secrets of each reloaded
    config. ``metrics``: the process's (bridge.metrics); without it, the app counts on its
    own."""
    metrics = metrics or Metrics()
    pipelines = Reloader(config, _PipelineBuilder(redactor), metrics=metrics)
    connection = connect(redis_url)
    queue = NotificationQueue(connection, config.redis.queue, config.delivery, config.redis)
    admin_port = int(config.admin.listen.rpartition(":")[2]) if config.admin.listen else None
    state = Receiver(config, pipelines, Store.on(queue, config.receiver.dedupe_window, metrics),
                     metrics, config.receiver.max_body_bytes, admin_port)

    app = Flask("bridge")
    app.extensions[EXTENSION] = state
    # One byte past the limit: Werkzeug stops reading a chunked body (no Content-Length) at
    # its limit without a word, so a body that reaches it is cut, never known to be too long.
    app.config["MAX_CONTENT_LENGTH"] = state.max_body + 1
    if watch:
        _reload_on_sighup(pipelines)
        # Watching starts with the first request: never in a gunicorn master, which forks.
        app.before_request(pipelines.start)
    if admin_port is not None:
        app.before_request(_only_where_it_belongs)
    for blueprint in (webhooks, health, prometheus):
        app.register_blueprint(blueprint)
    install_admin(app, config, queue, pipelines, rate_limiter(config, connection))
    app.wsgi_app = _WebhooksFirst(app, watch)  # type: ignore[method-assign]
    return app


class _PipelineBuilder:
    """What the Reloader makes of each valid config: its Pipeline, its secrets masked first."""

    def __init__(self, redactor: logs.Redactor | None):
        self._redactor = redactor

    def __call__(self, config: Config) -> Pipeline:
        if self._redactor is not None:  # a reloaded config may bring a new (rotated) secret
            logs.redact_secrets(config, self._redactor)
        return Pipeline.from_config(config)


# -- webhooks ------------------------------------------------------------------------------------

webhooks = Blueprint("webhooks", __name__)


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), status


@webhooks.app_errorhandler(413)
def _too_large(_exc: Exception) -> tuple[Response, int]:
    return _error(413, f"body larger than {_receiver().max_body} bytes")


@webhooks.before_request
def _start_clock() -> None:
    g.started = time.perf_counter()


@webhooks.after_request
def _count_webhook(response: Response) -> Response:  # every answer of receive(), 413 included
    started = g.get("started") or time.perf_counter()
    _receiver().metrics.webhook_answered(g.get("source"), g.get("event_type"),
                                         response.status_code, time.perf_counter() - started)
    return response


@webhooks.post(f"{WEBHOOKS_PATH}<source_name>")
def receive(source_name: str) -> Response | tuple[Response, int]:
    received_at = time.time()
    state = _receiver()
    pipeline = state.pipelines.current  # one config for the whole request, even mid-reload
    source = pipeline.sources.get(source_name)
    if source is None:
        return _error(404, f"no source named {source_name!r} in the config")
    g.source = source_name
    body = request.get_data(cache=False)
    if len(body) > state.max_body:
        abort(413)
    inbound = Inbound(source_name, WebhookRequest.of(request.headers, body), request.mimetype,
                      received_at)
    answer = accept(inbound, source, pipeline, state.store)
    g.event_type = answer.event_type
    return _response(answer)


def _response(answer: Answer, app: Flask | None = None) -> Response:
    app = app or current_app
    if answer.about_an_event:
        # Not jsonify: its provider (sorting, app lookups) costs twice as much, on every webhook.
        return app.response_class(orjson.dumps(answer.body), answer.status,
                                  mimetype="application/json")
    response = app.json.response(answer.body)  # jsonify's own
    response.status_code = answer.status
    response.headers.update(answer.headers)
    return response


class _WebhooksFirst:
    """The app's WSGI entry: ``POST /webhooks/<source>`` for a source of the config is answered
    here, as ``receive`` would, without Flask's per-request machinery (request and app
    contexts, URL matching, signals, hooks: about a sixth of the receiver's CPU a webhook).
    Everything else is Flask's: other requests, an unknown source (its 404), a request on the
    admin listener, and, with a context pushed as Flask's own, the answer to an error raised on
    the way (a body over the limit's 413, a bug's 500). What Flask would run around ``receive``
    is run here: the reloader's start, the admin listener's check, the webhook's metrics."""

    def __init__(self, app: Flask, watch: bool):
        self._app = app
        self._flask = app.wsgi_app
        self._state = receiver_of(app)
        self._watch = watch
        self._max_content = app.config["MAX_CONTENT_LENGTH"]

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        name = path[len(WEBHOOKS_PATH):]
        state = self._state
        if (environ.get("REQUEST_METHOD") != "POST" or not path.startswith(WEBHOOKS_PATH)
                or "/" in name or not name.isascii()  # else: werkzeug's decoding, its routing
                or (state.admin_port is not None
                    and _local_port(environ) == state.admin_port)):
            return self._flask(environ, start_response)
        started = time.perf_counter()
        if self._watch:
            state.pipelines.start()
        received_at = time.time()
        pipeline = state.pipelines.current
        source = pipeline.sources.get(name)
        if source is None:
            return self._flask(environ, start_response)
        try:
            body = _body(environ, self._max_content)
            if len(body) > state.max_body:
                raise RequestEntityTooLarge
            mimetype = parse_options_header(environ.get("CONTENT_TYPE", ""))[0].lower()
            inbound = Inbound(name, WebhookRequest(_headers(environ), body), mimetype,
                              received_at)
            answer = accept(inbound, source, pipeline, state.store)
            sent = _sent(answer, self._app)
        except Exception as exc:  # still being handled in _in_flask: Flask's handlers re-raise it
            return self._in_flask(environ, start_response, exc, started, name)
        state.metrics.webhook_answered(name, answer.event_type, answer.status,
                                       time.perf_counter() - started)
        if isinstance(sent, Response):
            return sent(environ, start_response)
        start_response(f"{answer.status} {HTTP_STATUS_CODES[answer.status].upper()}",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(sent)))])
        return [sent]

    def _in_flask(self, environ: dict[str, Any], start_response: Any, raised: Exception,
                  started: float, source: str) -> Any:
        """Flask's answer to what ``receive`` raised, as its ``wsgi_app`` gives it: the error
        handlers, then the after-request hooks (the metrics), in a request's context."""
        app, error = self._app, None
        context = app.request_context(environ)
        context.push()
        try:
            g.started, g.source = started, source
            try:
                response = app.finalize_request(app.handle_user_exception(raised))
            except Exception as exc:  # no handler: a 500, logged (or raised when testing)
                error = exc
                response = app.handle_exception(exc)
            return response(environ, start_response)
        finally:
            context.pop(error)


def _body(environ: dict[str, Any], limit: int) -> bytes:
    """``get_input_stream(environ, max_content_length=limit).read()``. A body of a known length
    within the limit, from a server that ends the input there (``wsgi.input_terminated``:
    gunicorn), is read at once, not through werkzeug's ``LimitedStream`` (which cost as much as
    the HMAC of the body)."""
    length = environ.get("CONTENT_LENGTH", "")
    if environ.get("wsgi.input_terminated") and length.isdigit() and int(length) <= limit:
        return environ["wsgi.input"].read(int(length))
    return get_input_stream(environ, max_content_length=limit).read()


def _headers(environ: dict[str, Any]) -> dict[str, str]:
    """``WebhookRequest.of(request.headers, …)``'s headers: the environ's, named as werkzeug's
    ``EnvironHeaders`` names them (then lower case), in one pass."""
    headers = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            if key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                headers[key[5:].replace("_", "-").title().lower()] = value
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            headers[key.replace("_", "-").lower()] = value
    return headers


def _sent(answer: Answer, app: Flask) -> bytes | Response:
    """The body of an answer about an event, which every webhook gets (sent as ``_response``
    would send it: its headers are Content-Type and Content-Length), else the whole Response."""
    return orjson.dumps(answer.body) if answer.about_an_event else _response(answer, app)


# -- health --------------------------------------------------------------------------------------

health = Blueprint("health", __name__)


@health.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@health.get("/readyz")
def readyz() -> Response | tuple[Response, int]:
    state = _receiver()
    try:
        state.store.queue.writable()
    except redis.RedisError as exc:
        return jsonify({"status": "unavailable", "redis": type(exc).__name__}), 503
    status = {"status": "ok", "redis": "ok", "config": str(state.config.path)}
    if state.pipelines.refused:  # still ready: the last valid config serves
        status["config_refused"] = state.pipelines.refused
    return jsonify(status)


# -- metrics -------------------------------------------------------------------------------------

prometheus = Blueprint("prometheus", __name__)


@prometheus.get("/metrics")
def prometheus_metrics() -> tuple[bytes, int, dict[str, str]]:
    # Every process of this machine (bridge.metrics), and the queue.
    state = _receiver()
    body, content_type = state.metrics.exposition(state.store.queue.rq)
    return body, 200, {"Content-Type": content_type}


# -- listeners and signals -----------------------------------------------------------------------

def _only_where_it_belongs() -> tuple[Response, int] | None:
    """With ``admin.listen``: the admin page and /metrics only on that address, the webhooks
    only on the public one. Told apart by the socket the connection came in on, never by the
    Host header (which the caller writes)."""
    if request.path in EVERYWHERE:
        return None
    on_admin_listener = _local_port(request.environ) == _receiver().admin_port
    if request.path.startswith(PRIVATE_PATHS) != on_admin_listener:
        return jsonify({"error": "Not found"}), 404
    return None


def _local_port(environ: dict) -> int | None:
    connection = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    try:
        return connection.getsockname()[1] if connection is not None else None
    except OSError:
        return None


def _reload_on_sighup(reloader: Reloader) -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers belong to the main thread (tests, embedded servers)
    signal.signal(signal.SIGHUP, lambda *_: reloader.check_now())
