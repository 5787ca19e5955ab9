"""Reload the config without a restart: when the file or a template changes, or on SIGHUP.

A new config is put in force only if it loads and builds completely; otherwise the reason is
logged and the old one stays. Each process watches for itself (under gunicorn each worker), so
``kill -HUP`` on gunicorn's master, which restarts the workers, also picks a new file up.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from bridge.config import Config, ConfigError, load_config

log = logging.getLogger(__name__)

T = TypeVar("T")


class Reloader(Generic[T]):
    """Holds what ``build`` made of the config in force; swaps it when a valid new one appears."""

    def __init__(self, config: Config, build: Callable[[Config], T], interval: float = 2.0):
        self.config = config
        self.current: T = build(config)
        self._build = build
        self._interval = interval
        stamp = self._files_stamp()
        # A file newer than the config in force (a worker restarted by SIGHUP starts from the
        # config its master read): the first check reloads.
        fresh = all(mtime / 1e9 <= config.loaded_at for _, mtime, _ in stamp)
        self._stamp = stamp if fresh else ()
        self._wake = threading.Event()

    def start(self) -> Reloader[T]:
        threading.Thread(target=self._watch, daemon=True, name="config-reloader").start()
        return self

    def check_now(self) -> None:
        """Ask the watcher to look at once (from a SIGHUP handler: no work in the handler)."""
        self._wake.set()

    def reload_if_changed(self) -> bool:
        """True when a changed config was put in force."""
        stamp = self._files_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            config = load_config(self.config.path)
            built = self._build(config)
        except ConfigError as exc:
            log.error("config %s changed but is not valid; keeping the one in force:\n%s",
                      self.config.path, exc)
            return False
        self.config, self.current = config, built
        log.info("config %s reloaded", self.config.path)
        return True

    def _watch(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            try:
                self.reload_if_changed()
            except Exception:  # a watcher that dies would silently stop reloads
                log.exception("config reload failed")

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
