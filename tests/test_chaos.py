"""The chaos run, short (about two minutes): the stream contract holds through Redis, server and
publisher faults.

``tests/chaos.py`` says what runs; ``make chaos`` runs it for minutes and writes a report. Here the
run's report goes to the test's temporary directory and, on a failure, into the assertion message.
The fault schedule comes from the tests' seed (``TEST_SEED``, tests/support.py), printed with the
report; timings still vary from run to run, as on any machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import chaos
from tests.nginx import require_nginx
from tests.support import SEED

FAULT_SECONDS = 120.0
FRAMES_AT_LEAST = 200  # per client; the quietest topic alone publishes over 800 in a run


@pytest.mark.slow
@pytest.mark.timeout(480)
async def test_every_client_gets_every_frame_exactly_once_through_chaos(tmp_path: Path) -> None:
    config = chaos.ChaosConfig(seed=SEED, duration=FAULT_SECONDS, nginx=require_nginx(), workdir=tmp_path)
    run = await chaos.run(config)
    report = chaos.report(run, f"TEST_SEED={SEED} pytest tests/test_chaos.py")
    (tmp_path / "chaos.md").write_text(report)
    print(chaos.summary(run))

    assert not run.violations, report
    assert {fault.kind for fault in run.faults} == set(chaos.FAULT_KINDS), report
    starved = {
        name: summary.frames
        for name, summary in run.result.clients.items()
        if summary.frames < FRAMES_AT_LEAST
    }
    assert not starved, f"seed {SEED}: clients that checked too few frames to mean much: {starved}"
    assert run.converged
