"""What happens on the simulator during ``demo`` and ``simulate``.

Both drive a `FakeTinker` living in this process: training jobs that save
checkpoints as they go, corruptions at seeded times, injected faults.  The
CLI (``_cli.py``) serves the simulator on loopback and, for the demo, runs
the monitor against it through the native HTTP client.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any, Final, TextIO

import attrs
import trio

from ._errors import TinkexRecoveryError
from ._policy import Policy
from ._view import SummaryTable
from .testing import FakeTinker, Fault

if TYPE_CHECKING:
    from ._types import Checkpoint
    from ._view import Board, View

__all__ = ["DEMO_API_KEY", "DemoScenario", "Simulation"]

logger = logging.getLogger("trio_tinkex_recovery.cli")

#: The key the demo's simulator accepts (not a secret: it opens nothing real).
DEMO_API_KEY: Final = "tml-demo-0000"
#: Seconds the demo waits, past its duration, for recoveries still running.
DEMO_GRACE: Final = 15.0


def simulated_loss(rng: random.Random, step: int) -> dict[str, str]:
    """Checkpoint metadata with a falling, noisy ``loss`` (for ``--strategy best``)."""
    return {"loss": f"{2.5 / (1 + 0.3 * step) + rng.uniform(-0.08, 0.08):.4f}"}


def _next_index(checkpoint: Checkpoint) -> int:
    """The step after a checkpoint named ``ckpt-NNNN`` (else 1)."""
    name = checkpoint.checkpoint_id.rpartition("/")[2]
    _, _, digits = name.rpartition("-")
    return int(digits) + 1 if digits.isdigit() else 1


@attrs.define(eq=False)
class DemoScenario:
    """Training runs, some corrupted at seeded times, on an in-process simulator.

    Which runs break, and when, depends only on ``seed``; so does the
    outcome: every corrupted run is recovered exactly once.  Polls of
    training runs fail now and then (``fault_rate``, HTTP 503), and the first
    restore fails once (503) so the executor retries it: neither may cause a
    duplicate or a spurious restore.
    """

    #: The seed of every random choice.
    seed: int
    #: How long the runs train, in seconds.
    duration: float
    #: The simulator.
    fake: FakeTinker
    #: The runs, in order.
    run_ids: list[str]
    #: ``(seconds after the start, run_id)``, in time order.
    plan: list[tuple[float, str]]
    #: When each run was actually corrupted (Trio time).
    corrupted_at: dict[str, float] = attrs.field(factory=dict)
    #: Seconds between two checkpoints of a run (on average).
    checkpoint_every: float = 1.0
    _board: Board | None = None
    _nursery: trio.Nursery | None = None
    _start: float = 0.0

    @classmethod
    def create(
        cls, *, seed: int, runs: int, duration: float, fault_rate: float
    ) -> DemoScenario:
        """Plan a demo: ``runs`` runs, about half corrupted within ``duration``."""
        fake = FakeTinker(seed=seed, api_key=DEMO_API_KEY)
        run_ids = [f"demo-{index + 1}" for index in range(runs)]
        for run_id in run_ids:
            fake.add_run(run_id, checkpoints=[], user_metadata={"demo": 1})
            loss = simulated_loss(random.Random(f"{seed}:{run_id}:loss"), 1)
            fake.add_checkpoint(run_id, "ckpt-0001", metadata=loss)
        if fault_rate:
            fake.add_fault_rate(
                Fault.server_error(503, method="GET", path="/api/v1/training_runs/"),
                fault_rate,
            )
        fake.script(Fault.server_error(503, method="POST", path="/api/v1/load_weights"))
        rng = random.Random(seed)
        victims = rng.sample(run_ids, max(1, (runs + 1) // 2))
        times = sorted(round(rng.uniform(0.15, 0.6) * duration, 2) for _ in victims)
        return cls(
            seed=seed,
            duration=duration,
            fake=fake,
            run_ids=run_ids,
            plan=list(zip(times, victims, strict=True)),
            checkpoint_every=max(0.2, duration / 10),
        )

    def policy(self) -> Policy:
        """Short intervals, so the demo is over in seconds."""
        return Policy(
            enabled=True,
            poll_interval=0.5,
            jitter=0.2,
            backoff=0.5,
            max_backoff=2.0,
            max_attempts=3,
            on_recovery=self._on_recovery,
        )

    def headline(self, url: str) -> str:
        """What the demo is about to do."""
        return (
            f"demo: {len(self.run_ids)} training runs on a simulated Tinker at "
            f"{url}; {len(self.plan)} will be corrupted (seed {self.seed}, "
            f"{self.duration:g} s). Ctrl-C to stop."
        )

    # -- running -------------------------------------------------------------

    def start(self, nursery: trio.Nursery, board: Board) -> None:
        """Start the training jobs and the corruptions in ``nursery``."""
        self._board = board
        self._nursery = nursery
        self._start = board.start
        for run_id in self.run_ids:
            nursery.start_soon(self._train, run_id, None, 2)
        nursery.start_soon(self._corrupt)

    async def _corrupt(self) -> None:
        for at, run_id in self.plan:
            await trio.sleep_until(self._start + at)
            self.fake.corrupt(run_id)
            self.corrupted_at[run_id] = trio.current_time()
            if self._board is not None:
                self._board.note(f"{run_id}: the demo corrupts it now")

    async def _train(self, run_id: str, client: Any, step: int) -> None:
        """Save a checkpoint every second or so until the run breaks.

        An original run's job writes to the simulator directly; a recovered
        run trains on its new ``TrainingClient``, over HTTP.
        """
        rng = random.Random(f"{self.seed}:{run_id}")
        while True:
            await trio.sleep(self.checkpoint_every * rng.uniform(0.7, 1.3))
            if self.fake.run(run_id).corrupted:
                return  # the job died with its run
            name = f"ckpt-{step:04d}"
            if client is None:
                self.fake.add_checkpoint(
                    run_id, name, metadata=simulated_loss(rng, step)
                )
            else:
                try:
                    await client.save_state(name)
                except TinkexRecoveryError as exc:
                    logger.warning("%s: saving %s failed: %s", run_id, name, exc)
                    continue
            step += 1

    def _on_recovery(self, old: Any, new_client: Any, checkpoint: Checkpoint) -> None:
        """Training goes on, on the restored model."""
        model_id = getattr(new_client, "model_id", None)
        if self._nursery is not None and isinstance(model_id, str):
            self._nursery.start_soon(
                self._train, model_id, new_client, _next_index(checkpoint)
            )

    # -- the end -------------------------------------------------------------

    def settled(self) -> bool:
        """Whether every planned corruption happened and its recovery ended."""
        board = self._board
        if board is None or len(self.corrupted_at) < len(self.plan):
            return False
        for run_id in self.corrupted_at:
            rec = board.recovery(run_id)
            if rec is None or rec.pending:
                return False
            if rec.phase == "done" and rec.new_run_id and board.policy.follow_recovered:
                if board.row(rec.new_run_id).polls == 0:
                    return False  # wait until the new run shows up as watched
        return True

    def until(self, view: View) -> str | None:
        """Why the demo should end now, or ``None`` to go on."""
        if view.output_closed:
            return "the output was closed"
        elapsed = trio.current_time() - self._start
        if elapsed < self.duration:
            return None
        if self.settled():
            return "the demo is over"
        if elapsed >= self.duration + DEMO_GRACE:
            return "gave up waiting for recoveries"
        return None

    def verdict(self, board: Board, reason: str) -> tuple[bool, SummaryTable]:
        """Whether every corrupted run was recovered exactly once, and the table."""
        rows: list[list[str]] = []
        styles: list[str] = []
        problems: list[str] = []
        for run_id in self.run_ids:
            row = board.row(run_id)
            at = self.corrupted_at.get(run_id)
            restores = self.fake.restore_count(run_id)
            rec = board.recovery(run_id)
            if at is None:
                outcome, style = "healthy", "green"
                if restores:
                    problems.append(f"{run_id} was never corrupted but restored")
            elif rec is not None and rec.phase == "done":
                outcome, style = f"recovered → {rec.new_run_id}", "bold cyan"
                if restores != 1:
                    problems.append(f"{run_id} restored {restores} times")
            else:
                outcome, style = board.state(row)
                problems.append(f"{run_id} is corrupted and {outcome}")

            def after(t: float | None, at: float | None = at) -> str:
                return "-" if t is None or at is None else f"+{t - at:.2f}s"

            rows.append(
                [
                    run_id,
                    "-" if at is None else f"{at - self._start:.1f}s",
                    after(row.detected_at),
                    after(row.recovered_at),
                    outcome,
                    board.checkpoint(row),
                    str(restores),
                    str(row.polls),
                    str(row.errors),
                ]
            )
            styles.append(style)
        corrupted = len(self.corrupted_at)
        ok = not problems
        polls = sum(row.polls for row in board.rows)
        errors = sum(row.errors for row in board.rows)
        failed = board.executor.statistics().failed if board.executor else 0
        footer = [
            f"{polls} polls, {errors} failed (injected HTTP 503s, never a reason "
            f"to recover); {failed} failed restore attempt(s), retried.",
            f"stopped after {trio.current_time() - self._start:.1f} s: {reason}",
        ]
        if ok:
            footer.append(
                f"OK: every corrupted run recovered exactly once ({corrupted} of "
                f"{len(self.run_ids)} runs corrupted); no healthy run restored."
            )
        else:
            cut_short = reason.startswith(("interrupted", "terminated"))
            verdict = "NOT FINISHED" if cut_short else "FAILED"
            footer.append(f"{verdict}: " + "; ".join(problems))
        table = SummaryTable(
            title=(
                f"demo summary (seed {self.seed}, {len(self.run_ids)} runs, "
                f"{self.duration:g} s)"
            ),
            headers=[
                "run",
                "corrupted",
                "detected",
                "recovered",
                "outcome",
                "checkpoint",
                "restores",
                "polls",
                "errors",
            ],
            rows=rows,
            styles=styles,
            footer=footer,
            wrap=4,
        )
        return ok, table


@attrs.define(eq=False)
class Simulation:
    """The ``simulate`` command's background activity on a served simulator."""

    #: The simulator.
    fake: FakeTinker
    #: Where to report what happens.
    out: TextIO
    #: Seeds the choice of the run to corrupt.
    seed: int = 0
    #: Seconds between new checkpoints of every healthy run (0: never).
    checkpoint_every: float = 0.0
    #: Seconds between two corruptions (0: never).
    corrupt_every: float = 0.0
    #: The runs corrupted so far, in order.
    corrupted: list[str] = attrs.field(factory=list)
    _start: float = 0.0
    _rngs: dict[str, random.Random] = attrs.field(factory=dict)

    def say(self, text: str) -> None:
        """Print a line stamped with the seconds since the start."""
        elapsed = trio.current_time() - self._start
        print(f"[{elapsed:6.1f}s] {text}", file=self.out, flush=True)

    def start(self, nursery: trio.Nursery) -> None:
        """Start checkpointing, corrupting and reporting restores."""
        self._start = trio.current_time()
        if self.checkpoint_every:
            nursery.start_soon(self._checkpoints)
        if self.corrupt_every:
            nursery.start_soon(self._corruptions)
        nursery.start_soon(self._report_restores)

    def healthy(self) -> list[str]:
        """The runs (restored models included) not corrupted now."""
        return [r for r in self.fake.run_ids if not self.fake.run(r).corrupted]

    def add_run(self, run_id: str, checkpoints: int = 2) -> None:
        """Add a run with ``checkpoints`` checkpoints that report a ``loss``."""
        self.fake.add_run(run_id, checkpoints=[])
        for _ in range(checkpoints):
            self.checkpoint(run_id)

    def checkpoint(self, run_id: str) -> None:
        """Save the run's next checkpoint, ``ckpt-NNNN``, with a ``loss``."""
        rng = self._rngs.setdefault(run_id, random.Random(f"{self.seed}:{run_id}"))
        index = len(self.fake.checkpoints(run_id)) + 1
        while True:
            try:
                self.fake.add_checkpoint(
                    run_id, f"ckpt-{index:04d}", metadata=simulated_loss(rng, index)
                )
            except ValueError:  # the name is taken: a client saved it
                index += 1
                continue
            return

    async def _checkpoints(self) -> None:
        next_at = trio.current_time()
        while True:
            next_at += self.checkpoint_every
            await trio.sleep_until(next_at)
            for run_id in self.healthy():
                self.checkpoint(run_id)

    async def _corruptions(self) -> None:
        rng = random.Random(self.seed)
        next_at = trio.current_time()
        while True:
            next_at += self.corrupt_every
            await trio.sleep_until(next_at)
            healthy = self.healthy()
            if not healthy:
                continue
            run_id = rng.choice(healthy)
            self.fake.corrupt(run_id)
            self.corrupted.append(run_id)
            self.say(f"corrupted {run_id}")

    async def _report_restores(self) -> None:
        seen = 0
        while True:
            log = self.fake.restore_log
            for restore in log[seen:]:
                self.say(
                    f"restored {restore.tinker_path} as {restore.model_id}"
                    + (" (with optimizer)" if restore.optimizer else "")
                )
            seen = len(log)
            await trio.sleep(0.2)
