"""The worker yields the CPU to the receiver: `run` starts its worker at a lower priority (a
nice value, and on Linux its session's autogroup too), and `worker --nice N` lowers its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from bridge.cli import WORKER_NICE, main
from tests.conftest import free_port, wait_until
from tests.test_e2e import ROOT, clean_env

linux_only = pytest.mark.skipif(not Path("/proc/self/autogroup").exists(),
                                reason="reads /proc (Linux, with autogroups)")


def children(pid: int) -> list[int]:
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_text().split("\0")[:-1]


def autogroup_nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])


@linux_only
def test_run_starts_its_worker_below_the_receiver(tmp_path, queue_name, redis_url):
    config = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    config["redis"] = {"queue": queue_name}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port, fake_port = free_port(), free_port()
    env = clean_env(BRIDGE_DATA_DIR=str(tmp_path / "data"))
    if os.environ.get("REDIS_URL"):
        env["REDIS_URL"] = redis_url
    command = [sys.executable, "-m", "bridge", "--config", str(config_path), "run",
               "--port", str(port), "--fake-pumble-port", str(fake_port)]
    run = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200,
                   "serve to be ready")
        started = {pid: cmdline(pid) for pid in children(run.pid)}
        # The worker is forked (run's own command line); the receiver is `serve`.
        [worker] = [pid for pid, line in started.items() if line == command]
        [receiver] = [pid for pid, line in started.items() if "serve" in line]
        assert os.getpriority(os.PRIO_PROCESS, worker) == WORKER_NICE
        assert autogroup_nice(worker) == WORKER_NICE
        assert os.getpriority(os.PRIO_PROCESS, receiver) == 0
        assert autogroup_nice(receiver) == 0
    finally:
        run.send_signal(signal.SIGINT)
        output = run.communicate(timeout=60)[0]
    assert run.returncode == 0, output


@linux_only
@pytest.mark.parametrize(("flags", "seen_nice"), [(["--nice", "7"], "7 7"), ([], "0 0")])
def test_the_worker_command_lowers_its_own_priority_when_told(bridge, flags, seen_nice):
    """`worker --nice 7`, started in a session of its own (as a service is): the process and
    its session are at nice 7 when the worker runs; without the flag, as they were."""
    b = bridge()
    seen = b.path.parent / "seen"
    code = ("import os, sys; from pathlib import Path; import bridge.worker as w; "
            "from bridge.cli import main\n"
            "def record(*args, **kwargs):\n"
            f"    Path({str(seen)!r}).write_text('%d %s' % (os.getpriority(os.PRIO_PROCESS, 0), "
            "Path('/proc/self/autogroup').read_text().split()[-1]))\n"
            "w.run_worker = record\n"
            f"sys.exit(main(['--config', {str(b.path)!r}, 'worker', *{flags!r}]))\n")
    done = subprocess.run([sys.executable, "-c", code], start_new_session=True, timeout=60,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert seen.read_text() == seen_nice


@pytest.mark.parametrize("value", ["20", "-1", "x"])
def test_a_nice_value_out_of_range_is_refused(value, capsys):
    with pytest.raises(SystemExit):
        main(["worker", "--nice", value])
    assert "a nice value is a whole number from 0 to 19" in capsys.readouterr().err
