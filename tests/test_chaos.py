"""The chaos run, short (about two minutes): the stream contract holds through Redis, server and
publisher faults.

``scripts/chaos.py`` says what runs; ``make chaos`` runs it for minutes and writes a report. Here the
run's report goes to the test's temporary directory and, on a failure, into the assertion message.
The fault schedule comes from the tests' seed (``TEST_SEED``, tests/helpers/processes.py), printed with the
report; timings still vary from run to run, as on any machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts import chaos
from scripts.chaos_check import DUPLICATE, GAP, ClientLog, Connect, Data, Reset, check
from tests.helpers.nginx import require_nginx
from tests.helpers.processes import SEED

pytestmark = pytest.mark.system  # starts processes of its own (docs/testing.md: tiers)

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
    assert_the_checker_sees_a_frame_lost_or_repeated(run)


def assert_the_checker_sees_a_frame_lost_or_repeated(run: chaos.ChaosRun) -> None:
    """The same records with one live frame taken out, or sent twice, fail the check: it is not vacuous."""
    busiest = max(run.clients, key=lambda log: run.result.clients[log.name].frames)
    records = busiest.records
    # A frame followed, for its topic and on the same connection, by the next frame of its epoch.
    following: dict[str, int] = {}
    candidates = []
    for index in range(len(records) - 1, -1, -1):
        record = records[index]
        if isinstance(record, Connect):
            following.clear()
        elif isinstance(record, Reset):
            following.pop(record.topic, None)
        elif isinstance(record, Data):
            later = following.get(record.topic)
            if (
                later is not None
                and record.seq > 1
                and (nxt := records[later]).epoch == record.epoch
                and nxt.seq == record.seq + 1
            ):
                candidates.append(index)
            following[record.topic] = index
    assert candidates, "no frame with a successor in its epoch: nothing was checked"
    index = candidates[len(candidates) // 2]
    for mutated, rule in (
        ([*records[:index], *records[index + 1 :]], GAP),
        ([*records[: index + 1], records[index], *records[index + 1 :]], DUPLICATE),
    ):
        found = check([ClientLog(busiest.name, busiest.topics, mutated)], run.published).violations
        assert [v.rule for v in found] == [rule], (rule, found)
