"""The receiver: a Flask app that verifies each webhook and answers only once it is in Redis.

202: accepted and stored (or a re-delivery of one already stored). 401: bad or missing
signature. 400: a body that is not valid JSON. 404: no such source. 413: body too large.
503: Redis cannot be written, so the shop keeps the event and retries.
"""

from __future__ import annotations

import logging
import time

import redis
from flask import Flask, jsonify, request

from bridge.config import Config
from bridge.pipeline import Pipeline
from bridge.queue import NotificationQueue, connect
from bridge.sources import PayloadError, SignatureError, WebhookRequest

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 2 * 1024 * 1024


def create_app(config: Config, redis_url: str) -> Flask:
    """The receiver for a loaded config; raises ConfigError before serving anything."""
    pipeline = Pipeline.from_config(config)
    connection = connect(redis_url)
    queue = NotificationQueue(connection, config.redis.queue)

    app = Flask("bridge")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    def error(status: int, message: str):
        return jsonify({"error": message}), status

    @app.post("/webhooks/<source_name>")
    def receive(source_name: str):
        received_at = time.time()
        source = pipeline.sources.get(source_name)
        if source is None:
            return error(404, f"no source named {source_name!r} in the config")
        webhook = WebhookRequest.of(request.headers, request.get_data(cache=False))
        try:
            source.verify(webhook)
        except SignatureError as exc:
            log.warning("source %s: rejected: %s", source_name, exc)
            return error(401, str(exc))
        try:
            event = source.parse(webhook)
        except PayloadError as exc:
            log.warning("source %s: bad payload: %s", source_name, exc)
            return error(400, str(exc))

        dispatch = pipeline.dispatch(event, received_at)
        try:
            enqueued = sum(queue.enqueue(n) for n in dispatch.notifications)
        except redis.RedisError as exc:
            log.error("event %s: cannot write to Redis (%s); answering 503", event.id,
                      type(exc).__name__)
            body = {"error": "cannot store the event right now; retry later"}
            return jsonify(body), 503, {"Retry-After": "5"}
        log.info("event %s %s from %s: %d notification(s), %d enqueued", event.id, event.type,
                 source_name, len(dispatch.notifications), enqueued)
        return jsonify({
            "event_id": event.id,
            "type": event.type,
            "notifications": len(dispatch.notifications),
            "enqueued": enqueued,
            "duplicates": len(dispatch.notifications) - enqueued,
            "failed": dispatch.failures,
        }), 202

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz():
        try:
            connection.ping()
        except redis.RedisError as exc:
            return jsonify({"status": "unavailable", "redis": type(exc).__name__}), 503
        return jsonify({"status": "ok", "redis": "ok", "config": str(config.path)})

    return app
