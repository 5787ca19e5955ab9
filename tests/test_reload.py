"""Reload without restart: a valid new config is put in force, an invalid one is refused."""

import logging
import os
import signal
import time

from bridge import logs
from bridge.config import load_config
from bridge.events import Event, Order, SourceRef
from bridge.pipeline import Pipeline
from bridge.reload import Reloader
from bridge.web import create_app, receiver_of
from tests.conftest import TEST_SECRET, signed_order
from tests.test_metrics import parse, value


def bump(path) -> None:
    """Make sure the change is seen even on a file system with coarse timestamps."""
    later = time.time() + 2
    os.utime(path, (later, later))


def config_valid(client) -> float:
    return value(parse(client.get("/metrics").get_data(as_text=True)),
                 "pumble_bridge_config_valid")


def channel_of(client, rq_queue, webhook_id: str) -> str:
    body, headers = signed_order(1001, webhook_id=webhook_id)
    assert client.post("/webhooks/shop", data=body, headers=headers).status_code == 202
    return rq_queue.get_jobs()[-1].args[0]["channel"]


def test_a_valid_change_is_put_in_force(write_config, redis_url, queue_name, rq_queue):
    path = write_config(redis_url=redis_url, queue=queue_name)
    app = create_app(load_config(path, {}), redis_url, watch=False)
    client, reloader = app.test_client(), receiver_of(app).pipelines
    assert channel_of(client, rq_queue, "w-1") == "orders"

    path.write_text(path.read_text().replace("channel: orders", "channel: sales"))
    bump(path)
    assert reloader.reload_if_changed()
    assert channel_of(client, rq_queue, "w-2") == "sales"


def test_an_invalid_change_is_refused_and_reported(write_config, redis_url, queue_name,
                                                   rq_queue, caplog):
    path = write_config(redis_url=redis_url, queue=queue_name)
    app = create_app(load_config(path, {}), redis_url, watch=False)
    client, reloader = app.test_client(), receiver_of(app).pipelines
    valid = path.read_text()

    path.write_text(valid.replace("channel: orders", "chanel: orders"))
    bump(path)
    with caplog.at_level(logging.ERROR):
        assert reloader.reload_if_changed()
    [line] = [r.getMessage() for r in caplog.records if r.name == "bridge.reload"]
    assert "\n" not in line and "the last valid config stays in force" in line
    assert "did you mean 'channel'" in line
    assert channel_of(client, rq_queue, "w-3") == "orders"
    ready = client.get("/readyz")
    assert ready.status_code == 200  # the last valid config serves: still ready
    assert "did you mean 'channel'" in ready.json["config_refused"]
    assert config_valid(client) == 0

    path.write_text(valid)
    bump(path)
    assert reloader.reload_if_changed()
    assert "config_refused" not in client.get("/readyz").json
    assert config_valid(client) == 1


def test_the_last_valid_config_wins_not_the_startup_one(write_config, redis_url, queue_name,
                                                        rq_queue):
    path = write_config(redis_url=redis_url, queue=queue_name)
    app = create_app(load_config(path, {}), redis_url, watch=False)
    client, reloader = app.test_client(), receiver_of(app).pipelines
    path.write_text(path.read_text().replace("channel: orders", "channel: sales"))
    bump(path)
    assert reloader.reload_if_changed()
    path.write_text(path.read_text().replace("template: order_created.j2",
                                             "template: no_such_template.j2"))
    bump(path)
    assert reloader.reload_if_changed()
    assert "no_such_template.j2" in reloader.refused
    assert channel_of(client, rq_queue, "w-4") == "sales"
    assert not reloader.reload_if_changed()  # the same refused file: not read again


def test_a_template_change_is_picked_up(tmp_path, write_config):
    templates = tmp_path / "mine"
    templates.mkdir()
    (templates / "order_created.j2").write_text("first {{ order.name }}")
    path = write_config()
    path.write_text(path.read_text() + f"templates_dir: {templates}\n")
    reloader = Reloader(load_config(path, {}), Pipeline.from_config)
    event = Event(id="1", type="order.created", source=SourceRef("shop", "shopify"),
                  order=Order(id="9", name="#9"))
    route = reloader.config.routes[0]
    assert reloader.current.renderer.render(route, event).text == "first #9"
    (templates / "order_created.j2").write_text("second {{ order.name }}")
    bump(templates / "order_created.j2")
    assert reloader.reload_if_changed()
    assert reloader.current.renderer.render(route, event).text == "second #9"


def test_a_config_older_than_its_file_reloads_at_once(write_config):
    """A gunicorn worker restarted by SIGHUP starts with the config its master read."""
    path = write_config()
    stale = load_config(path, {})
    path.write_text(path.read_text().replace("channel: orders", "channel: sales"))
    bump(path)
    reloader = Reloader(stale, Pipeline.from_config)
    assert reloader.reload_if_changed()
    assert reloader.config.routes[0].channel == "sales"


def test_sighup_reloads(write_config, redis_url):
    path = write_config(redis_url=redis_url)
    app = create_app(load_config(path, {}), redis_url)  # watches, and handles SIGHUP
    reloader = receiver_of(app).pipelines
    reloader._interval = 3600  # only the signal can wake it within the test
    assert app.test_client().get("/healthz").status_code == 200  # starts the watcher
    reloader.check_now()  # let the thread settle into its long wait
    time.sleep(0.1)
    path.write_text(path.read_text().replace("channel: orders", "channel: sales"))
    bump(path)
    os.kill(os.getpid(), signal.SIGHUP)
    deadline = time.monotonic() + 5
    while reloader.config.routes[0].channel != "sales":
        assert time.monotonic() < deadline, "not reloaded"
        time.sleep(0.02)


def test_a_reloaded_configs_new_secret_is_masked_by_the_processs_redactor(
        write_config, redis_url, queue_name, rq_queue):
    path = write_config(redis_url=redis_url, queue=queue_name)
    redactor = logs.Redactor()
    app = create_app(load_config(path, {}), redis_url, watch=False, redactor=redactor)
    assert redactor.redact(TEST_SECRET) == logs.MASK  # the first config's, at start
    rotated = "rotated-webhook-secret-0123"
    assert redactor.redact(rotated) == rotated
    path.write_text(path.read_text().replace(TEST_SECRET, rotated))
    bump(path)
    assert receiver_of(app).pipelines.reload_if_changed()
    assert redactor.redact(rotated) == logs.MASK
