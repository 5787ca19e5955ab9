"""The embedded default is a real Redis that keeps what was accepted across a restart."""

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from bridge.notification import Notification
from bridge.queue import NotificationQueue, connect
from bridge.redis_embedded import EmbeddedRedis


def test_accepted_jobs_survive_a_restart(tmp_path):
    embedded = EmbeddedRedis(tmp_path)
    url = embedded.start()
    try:
        queue = NotificationQueue(connect(url), "persist")
        notification = Notification(source="shop", event_id="e-1", event_type="order.created",
                                    route="r", channel="orders", text="hello")
        assert queue.enqueue(notification)
    finally:
        embedded.stop()
    assert not embedded.socket.exists()

    again = EmbeddedRedis(tmp_path)
    try:
        [job] = Queue("persist", connection=Redis.from_url(again.start()),
                      serializer=JSONSerializer).get_jobs()
        assert job.args[0]["text"] == "hello"
    finally:
        again.stop()


def test_second_start_on_the_same_data_dir_reuses_the_server(tmp_path):
    first, second = EmbeddedRedis(tmp_path), EmbeddedRedis(tmp_path)
    try:
        url = first.start()
        assert second.start() == url
        assert first.owned and not second.owned
        second.stop()  # not its server: must not stop it
        assert Redis.from_url(url).ping()
    finally:
        first.stop()


def test_server_is_configured_for_queues(tmp_path):
    embedded = EmbeddedRedis(tmp_path)
    try:
        server = Redis.from_url(embedded.start())
        settings = server.config_get("*")
        assert settings["appendonly"] == "yes"
        assert settings["maxmemory-policy"] == "noeviction"
        assert settings["port"] == "0"  # socket only: nothing listens on the network
        assert server.info("server")["redis_version"] >= "6.2"  # BLMOVE for rq
    finally:
        embedded.stop()


def test_long_data_dir_falls_back_to_a_short_socket_path(tmp_path):
    deep = tmp_path.joinpath(*["a-rather-long-directory-name"] * 5)
    embedded = EmbeddedRedis(deep)
    try:
        assert Redis.from_url(embedded.start()).ping()
        assert len(str(embedded.socket)) <= 100
    finally:
        embedded.stop()
