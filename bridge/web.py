"""The receiver: a Flask app that verifies each webhook and answers only once it is in Redis.

202: accepted and stored. 200: a re-delivery of one already accepted (nothing enqueued again),
or a platform's set-up ping. 401: bad or missing signature. 400: wrong content type or a body that
is not valid JSON. 404: no such source. 413: body too large. 503: Redis cannot be written, so the
shop keeps the event and retries.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import orjson
import redis
from flask import Flask, abort, g, jsonify, request

from bridge import logs, metrics
from bridge.activity import Activity
from bridge.admin import admin_blueprint, rate_limiter
from bridge.config import Config
from bridge.dlq import DeadLetters
from bridge.pipeline import Pipeline
from bridge.queue import NotificationQueue, Received, connect
from bridge.reload import Reloader
from bridge.sources import PayloadError, SignatureError, WebhookRequest

log = logging.getLogger(__name__)


def create_app(config: Config, redis_url: str, *, watch: bool = True) -> Flask:
    """The receiver for a loaded config; raises ConfigError before serving anything.

    With ``watch``, routes, templates and sources follow the config file as it changes (or on
    SIGHUP), from the first request on (bridge.reload; under gunicorn its master watches
    instead); ``redis``, ``receiver``, ``delivery`` and ``admin`` settings are read once, at
    start."""
    def build(new: Config) -> Pipeline:
        logs.redact_secrets(new)  # a reloaded config may bring a new (rotated) secret
        return Pipeline.from_config(new)

    pipelines = Reloader(config, build)
    connection = connect(redis_url)
    queue = NotificationQueue(connection, config.redis.queue, config.delivery, config.redis)
    dead_letters = DeadLetters(queue)
    activity = Activity(queue)
    dedupe_window = config.receiver.dedupe_window

    app = Flask("bridge")
    max_body = config.receiver.max_body_bytes
    # One byte past the limit: Werkzeug stops reading a chunked body (no Content-Length) at
    # its limit without a word, so a body that reaches it is cut, never known to be too long.
    app.config["MAX_CONTENT_LENGTH"] = max_body + 1
    if watch:
        _reload_on_sighup(pipelines)
        # Watching starts with the first request: never in a gunicorn master, which forks.
        app.before_request(pipelines.start)
    if config.admin.listen:
        _split_listeners(app, int(config.admin.listen.rpartition(":")[2]))

    def error(status: int, message: str):
        return jsonify({"error": message}), status

    @app.errorhandler(413)
    def too_large(_error: Exception):
        return error(413, f"body larger than {max_body} bytes")

    @app.before_request
    def start_clock():
        g.started = time.perf_counter()

    @app.after_request
    def count_webhook(response):  # every answer of receive(), the 413 included
        if request.endpoint == "receive":
            started = g.get("started") or time.perf_counter()
            metrics.webhook_answered(g.get("source"), g.get("event_type"),
                                     response.status_code, time.perf_counter() - started)
        return response

    @app.post("/webhooks/<source_name>")
    def receive(source_name: str):
        received_at = time.time()
        pipeline = pipelines.current  # one config for the whole request, even mid-reload
        source = pipeline.sources.get(source_name)
        if source is None:
            return error(404, f"no source named {source_name!r} in the config")
        g.source = source_name
        context = {"source": source_name}
        body = request.get_data(cache=False)
        if len(body) > max_body:
            abort(413)
        webhook = WebhookRequest.of(request.headers, body)
        if source.is_ping(webhook):
            log.info("source %s: set-up ping answered", source_name, extra=context)
            return jsonify({"ping": True}), 200
        try:
            source.verify(webhook)
        except SignatureError as exc:
            log.warning("source %s: rejected: %s", source_name, exc, extra=context)
            return error(401, str(exc))
        if "json" not in (request.mimetype or "json"):
            return error(400, f"expected a JSON body, got Content-Type {request.mimetype}")
        try:
            event = source.parse(webhook)
        except PayloadError as exc:
            log.warning("source %s: bad payload: %s", source_name, exc, extra=context)
            return error(400, str(exc))
        except Exception:  # a payload shaped like nothing the normaliser knows: never a 500
            log.exception("source %s: payload could not be read", source_name, extra=context)
            return error(400, "the payload could not be read")
        g.event_type = event.type
        context.update(event_id=event.id, event_type=event.type)

        def redelivery():
            log.info("event %s from %s: re-delivery, already accepted", event.id, source_name,
                     extra=context)
            activity.record(event, source=source_name, received_at=received_at,
                            notifications=[], failures=[], duplicate=True)
            return answer(event, duplicate=True)

        dispatch = pipeline.dispatch(event, received_at)
        failed = [failure.reason for failure in dispatch.failures]
        received = Received(source_name, event.id, event.type, source.keepable_headers(webhook),
                            webhook.body, dead_letters=bool(dispatch.failures))
        try:
            if dispatch.failures:
                # Rare (a template failed). Its dead letters are written first, so no crash can
                # leave the delivery marked seen without them; writing one twice is a no-op.
                if queue.seen(source_name, event.id):
                    return redelivery()
                for failure in dispatch.failures:
                    if dead_letters.add(failure.notification, failure.reason):
                        metrics.dead_lettered(failure.notification.route)
            accepted = queue.accept(
                dispatch.notifications, received=received, dedupe_window=dedupe_window,
                activity=activity.entry(event, source=source_name, received_at=received_at,
                                        notifications=dispatch.notifications, failures=failed))
            if accepted.duplicate:
                return redelivery()
        except redis.RedisError as exc:
            log.error("event %s: cannot write to Redis (%s); answering 503", event.id,
                      type(exc).__name__, extra=context)
            body = {"error": "cannot store the event right now; retry later"}
            return jsonify(body), 503, {"Retry-After": "5"}
        for notification, written in zip(dispatch.notifications, accepted.written, strict=True):
            if written:
                metrics.enqueued(notification.route)
        enqueued = sum(accepted.written)
        log.info("event %s %s from %s: %d notification(s), %d enqueued", event.id, event.type,
                 source_name, len(dispatch.notifications), enqueued, extra=context)
        # Every job already there: a re-delivery that raced the first one, or outlived the
        # dedupe marker but not the jobs.
        duplicate = bool(dispatch.notifications) and enqueued == 0
        return answer(event, duplicate, len(dispatch.notifications), enqueued, failed)

    def answer(event, duplicate: bool, notifications: int = 0, enqueued: int = 0,
               failed: list[str] | None = None):
        body = {"event_id": event.id, "type": event.type, "duplicate": duplicate,
                "notifications": notifications, "enqueued": enqueued, "failed": failed or []}
        # Not jsonify: its provider (sorting, app lookups) costs twice as much, on every webhook.
        return app.response_class(orjson.dumps(body), 200 if duplicate else 202,
                                  mimetype="application/json")

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz():
        try:
            queue.writable()
        except redis.RedisError as exc:
            return jsonify({"status": "unavailable", "redis": type(exc).__name__}), 503
        status = {"status": "ok", "redis": "ok", "config": str(config.path)}
        if pipelines.refused:  # still ready: the last valid config serves
            status["config_refused"] = pipelines.refused
        return jsonify(status)

    @app.get("/metrics")
    def prometheus_metrics():  # every process of this machine (bridge.metrics), and the queue
        body, content_type = metrics.exposition(queue.rq)
        return body, 200, {"Content-Type": content_type}

    app.register_blueprint(admin_blueprint(config, queue, pipelines,
                                           rate_limiter(config, connection)))
    app.config["reloader"] = pipelines
    return app


PRIVATE_PATHS = ("/admin", "/metrics")
EVERYWHERE = ("/healthz", "/readyz")


def _split_listeners(app: Flask, admin_port: int) -> None:
    """With ``admin.listen``: the admin page and /metrics only on that address, the webhooks
    only on the public one. Told apart by the socket the connection came in on, never by the
    Host header (which the caller writes)."""

    @app.before_request
    def only_where_it_belongs():
        if request.path in EVERYWHERE:
            return None
        on_admin_listener = _local_port(request.environ) == admin_port
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
