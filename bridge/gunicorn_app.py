"""Run the receiver under gunicorn from inside ``pumble-bridge serve``.

The receiver is made once, in the master, and every worker is forked from it, so every worker
serves the config the master holds: the last one that validated. The master checks the config
and templates on each turn of its loop (about once a second) and on SIGHUP; a change, whether
put in force or refused, restarts the workers as SIGHUP does (new ones start, the old ones
finish their requests), so none serves a config the master has replaced and each reports a
refusal (``/readyz``). The workers never watch or reload by themselves: two processes that
each read the file could disagree, and a worker replacing a dead one would start from the
startup config.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from bridge.reload import Reloader


class GunicornApp(BaseApplication):
    def __init__(self, factory: Callable[[], Flask], options: dict[str, Any]):
        self._factory = factory
        self._options = options
        self._app: Flask | None = None
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)
        if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 24: one per host path
            self.cfg.set("control_socket_disable", True)

    def run(self) -> None:
        # Made before any fork; it opens no connection (redis-py connects on first use, in
        # each worker).
        self._app = self._factory()
        self.pipelines.leave_watching_to_caller()
        try:
            _ConfigWatchingArbiter(self).run()
        except RuntimeError as exc:  # as gunicorn's own run(): a bad bind, say
            print(f"\nError: {exc}\n", file=sys.stderr)
            sys.exit(1)

    @property
    def pipelines(self) -> Reloader:
        assert self._app is not None, "run() makes the app"
        return self._app.config["reloader"]

    def reload(self) -> None:  # SIGHUP, in the master: read the file before the new workers
        self.pipelines.reload_if_changed()
        super().reload()

    def load(self) -> Flask:
        assert self._app is not None, "run() makes the app"
        return self._app


class _ConfigWatchingArbiter(Arbiter):
    """gunicorn's master, which also looks at the config on each turn of its loop: a change is
    handled as a SIGHUP."""

    app: GunicornApp

    def murder_workers(self) -> None:
        # The one hook called on every turn of the loop (about once a second) in every gunicorn
        # version this supports (23 and older have no wait_for_signals).
        super().murder_workers()
        if self.app.pipelines.reload_if_changed():
            self.handle_hup()
