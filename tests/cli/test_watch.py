"""What watch (and the demo) run: the monitor, its telemetry, the board.

In-process against the fakes of ``tests/conftest.py``, on the mock clock.
"""

from __future__ import annotations

import io
import re

from trio_tinkex_recovery import Policy
from trio_tinkex_recovery.cli._board import Board
from trio_tinkex_recovery.cli._runtime import Output, Stop
from trio_tinkex_recovery.cli._view import LinesView
from trio_tinkex_recovery.cli._watch import monitor_runs

POLICY = Policy(enabled=True, jitter=0, poll_interval=1, backoff=100, max_backoff=100)


async def watch(service, *run_ids, duration, policy=POLICY):
    """Watch ``run_ids`` for ``duration``; the board, its output, why it stopped."""
    out = io.StringIO()
    view = LinesView(Output(out))
    board = Board(policy=policy, view=view)
    stop = Stop()
    await monitor_runs(
        service=service,
        policy=policy,
        max_concurrent=1,
        run_ids=run_ids,
        board=board,
        headline="watching",
        until=lambda monitor: None,
        duration=duration,
        stop=stop,
    )
    view.close(board.summary(title="summary", footer=[board.totals()]))
    return board, out.getvalue(), stop.reason


async def test_duration_ending_during_a_restore_interrupts_it(
    service, rest, autojump_clock
):
    """--duration ends mid-restore: interrupted, not exhausted."""
    rest.add("run-1", "ckpt-0001", corrupted=True)
    rest.add("run-2", "ckpt-0001")
    service.delay = 100
    board, shown, reason = await watch(service, "run-1", "run-2", duration=10)
    assert reason == "--duration reached"
    assert board.exhausted() == []
    assert "run-1: restoring tinker://run-1/weights/ckpt-0001" in shown
    assert "run-1: recovery INTERRUPTED at attempt 1" in shown
    assert re.search(r"^run-1 +interrupted +1 +0 +1/3 +ckpt-0001$", shown, re.M)
    assert re.search(r"^run-2 +watching +10 +0 +- +ckpt-0001$", shown, re.M)


async def test_duration_ending_during_a_retry_wait_interrupts_it(
    service, rest, autojump_clock
):
    """--duration ends while a failed attempt waits to retry: interrupted."""
    rest.add("run-1", "ckpt-0001", corrupted=True)
    service.failures.append(RuntimeError("busy"))
    board, shown, _ = await watch(service, "run-1", duration=10)
    assert board.exhausted() == []
    assert "run-1: attempt 1 failed: RuntimeError: busy" in shown
    assert re.search(r"^run-1 +interrupted ", shown, re.M)
    assert "1 run(s): 1 interrupted; 1 polls, 0 failed" in shown


async def test_polls_come_from_events_and_followed_runs_get_rows(
    service, rest, autojump_clock
):
    """Per-run polls, errors and checkpoints come from polled/poll_error events."""
    rest.add("run-1", "ckpt-0001", "ckpt-0002")
    rest.fail_polls["run-1"] = [RuntimeError("503"), RuntimeError("503")]
    rest.add("run-2", "ckpt-0001", corrupted=True)
    board, shown, _ = await watch(service, "run-1", "run-2", duration=4.5)
    assert "run-1: poll failed: RuntimeError: 503" in shown
    assert "run-1: polls answer again after 2 failed" in shown
    assert re.search(r"^run-1 +watching +5 +2 +- +ckpt-0002$", shown, re.M)
    new = "session-1:train:1"
    assert re.search(rf"^run-2 +recovered → {new} +1 +0 +1/3 +ckpt-0001$", shown, re.M)
    assert re.search(rf"^{new} +watching +5 +0 +- +ckpt-0001$", shown, re.M)
    assert f"{new}: watching, checkpoint ckpt-0001, recovered from run-2" in shown
    assert board.stats.polls == 11
