"""Run the receiver under gunicorn from inside ``pumble-bridge serve``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication


class GunicornApp(BaseApplication):
    def __init__(self, factory: Callable[[], Any], options: dict[str, Any]):
        self._factory = factory
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)
        if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 24: one per host path
            self.cfg.set("control_socket_disable", True)

    def load(self) -> Any:
        return self._factory()  # in each worker, after the fork: no shared sockets
