"""The lock files the README installs from pin every release the project asks for, each with its
hashes: a dependency added to pyproject.toml without re-locking (`bash scripts/newest --lock`)
would leave a fresh machine without it (the README installs the project with --no-deps)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
# A pin: its name and release (and the environments it is for), then its hashes, a line each.
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^ ;]+)(?: ;[^\\\n]*)? \\\n"
                 r"((?:    --hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)", re.MULTILINE)


def locked(name: str) -> dict[str, str]:
    """The release the lock file pins of each package (by normalised name), if it has hashes;
    every ``==`` line of the file must be such a pin."""
    text = (ROOT / name).read_text("utf-8")
    pins = {canonicalize_name(found[1]): found[2] for found in PIN.finditer(text)}
    pinned = sum("==" in line for line in text.splitlines())
    assert len(pins) == pinned, f"{name}: a pin without its hashes"
    return pins


def declared(*extras: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    wanted = [*project["dependencies"],
              *(line for extra in extras for line in project["optional-dependencies"][extra])]
    return {canonicalize_name(Requirement(line).name) for line in wanted}


def test_the_run_lock_pins_every_dependency_with_hashes():
    pins = locked("requirements.txt")
    assert declared() <= pins.keys(), declared() - pins.keys()
    assert "hiredis" in pins  # redis[hiredis]'s extra, which the accept imports itself


def test_the_test_lock_pins_every_test_dependency_and_the_run_locks_releases():
    pins, run = locked("requirements-test.txt"), locked("requirements.txt")
    assert declared("test") <= pins.keys(), declared("test") - pins.keys()
    # One resolution: the run lock is compiled with the test lock as its constraint.
    assert {name: pins.get(name) for name in run} == run
