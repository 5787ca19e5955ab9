"""admin.listen: the admin page and /metrics on their own address, the webhooks on the public
one, under gunicorn as `pumble-bridge serve` runs it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import httpx
import yaml

from tests.conftest import free_port, signed_order, wait_until
from tests.test_e2e import ROOT, clean_env


def test_admin_and_metrics_only_on_the_admin_address(bridge, tmp_path):
    b = bridge()
    config = yaml.safe_load(b.path.read_text())
    public, private = free_port(), free_port()
    config["admin"] = {"token": "a-long-enough-admin-token", "listen": f"127.0.0.1:{private}"}
    b.path.write_text(yaml.safe_dump(config))
    server = subprocess.Popen(
        [sys.executable, "-m", "bridge", "--config", str(b.path), "serve", "--port", str(public),
         "--workers", "1"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=clean_env(BRIDGE_DATA_DIR=str(tmp_path)), start_new_session=True)
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{private}/healthz").status_code == 200,
                   "serve to start")

        def status(port: int, path: str, **kwargs) -> int:
            method = "POST" if "content" in kwargs else "GET"
            return httpx.request(method, f"http://127.0.0.1:{port}{path}", **kwargs).status_code

        body, headers = signed_order(7007)
        bearer = {"Authorization": "Bearer a-long-enough-admin-token"}
        assert status(public, "/webhooks/shop", content=body, headers=headers) == 202
        assert status(private, "/webhooks/shop", content=body, headers=headers) == 404
        assert status(public, "/admin/", headers=bearer) == 404
        assert status(private, "/admin/", headers=bearer) == 200
        assert status(public, "/metrics") == 404
        assert status(private, "/metrics") == 200
        # The Host header cannot talk the public listener into serving the admin page.
        assert status(public, "/admin/", headers={**bearer, "Host": f"127.0.0.1:{private}"}) == 404
        assert status(public, "/readyz") == status(private, "/readyz") == 200
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
