"""The worker yields the CPU to the receiver: `run` starts its worker at a lower priority (a
nice value, and on Linux its session's autogroup too), and `worker --nice N` lowers its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.cli import WORKER_NICE, main
from tests.test_e2e import example_run

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
    with example_run(tmp_path, queue_name, redis_url) as run:
        started = {pid: cmdline(pid) for pid in children(run.process.pid)}
        # The worker is forked (run's own command line); the receiver is `serve`.
        [worker] = [pid for pid, line in started.items() if line == run.command]
        [receiver] = [pid for pid, line in started.items() if "serve" in line]
        assert os.getpriority(os.PRIO_PROCESS, worker) == WORKER_NICE
        assert autogroup_nice(worker) == WORKER_NICE
        assert os.getpriority(os.PRIO_PROCESS, receiver) == 0
        assert autogroup_nice(receiver) == 0


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
