"""The processes that start others: `run` (receiver and worker) and `worker --processes N`. A
child that dies is started again, on the last valid config; SIGHUP does not end `run`; and
stopping leaves no process behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from rq import Worker

from tests.conftest import signed_order, texts, wait_until
from tests.test_e2e import ROOT, clean_env
from tests.test_redis_full import run_process
from tests.test_worker_processes import _children, kill


def descendants(pid: int) -> set[int]:
    """Every process started, directly or not, by ``pid``."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        children = {child for child, of in parents.items() if of == parent}
        found |= children
        todo += children
    return found


def command_line(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_text().split("\0")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def break_config(path: Path) -> None:
    path.write_text(path.read_text() + "\nroutes: [ {unclosed\n")


def test_run_takes_sighup_restarts_a_dead_worker_and_leaves_nothing_behind(
        bridge, fake_pumble, tmp_path):
    b = bridge()
    log = tmp_path / "run.log"
    run, url = run_process(b.path, log)
    try:
        started = descendants(run.pid)
        [web] = [pid for pid in _children(run.pid) if "serve" in command_line(pid)]
        [worker] = set(_children(run.pid)) - {web}
        receivers = descendants(web)  # gunicorn's workers
        run.send_signal(signal.SIGHUP)  # systemctl reload: serve reads its config again...
        wait_until(lambda: not receivers & descendants(web), "serve to renew its workers", 30)
        assert run.poll() is None  # ...and run carries on, with the same two children
        assert set(_children(run.pid)) == {web, worker}

        os.killpg(worker, signal.SIGKILL)  # the worker, and rq's scheduler with it
        # One look at the children: between two, the dead one can be reaped before its
        # replacement leads its own process group, and neither look would count it.
        wait_until(lambda: len(now := _children(run.pid)) == 2 and worker not in now,
                   "run to start the worker again", 30)
        assert "the worker process exited (code -9); starting it again" in log.read_text()
        body, headers = signed_order(4242, webhook_id="after-the-restart")
        answer = httpx.post(f"{url}/webhooks/shop", content=body, headers=headers)
        assert answer.status_code == 202
        wait_until(lambda: any("#4242" in text for text in texts(fake_pumble)),
                   "the restarted worker to post", 30)
        every = started | descendants(run.pid)
        run.send_signal(signal.SIGTERM)
        assert run.wait(60) == 0
        assert not [pid for pid in every if alive(pid)]
    finally:
        kill(run)


def test_a_worker_restarted_while_the_config_is_invalid_runs_on_the_last_valid_one(
        bridge, fake_pumble, tmp_path):
    b = bridge()
    log = tmp_path / "supervisor.log"
    with log.open("w") as output:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "bridge", "--config", str(b.path), "worker", "--processes",
             "2"], cwd=ROOT, env=clean_env(), stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        wait_until(lambda: len(_children(supervisor.pid)) == 2, "two workers", 30)
        first, second = _children(supervisor.pid)
        break_config(b.path)
        os.killpg(first, signal.SIGKILL)
        wait_until(lambda: len(now := _children(supervisor.pid)) == 2 and first not in now,
                   "a replacement", 30)  # one look, as above
        [replacement] = set(_children(supervisor.pid)) - {second}
        assert "is not valid; the worker starts on the last valid one" in log.read_text()
        b.enqueue("on the last valid config")
        wait_until(lambda: texts(fake_pumble) == ["on the last valid config"], "the post", 30)
        # Registered with rq: it is past reading a config, which the broken file would end.
        wait_until(lambda: replacement in {worker.pid for worker in Worker.all(queue=b.rq)},
                   "the replacement to register", 30)
        assert set(_children(supervisor.pid)) == {second, replacement}
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(60) == 0
    finally:
        kill(supervisor)
