"""The receiver's HTTP contract, against a real Redis."""

import json

import pytest

from bridge.config import load_config
from bridge.web import create_app
from tests.conftest import TEST_KEY, TEST_SECRET, free_port, signed_order


@pytest.fixture
def client(write_config, redis_url, queue_name, rq_queue):
    config = load_config(write_config(redis_url=redis_url, queue=queue_name), {})
    return create_app(config, redis_url).test_client()


def post(client, body: bytes, headers: dict[str, str], source: str = "shop"):
    return client.post(f"/webhooks/{source}", data=body, headers=headers)


def test_signed_order_is_stored_before_the_202(client, rq_queue):
    body, headers = signed_order(1001, webhook_id="wh-1")
    response = post(client, body, headers)
    assert response.status_code == 202
    assert response.json == {"event_id": "wh-1", "type": "order.created", "duplicate": False,
                             "notifications": 1, "enqueued": 1, "failed": []}
    [job] = rq_queue.get_jobs()
    payload = job.args[0]
    assert payload["channel"] == "orders"
    assert payload["text"].startswith("🛒 New order #1001")
    assert payload["account"] == "default"


def test_job_in_redis_holds_no_secret(client, rq_queue):
    body, headers = signed_order(1001)
    assert post(client, body, headers).status_code == 202
    [job_id] = rq_queue.job_ids
    stored = rq_queue.connection.hgetall(f"rq:job:{job_id}")
    dump = json.dumps({k.decode(): v.decode("latin-1") for k, v in stored.items()})
    assert TEST_KEY not in dump and TEST_SECRET not in dump


def test_redelivery_is_answered_200_and_not_enqueued_twice(client, rq_queue):
    body, headers = signed_order(1001, webhook_id="wh-same")
    assert post(client, body, headers).json["enqueued"] == 1
    again = post(client, body, headers)
    assert again.status_code == 200
    assert (again.json["duplicate"], again.json["enqueued"]) == (True, 0)
    assert rq_queue.count == 1


def test_jobs_dedupe_even_without_the_marker(write_config, redis_url, queue_name, rq_queue):
    path = write_config(redis_url=redis_url, queue=queue_name)
    path.write_text(path.read_text() + "receiver:\n  dedupe_window: 0\n")  # no marker kept
    client = create_app(load_config(path, {}), redis_url).test_client()
    body, headers = signed_order(1001, webhook_id="wh-race")
    assert post(client, body, headers).status_code == 202
    again = post(client, body, headers)
    assert (again.status_code, again.json["duplicate"]) == (200, True)
    assert rq_queue.count == 1


def test_wrong_content_type_is_400(client, rq_queue):
    body, headers = signed_order(1001)
    response = post(client, body, {**headers, "Content-Type": "text/plain"})
    assert response.status_code == 400
    assert "expected a JSON body" in response.json["error"]
    assert rq_queue.count == 0


def test_bad_signature_is_401_and_stores_nothing(client, rq_queue):
    body, headers = signed_order(1001, secret="not-the-secret")
    response = post(client, body, headers)
    assert response.status_code == 401
    assert "does not match" in response.json["error"]
    assert rq_queue.count == 0


def test_missing_signature_is_401(client, rq_queue):
    body, headers = signed_order(1001)
    del headers["X-Shopify-Hmac-Sha256"]
    assert post(client, body, headers).status_code == 401
    assert rq_queue.count == 0


def test_signed_body_that_is_not_json_is_400(client, rq_queue):
    from bridge.sources.shopify import sign

    _, headers = signed_order(1001)
    headers["X-Shopify-Hmac-Sha256"] = sign(TEST_SECRET.encode(), b"{not json")
    response = post(client, b"{not json", headers)
    assert response.status_code == 400
    assert "not valid JSON" in response.json["error"]
    assert rq_queue.count == 0


def test_unknown_source_is_404(client):
    body, headers = signed_order(1001)
    response = post(client, body, headers, source="nope")
    assert response.status_code == 404
    assert "nope" in response.json["error"]


def test_body_over_the_limit_is_413(client, rq_queue):
    response = post(client, b"x" * (1024 * 1024 + 1), {})
    assert response.status_code == 413
    assert "larger than 1048576 bytes" in response.json["error"]
    assert post(client, b"x" * (1024 * 1024), {}).status_code == 401  # at the limit: read


def test_health_and_readiness(client):
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json["redis"] == "ok"


def test_redis_down_is_503_so_the_shop_retries(write_config):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(load_config(write_config(redis_url=dead), {}), dead).test_client()
    body, headers = signed_order(1001)
    response = post(app, body, headers)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert app.get("/readyz").status_code == 503
    assert app.get("/healthz").status_code == 200


def test_woocommerce_ping_is_200_and_routed_nowhere(write_config, redis_url, queue_name,
                                                   rq_queue):
    path = write_config(redis_url=redis_url, queue=queue_name)
    path.write_text(path.read_text().replace(
        "sources:\n", "sources:\n  woo:\n    type: woocommerce\n    secret: woo-secret\n"))
    client = create_app(load_config(path, {}), redis_url).test_client()
    response = client.post("/webhooks/woo", data=b"webhook_id=12",
                           content_type="application/x-www-form-urlencoded")
    assert (response.status_code, response.json) == (200, {"ping": True})
    assert rq_queue.count == 0
    not_a_ping = client.post("/webhooks/woo", data=b"webhook_id=12&x=1",
                             content_type="application/x-www-form-urlencoded")
    assert not_a_ping.status_code == 401
