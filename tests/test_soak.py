"""The soak's short version (bench/soak.py --quick): 1,000 webhooks from every platform through
two receivers and two worker processes while a worker and a receiver are SIGKILLed, Redis is
restarted and the fake Pumble fails, times out, rate-limits and drops; every accepted event's
notification must be at the fake exactly once, none for a forged one.

It takes about a minute and a half, so it runs only when asked:
``SOAK=1 .venv/bin/pytest tests/test_soak.py``.
"""

from __future__ import annotations

import os

import pytest

from bench.soak import KINDS, Options, Soak, report

pytestmark = pytest.mark.skipif(os.environ.get("SOAK") != "1",
                                reason="the soak runs only with SOAK=1 (about 1.5 min)")


def test_quick_soak_loses_and_duplicates_nothing(tmp_path):
    options = Options.quick(seed=int(os.environ.get("SOAK_SEED", "1")), directory=tmp_path,
                            drain_timeout=150)
    result = Soak(options).run()
    print(report(result, options))
    assert {fault.kind for fault in result.faults} == set(KINDS)
    assert not [fault.error for fault in result.faults if fault.error]
    assert result.drained
    assert result.accepted + result.rejected == options.events
    assert result.unaccepted == 0
    assert (result.lost, result.duplicated) == (0, 0), result.examples
    assert result.rejected_seen == 0
    assert result.unmatched == 0
    assert result.dead_letters == 0
    assert not result.unexpected_exits
