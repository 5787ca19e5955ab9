"""The baseline app of bench/receiver.py: reads the webhook's body and answers 202, nothing else.

Served by gunicorn: ``gunicorn --worker-class gthread bench.bare:app``.
"""

from __future__ import annotations

from flask import Flask, request

app = Flask("bench-bare")


@app.post("/webhooks/<source_name>")
def receive(source_name: str) -> tuple[bytes, int, dict[str, str]]:
    request.get_data(cache=False)
    return b'{"accepted": true}', 202, {"Content-Type": "application/json"}


@app.get("/healthz")
def healthz() -> tuple[bytes, int, dict[str, str]]:
    return b'{"status": "ok"}', 200, {"Content-Type": "application/json"}
