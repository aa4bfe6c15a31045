"""Supervise mode with a child on the official SDK, against the simulator.

The child (``sdk_trainer.py``) uses ``supervised.training_client``; its run
is corrupted mid-training; the supervisor (the CLI, a subprocess) restarts
it, and the SDK restores the newest checkpoint in the child's own session.
Counted from the child's own log and the simulator's restores.
"""

from __future__ import annotations

import os
import sys

import pytest
import trio

from trio_tinkex_recovery.testing import FakeTinker, serve_fake_tinker

from ..supervise.test_run import run_argv, steps_of, trainer_env
from ..test_cli import KEY, spawn

if os.environ.get("TTR_REQUIRE_TINKER") != "1":
    pytest.importorskip("tinker", reason="the tinker extra is not installed")

TRAINER = os.path.join(os.path.dirname(__file__), "sdk_trainer.py")
#: The SDK starts slowly (threads, an event loop): a generous guard.
TIMEOUT = 90


async def test_an_sdk_child_resumes_from_its_newest_checkpoint(tmp_path):
    fake = FakeTinker(api_key=KEY)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            argv = run_argv(
                url,
                tmp_path / "job.json",
                command=[sys.executable, TRAINER, "16", "3"],
            )
            env = trainer_env(
                url, TRAINER_STEP_DELAY="0.05", TINKER_TELEMETRY="0", TINKER_TAGS="mine"
            )
            async with spawn(argv, env) as job:
                await job.out.wait_until(lambda: len(steps_of(job.out.lines)) >= 8)
                first = steps_of(job.out.lines)[-1][1]
                fake.corrupt(first)
                code = await job.wait()
            nursery.cancel_scope.cancel()
    assert code == 0, job.err.text[-3000:]
    steps = steps_of(job.out.lines)
    runs = list(dict.fromkeys(model for _, model in steps))
    assert len(runs) == 2, steps
    [restore] = fake.restore_log
    assert restore.source_run_id == first
    newest = max(int((c.user_metadata or {})["step"]) for c in fake.checkpoints(first))
    assert restore.tinker_path == f"tinker://{first}/weights/step-{newest:04d}"
    assert [s for s, m in steps if m == runs[1]] == list(range(newest + 1, 16))
    # Both runs live in the child's own sessions, which the SDK tagged with
    # the job (TINKER_TAGS), beside the user's own tag.
    assert restore.session_id != runs[0].split(":")[0]
    for session in fake.sessions.values():
        assert "mine" in session.tags
        assert any(t.startswith("trio-tinkex-recovery:job-") for t in session.tags)
