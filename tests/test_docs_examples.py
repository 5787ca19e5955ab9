"""docs/tools.md's examples run as written: with ``BRIDGE_CONFIG=docs/examples/routes.yaml`` in the
repository's root, each ``$ pumble-bridge …`` prints exactly the lines below it (and ``echo $?``
its exit code). ``check --online`` asks a fake Pumble (the doc's is on port 8025)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass

import pytest
import yaml

from tests.conftest import TEST_KEY
from tests.test_e2e import ROOT, clean_env

DOC = ROOT / "docs" / "tools.md"
CONFIG = "docs/examples/routes.yaml"
DOC_FAKE_URL = "http://127.0.0.1:8025"
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


@dataclass
class Example:
    command: str
    stdin: str
    output: list[str]
    exit_code: int | None = None  # when the doc shows `echo $?`


def examples() -> list[Example]:
    found: list[Example] = []
    for language, block in _BLOCK.findall(DOC.read_text()):
        current: Example | None = None  # the example the next lines belong to
        for line in [] if language else block.splitlines():
            if line.startswith("$ echo $?"):
                assert current is not None, f"{DOC}: `echo $?` after no command"
                current.exit_code = -1  # read on the next line
            elif line.startswith("$ "):
                stdin, _, command = line[2:].rpartition("| ")
                current = Example(command, shlex.split(stdin)[1] + "\n" if stdin else "", [])
                found.append(current)
            elif current is not None and current.exit_code == -1:
                current.exit_code, current = int(line), None
            elif current is not None:
                current.output.append(line)
    return found


def test_the_docs_config_is_the_shipped_one():
    [config] = [block for language, block in _BLOCK.findall(DOC.read_text()) if language == "yaml"]
    assert yaml.safe_load(config) == yaml.safe_load((ROOT / CONFIG).read_text())


@pytest.mark.parametrize("example", examples(), ids=lambda example: example.command[:60])
def test_the_example_prints_what_the_doc_shows(example, fake_pumble):
    assert example.command.startswith("pumble-bridge ")
    done = subprocess.run(
        [sys.executable, "-m", "bridge", *shlex.split(example.command)[1:]], cwd=ROOT,
        input=example.stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=60, env=clean_env(BRIDGE_CONFIG=CONFIG, PUMBLE_API_KEY=TEST_KEY,
                                  PUMBLE_BASE_URL=fake_pumble.url, PYTHONUNBUFFERED="1"))
    shown = "\n".join(example.output).rstrip("\n").replace(DOC_FAKE_URL, fake_pumble.url)
    assert done.stdout.rstrip("\n") == shown
    if example.exit_code is not None:
        assert done.returncode == example.exit_code
