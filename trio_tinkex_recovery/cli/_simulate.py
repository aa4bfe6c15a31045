"""``simulate``: serve the Tinker simulator on a port, with runs that break.

`Simulation` is what happens on the served simulator meanwhile: every
healthy run saves checkpoints, a random one is corrupted now and then,
and each restore is reported.
"""

from __future__ import annotations

import json
import math
import random
from functools import partial
from typing import TYPE_CHECKING, Final

import attrs
import trio

from ..testing import FakeTinker, Fault, serve_fake_tinker
from ..testing._model import LIST_ORDERS
from ._options import number
from ._runtime import EXIT_OK, Command, Parser, Stop, UsageError, run_trio

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._runtime import Output

__all__ = ["COMMAND", "SimulateOptions", "Simulation", "parse", "simulated_loss"]

#: Requests the simulator keeps in its log; older ones are dropped.
REQUEST_LOG_LIMIT: Final = 10_000
#: The most runs ``--runs`` starts with: list pages come from an index,
#: so a page costs the same at this size as at 3 runs.
MAX_RUNS: Final = 1_000_000

_FAULT_KINDS: Final = (
    "5xx status (e.g. 503), 429, 408, another 4xx status, drop, drop-request, "
    "malformed, truncated, missing_fields, latency=SECONDS"
)


def require_hypercorn(command: str) -> None:
    """Fail with a usage error if the simulator cannot be served.

    Raises:
        UsageError: hypercorn (the ``testing`` extra) is not installed.
    """
    try:
        import hypercorn  # noqa: F401
    except ImportError:
        raise UsageError(
            f"{command} needs hypercorn: pip install 'trio-tinkex-recovery[testing]'"
        ) from None


def simulated_loss(rng: random.Random, step: int) -> dict[str, str]:
    """Checkpoint metadata with a falling, noisy ``loss`` (for ``--strategy best``)."""
    return {"loss": f"{2.5 / (1 + 0.3 * step) + rng.uniform(-0.08, 0.08):.4f}"}


def fault(text: str, path: str | None) -> tuple[Fault, float]:
    """A ``--fault KIND:RATE`` as a fault and its rate, e.g. ``503:0.1``.

    Raises:
        ValueError: Not ``KIND:RATE``, an unknown kind, or a bad value.
    """
    kind, sep, rate_text = text.rpartition(":")
    if not sep or not kind:
        raise ValueError(f"expected KIND:RATE (KIND is {_FAULT_KINDS}), got {text!r}")
    rate = number(rate_text, "--fault", float)
    named: dict[str, Callable[..., Fault]] = {
        "drop": partial(Fault.drop, after_action=True),
        "drop-request": partial(Fault.drop, after_action=False),
        "malformed": Fault.malformed,
        "truncated": Fault.truncated,
        "missing_fields": Fault.missing_fields,
        "429": partial(Fault.rate_limit, 1.0),
    }
    if kind in named:
        return named[kind](path=path), rate
    if kind.startswith("latency="):
        seconds = number(kind.partition("=")[2], "--fault", float)
        return Fault.latency(seconds, path=path), rate
    if kind.isdigit():
        return Fault.status_code(int(kind), path=path), rate
    raise ValueError(f"unknown fault kind {kind!r}; use {_FAULT_KINDS}")


@attrs.frozen
class SimulateOptions:
    """What ``simulate`` was asked to do, validated."""

    #: The simulator, with its faults.
    fake: FakeTinker
    #: The address to bind.
    host: str = "127.0.0.1"
    #: The port to bind (0: any free one).
    port: int = 8000
    #: Runs run-1 … run-N to start with.
    runs: int = 3
    #: Seeds the corruptions.
    seed: int = 0
    #: Whether only one key is accepted.
    has_api_key: bool = False
    #: Seconds between new checkpoints of every healthy run (0: never).
    checkpoint_every: float = 0.0
    #: Seconds between two corruptions (0: never).
    corrupt_every: float = 0.0
    #: Seconds until it stops by itself (``None``: until Ctrl-C).
    duration: float | None = None


def parser(prog: str) -> Parser:
    """The parser of ``simulate``'s options."""
    parser = Parser(
        prog=prog,
        description="Serve the Tinker simulator over HTTP so your own code, "
        "this CLI or the official tinker SDK can use it. Runs until Ctrl-C, "
        "SIGTERM or --duration.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument(
        "--port", default="8000", help="port to bind; 0 picks a free one (8000)"
    )
    parser.add_argument(
        "--runs",
        default="3",
        metavar="N",
        help="runs run-1 … run-N to start with, up to 1,000,000 (3)",
    )
    parser.add_argument("--seed", default="0", help="seeds faults and corruptions (0)")
    parser.add_argument(
        "--api-key", metavar="KEY", help="the only key accepted (default: any key)"
    )
    parser.add_argument(
        "--checkpoint-every",
        default="0",
        metavar="S",
        help="save a checkpoint of every healthy run every S seconds (default: off)",
    )
    parser.add_argument(
        "--corrupt-every",
        default="0",
        metavar="S",
        help="corrupt a random healthy run every S seconds (default: off)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND:RATE",
        help=f"inject a fault into a share of requests; KIND is {_FAULT_KINDS}; "
        "repeatable, e.g. --fault 503:0.1 --fault latency=2:0.05",
    )
    parser.add_argument(
        "--fault-path",
        metavar="PREFIX",
        help="inject faults only into requests whose path starts with PREFIX, "
        "e.g. /api/v1/training_runs",
    )
    parser.add_argument(
        "--latency", default="0", metavar="S", help="seconds added to every request"
    )
    parser.add_argument(
        "--list-order",
        choices=LIST_ORDERS,
        default="recent",
        help="the order GET /api/v1/training_runs lists runs in: by last request "
        "(newest first), by id, or shuffled on every request (recent)",
    )
    parser.add_argument(
        "--list-page-max",
        default="100",
        metavar="N",
        help="the most runs one list page holds (100)",
    )
    parser.add_argument(
        "--duration", metavar="S", help="stop after S seconds (default: until Ctrl-C)"
    )
    return parser


def parse(argv: Sequence[str], prog: str = "simulate") -> SimulateOptions:
    """``simulate``'s options from its arguments, the simulator built.

    Raises:
        UsageError: Bad usage, or a value the simulator rejects.
    """
    args = parser(prog).parse_args(argv)
    require_hypercorn("simulate")
    seed = number(args.seed, "--seed", int)
    try:
        fake = FakeTinker(
            seed=seed,
            api_key=args.api_key,
            base_latency=number(args.latency, "--latency", float),
            list_order=args.list_order,
            list_page_max=number(args.list_page_max, "--list-page-max", int, low=1),
            # A simulator left running keeps memory bounded (≈ 17 MB of log).
            request_log_limit=REQUEST_LOG_LIMIT,
            # Runs active now, as far as `watch --all` can tell.
            wall_clock=True,
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(f"argument --latency: {exc}") from None
    for text in args.fault:
        try:
            fake.add_fault_rate(*fault(text, args.fault_path))
        except (TypeError, ValueError) as exc:
            raise UsageError(f"argument --fault: {exc}") from None
    return SimulateOptions(
        fake=fake,
        host=args.host,
        port=number(args.port, "--port", int, low=0, high=65535),
        runs=number(args.runs, "--runs", int, low=0, high=MAX_RUNS),
        seed=seed,
        has_api_key=args.api_key is not None,
        checkpoint_every=number(
            args.checkpoint_every, "--checkpoint-every", float, low=0.0
        ),
        corrupt_every=number(args.corrupt_every, "--corrupt-every", float, low=0.0),
        duration=None
        if args.duration is None
        else number(args.duration, "--duration", float, low=0.0),
    )


def run(options: SimulateOptions, out: Output, err: Output) -> int:
    """Serve until stopped; print how to use it, what happens, and a summary."""
    fake = options.fake
    simulation = Simulation(
        fake=fake,
        out=out,
        seed=options.seed,
        checkpoint_every=options.checkpoint_every,
        corrupt_every=options.corrupt_every,
    )
    run_ids = [f"run-{index + 1}" for index in range(options.runs)]
    for run_id in run_ids:
        simulation.add_run(run_id)

    async def body(stop: Stop) -> None:
        async with trio.open_nursery() as nursery:
            url: str = await nursery.start(
                partial(serve_fake_tinker, fake, host=options.host, port=options.port)
            )
            _introduce(out, url, options, run_ids)
            simulation.start(nursery)
            duration = math.inf if options.duration is None else options.duration
            stop.reason = "--duration reached"
            with trio.move_on_after(duration):
                await out.gone.wait()
                stop.reason = "the output was closed"
            nursery.cancel_scope.cancel()

    async def main() -> int:
        stop = Stop()
        start = trio.current_time()
        try:
            await stop.until(partial(body, stop))
        except BaseException as exc:
            bind, rest = (
                exc.split(OSError)
                if isinstance(exc, BaseExceptionGroup)
                else ((exc, None) if isinstance(exc, OSError) else (None, exc))
            )
            if bind is None or rest is not None:
                raise
            raise UsageError(
                f"cannot serve on {options.host}:{options.port}: {_first_leaf(bind)}"
            ) from None
        restores = fake.restores
        out.line()
        out.line(
            f"served {fake.requests_received} requests; restores: "
            + (", ".join(f"{r} x{n}" for r, n in restores.items()) or "none")
            + "; corrupted: "
            + (", ".join(simulation.corrupted) or "none")
        )
        out.line(f"stopped after {trio.current_time() - start:.1f} s: {stop.reason}")
        return EXIT_OK

    return run_trio(main)


def _introduce(
    out: Output, url: str, options: SimulateOptions, run_ids: Sequence[str]
) -> None:
    shown = ", ".join(run_ids[:5]) + (", …" if len(run_ids) > 5 else "")
    out.line(f"Tinker simulator on {url} (seed {options.seed}); runs: {shown or '-'}")
    out.line("Point a client at it:")
    out.line(f"  export TINKER_BASE_URL={url}")
    if options.has_api_key:
        out.line("  export TINKER_API_KEY=...   (the key given with --api-key)")
    else:
        out.line("  export TINKER_API_KEY=tml-simulator   (any tml- key works)")
    if run_ids:
        out.line(f"  trio-tinkex-recovery watch {' '.join(run_ids[:3])}")
    example = json.dumps({"run_id": run_ids[0] if run_ids else "RUN"})
    out.line("Corrupt a run by hand:")
    out.line(
        f"  curl -X POST {url}/_fake/corrupt "
        f"-H 'content-type: application/json' -d '{example}'"
    )
    out.line("Ctrl-C to stop.")


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


COMMAND: Final = Command(
    name="simulate",
    summary="serve the Tinker simulator on a port",
    parse=parse,
    run=run,
)


@attrs.define(eq=False)
class Simulation:
    """The ``simulate`` command's background activity on a served simulator."""

    #: The simulator.
    fake: FakeTinker
    #: Where to report what happens.
    out: Output
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
        self.out.line(f"[{elapsed:6.1f}s] {text}")

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
        runs = map(self.fake.find_run, self.fake.run_ids)
        return [run.run_id for run in runs if run is not None and not run.corrupted]

    def add_run(self, run_id: str, checkpoints: int = 2) -> None:
        """Add a run with ``checkpoints`` checkpoints that report a ``loss``."""
        self.fake.add_run(run_id, checkpoints=[])
        for _ in range(checkpoints):
            self.checkpoint(run_id)

    def checkpoint(self, run_id: str) -> None:
        """Save the run's next checkpoint, ``ckpt-NNNN``, with a ``loss``."""
        rng = self._rngs.setdefault(run_id, random.Random(f"{self.seed}:{run_id}"))
        run = self.fake.find_run(run_id)
        index = (len(run.live()) if run is not None else 0) + 1
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
