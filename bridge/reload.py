"""Reload the config without a restart: when the file or a template changes, or on SIGHUP.

A new config is put in force only if it loads and builds completely; otherwise it is refused:
one log line says why, ``refused`` keeps the reason (``/readyz`` shows it) and the
``config_valid`` metric drops to 0, while the last config that validated stays in force.

Who looks: a process serving on its own (``serve --dev``, an embedded receiver) runs a watcher
thread from its first request on. Under gunicorn the master looks instead, on its own loop, and
its workers never do (bridge.gunicorn_app): each worker is forked from the master's Reloader, so
one started by SIGHUP or to replace a dead one starts from the last valid config, not the
startup one.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from bridge.config import Config, ConfigError, load_config
from bridge.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")


class Reloader(Generic[T]):
    """Holds what ``build`` made of the last config that validated; swaps it when a valid new
    one appears."""

    def __init__(self, config: Config, build: Callable[[Config], T], interval: float = 2.0, *,
                 metrics: Metrics | None = None):
        self.config = config
        self._metrics = metrics  # told whether the files on disk are in force (config_valid)
        self.current: T = build(config)
        self.refused = ""  # why the files as they are now are not in force; "" when they are
        self._build = build
        self._interval = interval
        stamp = self._files_stamp()
        # A file newer than the config (changed since it was read): the first check reloads.
        fresh = all(mtime / 1e9 <= config.loaded_at for _, mtime, _ in stamp)
        self._stamp = stamp if fresh else ()
        self._wake = threading.Event()
        self._lock = threading.Lock()  # one check (or watcher start) at a time
        self._watcher: threading.Thread | None = None
        self._watch_here = True
        self._valid(True)

    def start(self) -> None:
        """Start the watcher thread, once (a no-op after ``leave_watching_to_caller``)."""
        if self._watcher is not None or not self._watch_here:
            return
        with self._lock:
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, daemon=True,
                                                 name="config-reloader")
                self._watcher.start()

    def leave_watching_to_caller(self) -> None:
        """No watcher thread in this process or its forks: the caller calls
        ``reload_if_changed`` itself (gunicorn's master, which must not fork with it running)."""
        self._watch_here = False

    def check_now(self) -> None:
        """Ask the watcher to look at once (from a SIGHUP handler: no work in the handler)."""
        self._wake.set()

    def reload_if_changed(self) -> bool:
        """Look at the files; True when they changed since the last look, whether the new
        config was put in force or refused (then ``refused`` says why)."""
        with self._lock:
            stamp = self._files_stamp()
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            try:
                config = load_config(self.config.path)
                built = self._build(config)
            except ConfigError as exc:
                self._refuse(" | ".join(exc.problems))
                return True
            except Exception as exc:  # a bug in building must not stop the reloads
                log.exception("config %s: cannot be built", self.config.path)
                self._refuse(f"{self.config.path}: cannot be built ({type(exc).__name__})")
                return True
            self.config, self.current, self.refused = config, built, ""
            self._valid(True)
            log.info("config %s reloaded", self.config.path)
            return True

    def _refuse(self, reason: str) -> None:
        self.refused = reason
        self._valid(False)
        # One line; each problem names the file (and line) itself.
        log.error("config changed but is not valid; the last valid config stays in force: %s",
                  reason)

    def _watch(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            self.reload_if_changed()

    def _files_stamp(self) -> tuple[tuple[str, int, int], ...]:
        """(path, mtime, size) of the config file and every template it can use."""
        paths = [Path(self.config.path)]
        for folder in self.config.template_dirs:
            if folder.is_dir():
                paths.extend(sorted(folder.glob("*.j2")))
        stamp = []
        for path in paths:
            try:
                info = os.stat(path)
            except OSError:
                stamp.append((str(path), -1, -1))
                continue
            stamp.append((str(path), info.st_mtime_ns, info.st_size))
        return tuple(stamp)

    def _valid(self, valid: bool) -> None:
        if self._metrics is not None:
            self._metrics.config_valid(valid)
