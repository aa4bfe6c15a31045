"""``demo``: the simulator, training runs that break, and their recovery.

The demo serves a `FakeTinker` on loopback, runs training jobs on it that
save checkpoints, corrupts some at seeded times (`DemoScenario`), and
watches them with the monitor through the native HTTP client, exactly as
``watch`` does (`monitor_runs`).  It exits 0 only if every corrupted run
was recovered exactly once.
"""

from __future__ import annotations

import logging
import random
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from .._config import Config
from .._errors import TinkexRecoveryError
from .._policy import Policy
from ..testing import FakeTinker, Fault, serve_fake_tinker
from ._board import Board
from ._options import OutputOptions, add_view_options, build_view, default_help, number
from ._runtime import EXIT_FAILED, EXIT_OK, Command, Parser, Stop, run_trio
from ._simulate import require_hypercorn, simulated_loss
from ._view import SummaryTable, open_view
from ._watch import monitor_runs

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._types import Checkpoint
    from ._options import MetricsOptions
    from ._runtime import Output
    from ._view import View

__all__ = ["COMMAND", "DEMO_API_KEY", "DemoOptions", "DemoScenario", "parse"]

logger = logging.getLogger("trio_tinkex_recovery.cli")

#: The key the demo's simulator accepts (not a secret: it opens nothing real).
DEMO_API_KEY: Final = "tml-demo-0000"
#: Seconds the demo waits, past its duration, for recoveries still running.
DEMO_GRACE: Final = 15.0


@attrs.frozen
class DemoOptions:
    """What ``demo`` was asked to do, validated."""

    #: Training runs (about half are corrupted).
    runs: int = 5
    #: Decides which runs break and when.
    seed: int = 1
    #: Seconds of training.
    duration: float = 10.0
    #: Share of polls that fail with HTTP 503.
    fault_rate: float = 0.05
    #: Restore attempts at once.
    max_concurrent: int = 2
    #: How progress is shown.
    output: OutputOptions = attrs.field(factory=OutputOptions)
    #: Where metrics and probes are served (``None``: nowhere).
    metrics: MetricsOptions | None = None
    #: Then run part 2: a training script kept going by ``run`` (not with
    #: ``--json``, whose stdout carries events only).
    supervise: bool = True


def parser(prog: str) -> Parser:
    """The parser of ``demo``'s options."""
    parser = Parser(
        prog=prog,
        description="Start the Tinker simulator on loopback, run training runs "
        "that save checkpoints, corrupt some at seeded random times, and "
        "recover them with the monitor through the real HTTP client; then run a "
        "training script under 'run', corrupt its run, and resume it from its "
        "newest checkpoint. Exits 0 only if every corrupted run was recovered "
        "exactly once and the script resumed with every step run once.",
    )
    for flag, metavar, text in (
        ("--runs", "N", "training runs, 1-100; about half are corrupted"),
        ("--seed", "N", "decides which runs break and when"),
        ("--duration", "S", "seconds of training"),
        ("--fault-rate", "P", "share of polls that fail with HTTP 503"),
        ("--max-concurrent", "K", "restore attempts at once"),
    ):
        name = flag[2:].replace("-", "_")
        parser.add_argument(
            flag, metavar=metavar, help=f"{text} {default_help(DemoOptions, name)}"
        )
    parser.add_argument(
        "--no-supervise",
        dest="supervise",
        action="store_false",
        help="skip part 2, a training script kept going by 'run'",
    )
    add_view_options(parser, metrics_host=False)
    return parser


def parse(argv: Sequence[str], prog: str = "demo") -> DemoOptions:
    """``demo``'s options from its arguments.

    Raises:
        UsageError: Bad usage or an option out of its range.
    """
    args = parser(prog).parse_args(argv)
    require_hypercorn("the demo")
    given: dict[str, Any] = {}
    for name, kind, bounds in (
        ("runs", int, {"low": 1, "high": 100}),
        ("seed", int, {}),
        ("duration", float, {"above": 0.0}),
        ("fault_rate", float, {"low": 0.0, "high": 1.0}),
        ("max_concurrent", int, {"low": 1}),
    ):
        text = getattr(args, name)
        if text is not None:
            flag = "--" + name.replace("_", "-")
            given[name] = number(text, flag, kind, **bounds)
    output, metrics = build_view(args)
    return DemoOptions(
        **given,
        output=output,
        metrics=metrics,
        supervise=args.supervise and not output.json,
    )


async def _supervise_part(fake: FakeTinker, url: str, out: Output) -> bool:
    """Part 2 (`_demo_run`): a training script kept going by ``run``."""
    from ._demo_run import supervise_part

    policy = Policy(enabled=True, poll_interval=0.2, backoff=0.2, jitter=0.0)
    config = Config(api_key=DEMO_API_KEY, base_url=url)
    return await supervise_part(fake, config=config, policy=policy, out=out)


def run(options: DemoOptions, out: Output, err: Output) -> int:
    """Run the demo; 0 only if every corrupted run was recovered exactly once."""
    scenario = DemoScenario.create(
        seed=options.seed,
        runs=options.runs,
        duration=options.duration,
        fault_rate=options.fault_rate,
    )
    policy = scenario.policy()
    view = open_view(
        options.output, title=f"demo (seed {options.seed})", out=out, err=err
    )

    async def main() -> int:
        board = Board(policy=policy, view=view)
        stop = Stop()
        ok = False
        async with trio.open_nursery() as server:
            url: str = await server.start(serve_fake_tinker, scenario.fake)
            # HTTP retries are off so that injected faults reach the monitor
            # and the executor, where the demo shows what they do with them.
            config = Config(api_key=DEMO_API_KEY, base_url=url, max_retries=0)
            body = partial(
                monitor_runs,
                config=config,
                policy=policy,
                max_concurrent=options.max_concurrent,
                run_ids=scenario.run_ids,
                board=board,
                headline=scenario.headline(url),
                until=lambda monitor: scenario.until(board.view),
                duration=None,
                stop=stop,
                beside=lambda nursery: scenario.start(nursery, board),
                metrics=options.metrics,
            )
            try:
                await stop.until(body)
            finally:
                ok, table = scenario.verdict(board, stop.reason or "error")
                view.close(table)
            try:
                if options.supervise and stop.reason == "the demo is over":
                    ok = await _supervise_part(scenario.fake, url, out) and ok
            finally:
                server.cancel_scope.cancel()
        return EXIT_OK if ok else EXIT_FAILED

    return run_trio(main)


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
                outcome, style = "healthy", "healthy"
                if restores:
                    problems.append(f"{run_id} was never corrupted but restored")
            elif rec is not None and rec.phase == "done":
                outcome, style = f"recovered → {rec.new_run_id}", "recovered"
                if restores != 1:
                    problems.append(f"{run_id} restored {restores} times")
            else:
                outcome, style = board.state(row), board.phase(row)
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
        stats = board.stats
        footer = [
            f"{stats.polls} polls, {stats.poll_errors} failed (injected HTTP 503s, "
            f"never a reason to recover); {stats.failed} failed restore "
            "attempt(s), retried.",
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


COMMAND: Final = Command(
    name="demo",
    summary="the simulator, runs that break, and their recovery (the default)",
    parse=parse,
    run=run,
)
