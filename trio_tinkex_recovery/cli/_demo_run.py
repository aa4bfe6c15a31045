"""The demo's second part: a training script kept going by ``run``.

A tiny training script on the native client (`testing._trainer`) runs
under `supervise` against the demo's simulator; its run is corrupted
mid-training; the supervisor stops it and starts it again from its newest
checkpoint.  The verdict is read from the script's own log and the
simulator's restores: every step after the checkpoint ran once on the new
run, and the corrupted run was restored once, from its newest checkpoint.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import TYPE_CHECKING, Final

import trio

from .._supervise import supervise

if TYPE_CHECKING:
    from .._config import Config
    from .._policy import Policy
    from .._supervise import SupervisorEvent
    from ..testing import FakeTinker
    from ._runtime import Output

__all__ = ["STEPS", "supervise_part"]

#: Steps the script trains; it saves a checkpoint every `EVERY`.
STEPS: Final = 12
EVERY: Final = 3
#: The step after which its run is corrupted.
CORRUPT_AFTER: Final = 7


def _steps(log: str) -> list[tuple[int, str]]:
    try:
        with open(log, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError:
        return []
    return [(int(line.split()[1]), line.split()[2]) for line in lines if line]


async def supervise_part(
    fake: FakeTinker, *, config: Config, policy: Policy, out: Output
) -> bool:
    """Run the script under the supervisor, corrupt it, print what happened.

    Returns:
        Whether it was resumed from its newest checkpoint with every step
        after that checkpoint run once on the new run.
    """
    out.line()
    out.line(
        f"Part 2: a training script under 'run' ({STEPS} steps, a checkpoint "
        f"every {EVERY}); its run is corrupted after step {CORRUPT_AFTER}."
    )
    with tempfile.TemporaryDirectory(prefix="ttr-demo-") as folder:
        log = os.path.join(folder, "steps.log")
        command = [
            sys.executable,
            "-m",
            "trio_tinkex_recovery.testing._trainer",
            "Qwen/Qwen3-8B",
            str(STEPS),
            str(EVERY),
            log,
        ]
        environ = {
            **os.environ,
            "TINKER_API_KEY": config.api_key,
            "TINKER_BASE_URL": config.base_url,
            "TRAINER_STEP_DELAY": "0.05",
        }

        def report(event: SupervisorEvent) -> None:
            if event.name in ("started", "announced", "restarting", "stopping"):
                out.line(f"  run: {event.message}")

        async def corrupt_mid_training() -> None:
            while True:
                steps = _steps(log)
                if any(step >= CORRUPT_AFTER for step, _ in steps):
                    model = steps[-1][1]
                    out.line(f"  demo: corrupting {model}")
                    fake.corrupt(model)
                    return
                await trio.sleep(0.02)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(corrupt_mid_training)
            result = await supervise(
                command,
                policy=policy,
                config=config,
                grace=5,
                state=os.path.join(folder, "job.json"),
                on_event=report,
                environ=environ,
            )
            nursery.cancel_scope.cancel()
        steps = _steps(log)
    return _verdict(fake, steps, result.exit_status, out)


def _verdict(
    fake: FakeTinker, steps: list[tuple[int, str]], status: int, out: Output
) -> bool:
    runs = list(dict.fromkeys(model for _, model in steps))
    if status != 0 or len(runs) != 2:
        out.line(f"FAILED: exit status {status}, {len(runs)} run(s) trained")
        return False
    old, new = runs
    restores = [r for r in fake.restore_log if r.source_run_id == old]
    saved = [
        c for c in fake.checkpoints(old) if c.tinker_path.rsplit("/", 1)[1] != "init"
    ]
    newest = max(saved, key=lambda c: int((c.user_metadata or {}).get("step", -1)))
    step = int((newest.user_metadata or {})["step"])
    on_new = [s for s, model in steps if model == new]
    ok = [r.tinker_path for r in restores] == [newest.tinker_path] and on_new == list(
        range(step + 1, STEPS)
    )
    verdict = "OK" if ok else "FAILED"
    out.line(
        f"{verdict}: resumed from {newest.tinker_path} (step {step}) on {new}; "
        f"steps {step + 1}-{STEPS - 1} ran once each there "
        f"({len(restores)} restore of the corrupted run)"
    )
    return ok
