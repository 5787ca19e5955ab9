"""Shared fixtures: a real Redis (embedded unless REDIS_URL is set) and the fake Pumble over HTTP.

Tests never flush a database: each test gets its own queue name, so they also run safely against
a Redis the suite did not create.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bridge.fake_pumble import create_fake_pumble
from bridge.local_server import LocalServer
from bridge.redis_embedded import EmbeddedRedis

TEST_KEY = "test-key-0123456789abcdef0123456789"
TEST_SECRET = "test-webhook-secret"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    embedded = EmbeddedRedis(tmp_path_factory.mktemp("data"))
    url = embedded.start()
    yield url
    embedded.stop()


@pytest.fixture
def queue_name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


class FakePumble:
    """The fake Pumble on a real port, read back over HTTP like any client would."""

    def __init__(self, server: LocalServer):
        self.server = server
        self.url = server.url

    def messages(self, channel: str = "") -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/_fake/messages", params={"channel": channel})
        response.raise_for_status()
        return response.json()["messages"]


@pytest.fixture
def fake_pumble() -> Iterator[FakePumble]:
    app = create_fake_pumble(keys=[TEST_KEY], channels=["orders"])
    with LocalServer(app) as server:
        yield FakePumble(server)


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a config file; returns its path. Defaults: one shopify source, one order route."""

    def write(*, redis_url: str | None = None, queue: str = "pumble-bridge",
              pumble_url: str = "http://127.0.0.1:9", api_key: str | None = TEST_KEY,
              routes: list[dict[str, Any]] | None = None) -> Path:
        config: dict[str, Any] = {
            "pumble": {"base_url": pumble_url, "api_key": api_key},
            "redis": {"queue": queue, **({"url": redis_url} if redis_url else {})},
            "sources": {"shop": {"type": "shopify", "secret": TEST_SECRET}},
            "routes": routes if routes is not None else [{
                "name": "new-orders",
                "match": {"source": ["shop"], "event": ["order.created"]},
                "channel": "orders",
                "template": "order_created.j2",
            }],
        }
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def signed_order(number: int = 1001, webhook_id: str | None = None,
                 secret: str = TEST_SECRET) -> tuple[bytes, dict[str, str]]:
    """A Shopify orders/create body and headers, signed as Shopify signs."""
    from bridge.samples import body_of, shopify_headers, shopify_order
    from bridge.sources.shopify import sign

    body = body_of(shopify_order(number))
    headers = shopify_headers(webhook_id=webhook_id)
    headers["X-Shopify-Hmac-Sha256"] = sign(secret.encode(), body)
    return body, headers


@pytest.fixture
def rq_queue(redis_url: str, queue_name: str):
    """The test's RQ queue, read directly; its jobs are deleted afterwards (nothing else is)."""
    from redis import Redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    connection = Redis.from_url(redis_url)
    queue = Queue(queue_name, connection=connection, serializer=JSONSerializer)
    yield queue
    registries = (queue.finished_job_registry, queue.failed_job_registry,
                  queue.scheduled_job_registry, queue.started_job_registry)
    ours = {job_id for registry in registries for job_id in registry.get_job_ids()}
    ours.update(queue.get_job_ids())
    for registry in registries:
        connection.delete(registry.key)
    # A job's keys (rq:job:ID, rq:results:ID, its executions) carry its id as one part.
    for key in connection.scan_iter(match="rq:*", count=1000):
        if not ours.isdisjoint(key.decode().split(":")):
            connection.delete(key)
    queue.delete(delete_jobs=True)
    for key in connection.scan_iter(match=f"pumble-bridge:{queue_name}:*"):  # our own keys
        connection.delete(key)
    connection.close()
