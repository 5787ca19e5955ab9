"""Reload without restart: a valid new config is put in force, an invalid one is refused."""

import logging
import os
import signal
import time

from bridge.config import load_config
from bridge.events import Event, Order, SourceRef
from bridge.pipeline import Pipeline
from bridge.reload import Reloader
from bridge.web import create_app
from tests.conftest import signed_order


def bump(path) -> None:
    """Make sure the change is seen even on a file system with coarse timestamps."""
    later = time.time() + 2
    os.utime(path, (later, later))


def channel_of(client, rq_queue, webhook_id: str) -> str:
    body, headers = signed_order(1001, webhook_id=webhook_id)
    assert client.post("/webhooks/shop", data=body, headers=headers).status_code == 202
    return rq_queue.get_jobs()[-1].args[0]["channel"]


def test_a_valid_change_is_put_in_force(write_config, redis_url, queue_name, rq_queue):
    path = write_config(redis_url=redis_url, queue=queue_name)
    app = create_app(load_config(path, {}), redis_url, watch=False)
    client, reloader = app.test_client(), app.config["reloader"]
    assert channel_of(client, rq_queue, "w-1") == "orders"

    path.write_text(path.read_text().replace("channel: orders", "channel: sales"))
    bump(path)
    assert reloader.reload_if_changed()
    assert channel_of(client, rq_queue, "w-2") == "sales"


def test_an_invalid_change_is_refused_and_the_old_config_stays(write_config, redis_url,
                                                                queue_name, rq_queue, caplog):
    path = write_config(redis_url=redis_url, queue=queue_name)
    app = create_app(load_config(path, {}), redis_url, watch=False)
    client, reloader = app.test_client(), app.config["reloader"]

    path.write_text(path.read_text().replace("channel: orders", "chanel: orders"))
    bump(path)
    with caplog.at_level(logging.ERROR):
        assert not reloader.reload_if_changed()
    assert "is not valid; keeping the one in force" in caplog.text
    assert "did you mean 'channel'" in caplog.text
    assert channel_of(client, rq_queue, "w-3") == "orders"


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
    reloader = app.config["reloader"]
    reloader._interval = 3600  # only the signal can wake it within the test
    reloader.check_now()  # let the thread settle into its long wait
    time.sleep(0.1)
    path.write_text(path.read_text().replace("channel: orders", "channel: sales"))
    bump(path)
    os.kill(os.getpid(), signal.SIGHUP)
    deadline = time.monotonic() + 5
    while reloader.config.routes[0].channel != "sales":
        assert time.monotonic() < deadline, "not reloaded"
        time.sleep(0.02)
