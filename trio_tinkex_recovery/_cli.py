"""The command line: ``watch``, ``demo`` and ``simulate``.

::

    trio-tinkex-recovery watch RUN_ID... [options]  watch runs on Tinker, recover them
    trio-tinkex-recovery demo [options]             simulator + corruptions + recoveries
    trio-tinkex-recovery simulate [options]         serve the simulator on a port

``python -m trio_tinkex_recovery`` is the same; without a command it runs
the demo.  Exit codes: 0 all good; 1 a recovery was exhausted (for the
demo: a corrupted run was not recovered exactly once); 2 bad usage or
configuration, including a missing, malformed or rejected API key (never
shown).  Ctrl-C or SIGTERM stops cleanly: the summary is printed, no
traceback; a second Ctrl-C during shutdown exits at once with 130.

Progress is shown as a live table (rich, the ``cli`` extra) on a terminal,
as plain lines when stdout is not a terminal (or with ``--plain``), or as
telemetry events in JSON lines with ``--json`` (stdout carries nothing
else; the summary goes to stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from ._config import DEFAULT_BASE_URL, Config, mask_key
from ._policy import Best, Latest, Policy, Specific
from ._types import validate_run_id
from ._view import Board, LiveView, View, ViewKind, make_view

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from ._demo import DemoScenario
    from ._monitor import Monitor
    from ._policy import CheckpointStrategy
    from .testing import Fault

__all__ = ["build_parser", "main"]

logger = logging.getLogger("trio_tinkex_recovery.cli")

#: Seconds between two redraws of the view (and checks of the stop conditions).
_TICK: Final = 0.25
#: Exit codes.
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

#: Policy fields as the command line names them, for error messages.
_POLICY_FLAGS: Final = {
    "max_attempts": "--max-attempts",
    "max_backoff": "--max-backoff",
    "backoff": "--backoff",
    "poll_interval": "--poll-interval",
    "jitter": "--jitter",
}
_CONFIG_FLAGS: Final = {
    "api_key": "TINKER_API_KEY",
    "base_url": "the base URL (--base-url or TINKER_BASE_URL)",
    "timeout": "--timeout",
    "max_retries": "--max-retries",
}


class _UsageError(Exception):
    """Bad usage or configuration found after parsing: exit 2 with its message."""


@attrs.define
class _Stop:
    """Why a command stopped, once it has."""

    reason: str | None = None


# -- the parser ------------------------------------------------------------------


def _prog() -> str:
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if argv0 in ("__main__.py", "-m", "-c", ""):
        return "python -m trio_tinkex_recovery"
    return "trio-tinkex-recovery"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be ≥ 0 and finite, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


_FAULT_KINDS: Final = (
    "5xx status (e.g. 503), 429, 408, another 4xx status, drop, drop-request, "
    "malformed, truncated, missing_fields, latency=SECONDS"
)


@attrs.frozen
class _FaultSpec:
    kind: str
    arg: float | None
    rate: float

    def fault(self, path: str | None) -> Fault:
        from .testing import Fault

        if self.kind == "latency":
            assert self.arg is not None
            return Fault.latency(self.arg, path=path)
        if self.kind == "drop":
            return Fault.drop(after_action=True, path=path)
        if self.kind == "drop-request":
            return Fault.drop(after_action=False, path=path)
        if self.kind == "malformed":
            return Fault.malformed(path=path)
        if self.kind == "truncated":
            return Fault.truncated(path=path)
        if self.kind == "missing_fields":
            return Fault.missing_fields(path=path)
        status = int(self.kind)
        if status == 429:
            return Fault.rate_limit(1.0, path=path)
        return Fault.status_code(status, path=path)


def _fault_spec(text: str) -> _FaultSpec:
    """Parse ``KIND:RATE``, e.g. ``503:0.1``, ``drop:0.02``, ``latency=2:0.1``."""
    kind, sep, rate_text = text.rpartition(":")
    if not sep or not kind:
        raise argparse.ArgumentTypeError(
            f"expected KIND:RATE (KIND is {_FAULT_KINDS}), got {text!r}"
        )
    rate = _fraction(rate_text)
    arg: float | None = None
    if kind.startswith("latency="):
        arg = _seconds(kind.partition("=")[2])
        kind = "latency"
    elif kind.isdigit():
        if not 400 <= int(kind) <= 599:
            raise argparse.ArgumentTypeError(
                f"a fault status must be 400-599, got {kind}"
            )
    elif kind not in ("drop", "drop-request", "malformed", "truncated"):
        if kind != "missing_fields":
            raise argparse.ArgumentTypeError(
                f"unknown fault kind {kind!r}; use {_FAULT_KINDS}"
            )
    return _FaultSpec(kind=kind, arg=arg, rate=rate)


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    mode = group.add_mutually_exclusive_group()
    mode.add_argument(
        "--json",
        action="store_true",
        help="write telemetry events as JSON lines on stdout (nothing else); "
        "the summary goes to stderr",
    )
    mode.add_argument(
        "--plain",
        action="store_true",
        help="plain lines instead of the live table (the default when stdout "
        "is not a terminal)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log to stderr: -v logs every poll and event, -vv everything",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``trio-tinkex-recovery`` command."""
    from . import __version__

    defaults = Policy()
    parser = argparse.ArgumentParser(
        prog=_prog(),
        description="Watch Tinker training runs and restart corrupted ones from a "
        "checkpoint; or try it all on a built-in simulator.",
        epilog="Without a command, runs the demo. Exit codes: 0 all good, 1 a run's "
        "recovery was exhausted (demo: a corrupted run not recovered exactly once), "
        "2 bad usage or configuration.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    # -- watch --
    watch = commands.add_parser(
        "watch",
        help="watch runs on Tinker and recover corrupted ones",
        description="Watch training runs on Tinker; restart each corrupted run "
        "from a checkpoint. Needs TINKER_API_KEY. Runs until Ctrl-C, --duration, "
        "or until nothing is left to watch.",
    )
    watch.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="runs to watch")
    conn = watch.add_argument_group("connection")
    conn.add_argument(
        "--base-url",
        metavar="URL",
        help=f"the Tinker service (default: $TINKER_BASE_URL, else {DEFAULT_BASE_URL})",
    )
    conn.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="allow plain http to another machine (sends the key in clear text)",
    )
    conn.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds one HTTP request may take (default: 60)",
    )
    conn.add_argument(
        "--max-retries",
        type=int,
        default=10,
        metavar="N",
        help="HTTP retries of a transient failure (default: 10)",
    )
    pol = watch.add_argument_group("recovery policy")
    pol.add_argument(
        "--poll-interval",
        type=float,
        default=defaults.poll_interval,
        metavar="S",
        help="seconds between two polls of a run (default: %(default)g)",
    )
    pol.add_argument(
        "--jitter",
        type=float,
        default=defaults.jitter,
        metavar="F",
        help="random spread of poll and retry delays, a fraction in [0, 1) "
        "(default: %(default)g)",
    )
    pol.add_argument(
        "--max-attempts",
        type=int,
        default=defaults.max_attempts,
        metavar="N",
        help="restore attempts before a recovery is exhausted (default: %(default)d)",
    )
    pol.add_argument(
        "--backoff",
        type=float,
        default=defaults.backoff,
        metavar="S",
        help="delay before the first retry; it doubles (default: %(default)g)",
    )
    pol.add_argument(
        "--max-backoff",
        type=float,
        default=defaults.max_backoff,
        metavar="S",
        help="the longest retry delay (default: %(default)g)",
    )
    pol.add_argument(
        "--strategy",
        default="latest",
        metavar="latest|best|tinker://…",
        help="the checkpoint to restore: the latest, the best by --metric, "
        "or a given tinker:// path (default: latest)",
    )
    pol.add_argument(
        "--metric",
        metavar="NAME",
        help="with --strategy best: the checkpoint user_metadata entry to rank "
        "by (default: loss)",
    )
    pol.add_argument(
        "--mode",
        choices=("min", "max"),
        help="with --strategy best: lower (min, the default) or higher is better",
    )
    pol.add_argument(
        "--no-fallback",
        action="store_true",
        help="do not try older checkpoints when one cannot be restored",
    )
    pol.add_argument(
        "--no-optimizer",
        action="store_true",
        help="restore the weights only, not the optimizer state",
    )
    pol.add_argument(
        "--no-follow",
        action="store_true",
        help="do not watch the run a recovery creates",
    )
    pol.add_argument(
        "--max-concurrent",
        type=int,
        default=1,
        metavar="K",
        help="restore attempts at once (default: 1)",
    )
    watch.add_argument(
        "--duration",
        type=_seconds,
        metavar="S",
        help="stop after S seconds (default: until Ctrl-C)",
    )
    _add_output_options(watch)
    watch.set_defaults(handler=_watch, parser=watch)

    # -- demo --
    demo = commands.add_parser(
        "demo",
        help="the simulator, runs that break, and their recovery (the default)",
        description="Start the Tinker simulator on loopback, run training runs "
        "that save checkpoints, corrupt some at seeded random times, and "
        "recover them with the monitor through the real HTTP client. Exits 0 "
        "only if every corrupted run was recovered exactly once.",
    )
    demo.add_argument(
        "--runs",
        type=_positive_int,
        default=5,
        metavar="N",
        help="training runs (default: %(default)d; about half are corrupted)",
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=1,
        help="decides which runs break and when (default: %(default)d)",
    )
    demo.add_argument(
        "--duration",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="seconds of training (default: %(default)g)",
    )
    demo.add_argument(
        "--fault-rate",
        type=_fraction,
        default=0.05,
        metavar="P",
        help="share of polls that fail with HTTP 503 (default: %(default)g)",
    )
    demo.add_argument(
        "--max-concurrent",
        type=_positive_int,
        default=2,
        metavar="K",
        help="restore attempts at once (default: %(default)d)",
    )
    _add_output_options(demo)
    demo.set_defaults(handler=_demo, parser=demo)

    # -- simulate --
    sim = commands.add_parser(
        "simulate",
        help="serve the Tinker simulator on a port",
        description="Serve the Tinker simulator over HTTP so your own code, "
        "this CLI or the official tinker SDK can use it. Runs until Ctrl-C "
        "or --duration.",
    )
    sim.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    sim.add_argument(
        "--port",
        type=int,
        default=8000,
        help="port to bind; 0 picks a free one (default: %(default)d)",
    )
    sim.add_argument(
        "--runs",
        type=int,
        default=3,
        metavar="N",
        help="training runs run-1 … run-N to start with (default: %(default)d)",
    )
    sim.add_argument("--seed", type=int, default=0, help="seeds faults and corruptions")
    sim.add_argument(
        "--api-key",
        metavar="KEY",
        help="the only key accepted (default: any key)",
    )
    sim.add_argument(
        "--checkpoint-every",
        type=_seconds,
        default=0.0,
        metavar="S",
        help="save a checkpoint of every healthy run every S seconds (default: off)",
    )
    sim.add_argument(
        "--corrupt-every",
        type=_seconds,
        default=0.0,
        metavar="S",
        help="corrupt a random healthy run every S seconds (default: off)",
    )
    sim.add_argument(
        "--fault",
        type=_fault_spec,
        action="append",
        default=[],
        metavar="KIND:RATE",
        help=f"inject a fault into a share of requests; KIND is {_FAULT_KINDS}; "
        "repeatable, e.g. --fault 503:0.1 --fault latency=2:0.05",
    )
    sim.add_argument(
        "--fault-path",
        metavar="PREFIX",
        help="inject faults only into requests whose path starts with PREFIX, "
        "e.g. /api/v1/training_runs",
    )
    sim.add_argument(
        "--latency",
        type=_seconds,
        default=0.0,
        metavar="S",
        help="seconds added to every request (default: 0)",
    )
    sim.add_argument(
        "--duration",
        type=_seconds,
        metavar="S",
        help="stop after S seconds (default: until Ctrl-C)",
    )
    sim.set_defaults(handler=_simulate, parser=sim)
    return parser


# -- turning options into library objects ----------------------------------------


def _strategy(args: argparse.Namespace) -> CheckpointStrategy:
    text: str = args.strategy
    if text == "best":
        return Best(metric=args.metric or "loss", mode=args.mode or "min")
    if args.metric is not None or args.mode is not None:
        raise _UsageError("--metric and --mode apply only to --strategy best")
    if text == "latest":
        return Latest()
    if text.startswith("tinker://"):
        try:
            return Specific(text)
        except ValueError as exc:
            raise _UsageError(f"--strategy: {exc}") from None
    raise _UsageError(
        f"--strategy must be 'latest', 'best' or a tinker:// path, got {text!r}"
    )


def _policy(args: argparse.Namespace) -> Policy:
    strategy = _strategy(args)
    try:
        return Policy(
            enabled=True,
            max_attempts=args.max_attempts,
            backoff=args.backoff,
            max_backoff=args.max_backoff,
            poll_interval=args.poll_interval,
            jitter=args.jitter,
            checkpoint_strategy=strategy,
            fallback=not args.no_fallback,
            restore_optimizer=not args.no_optimizer,
            follow_recovered=not args.no_follow,
        )
    except (TypeError, ValueError) as exc:
        message = str(exc)
        for field, flag in _POLICY_FLAGS.items():
            message = message.replace(f"Policy.{field}", flag)
        raise _UsageError(message) from None


def _config(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {
        "timeout": args.timeout,
        "max_retries": args.max_retries,
        "allow_insecure_http": args.allow_insecure_http,
    }
    if args.base_url is not None:
        overrides["base_url"] = args.base_url
    try:
        return Config.from_env(**overrides)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        key = os.environ.get("TINKER_API_KEY", "")
        if key:  # Config never shows the key; make doubly sure.
            message = message.replace(key, mask_key(key))
        if message == "TINKER_API_KEY is not set":
            message = (
                "TINKER_API_KEY is not set: export your Tinker API key "
                "(it starts with 'tml-')"
            )
        for field, name in _CONFIG_FLAGS.items():
            message = message.replace(f"Config.{field}", name)
        message = message.replace("allow_insecure_http=True", "--allow-insecure-http")
        raise _UsageError(message) from None


def _view_kind(args: argparse.Namespace) -> ViewKind:
    if args.json:
        return "json"
    if args.plain or not sys.stdout.isatty():
        return "lines"
    return "live"


def _configure_logging(verbosity: int, view: View) -> None:
    """No stray log output unless asked; ``-v`` polls and events, ``-vv`` all."""
    package = logging.getLogger("trio_tinkex_recovery")
    package.addHandler(logging.NullHandler())  # no "last resort" output
    if verbosity <= 0:
        return
    handler: logging.Handler
    if isinstance(view, LiveView):
        from rich.logging import RichHandler

        handler = RichHandler(console=view.console, show_path=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        )
    package.addHandler(handler)
    package.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)
    logger.setLevel(logging.DEBUG)


# -- the Trio side ---------------------------------------------------------------


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is Ctrl-C, possibly wrapped in exception groups."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(KeyboardInterrupt)
        return rest is None
    return False


def _run_trio(main: Callable[[], Awaitable[int]]) -> int:
    """``trio.run(main)``; a Ctrl-C that gets through ends quietly (130)."""
    try:
        return trio.run(main)
    except BaseException as exc:
        if _interrupted(exc):
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        raise


async def _on_signal(stop: _Stop, scope: trio.CancelScope) -> None:
    signals = [signal.SIGINT]
    if hasattr(signal, "SIGTERM"):
        signals.append(signal.SIGTERM)
    with trio.open_signal_receiver(*signals) as received:
        async for signum in received:
            sigint = signum == signal.SIGINT
            stop.reason = "interrupted (Ctrl-C)" if sigint else "terminated (SIGTERM)"
            scope.cancel()
            return


async def _until_stopped(body: Callable[[], Awaitable[None]], stop: _Stop) -> None:
    """Run ``body``; Ctrl-C or SIGTERM cancels it and records why."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_on_signal, stop, nursery.cancel_scope)
        await body()
        nursery.cancel_scope.cancel()


async def _feed_events(
    monitor: Monitor,
    board: Board,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with monitor.subscribe(max_buffer=4096) as events:
        task_status.started()
        async for event in events:
            board.on_event(event)


async def _supervise(
    monitor: Monitor,
    board: Board,
    *,
    until: Callable[[], str | None],
    deadline: float,
) -> str:
    """Redraw the view until ``until`` gives a reason to stop, or ``deadline``."""
    with trio.move_on_at(deadline):
        while True:
            board.view.tick(monitor.statistics())
            reason = until()
            if reason is not None:
                return reason
            await trio.sleep(_TICK)
    board.view.tick(monitor.statistics())
    return "--duration reached"


async def _monitor_runs(
    *,
    config: Config,
    policy: Policy,
    max_concurrent: int,
    run_ids: Sequence[str],
    board: Board,
    headline: str,
    until: Callable[[Monitor], str | None],
    duration: float | None,
    stop: _Stop,
    scenario: DemoScenario | None = None,
) -> None:
    """Watch ``run_ids`` through the native client until told to stop."""
    from ._client import open_service_client
    from ._monitor import open_monitor

    async with (
        open_service_client(config) as service,
        open_monitor(
            policy=policy,
            config=config,
            service=service,
            rest_for_service=board.rest_for_service,
            max_concurrent=max_concurrent,
        ) as monitor,
    ):
        board.executor = monitor.executor
        async with trio.open_nursery() as nursery:
            await nursery.start(_feed_events, monitor, board)
            board.start = trio.current_time()
            board.view.open(headline)
            for run_id in run_ids:
                board.add(run_id)
                await monitor.monitor_run(run_id)
            if scenario is not None:
                scenario.start(nursery, board)
            stop.reason = await _supervise(
                monitor,
                board,
                until=partial(until, monitor),
                deadline=math.inf if duration is None else board.start + duration,
            )
            nursery.cancel_scope.cancel()


# -- watch -----------------------------------------------------------------------


def _nothing_left(board: Board, monitor: Monitor) -> str | None:
    if board.fatal is not None:
        return "Tinker rejected the API key"
    if board.view.output_closed:
        return "the output was closed"
    if not monitor.monitored_runs and monitor.statistics().in_progress == 0:
        return "nothing left to watch"
    return None


def _watch(args: argparse.Namespace) -> int:
    run_ids: list[str] = []
    for run_id in args.run_ids:
        try:
            validate_run_id(run_id)
        except ValueError as exc:
            raise _UsageError(f"bad RUN_ID {run_id[:80]!r}: {exc}") from None
        if run_id not in run_ids:
            run_ids.append(run_id)
    if args.max_concurrent < 1:
        raise _UsageError(f"--max-concurrent must be ≥ 1, got {args.max_concurrent}")
    policy = _policy(args)
    config = _config(args)
    kind = _view_kind(args)
    view = make_view(kind, title=f"watching {len(run_ids)} run(s) on {config.base_url}")
    _configure_logging(args.verbose, view)
    headline = (
        f"watching {len(run_ids)} run(s) on {config.base_url}: poll every "
        f"{policy.poll_interval:g} s, strategy {policy.checkpoint_strategy}, "
        f"up to {policy.max_attempts} attempt(s). Ctrl-C to stop."
    )

    async def main() -> int:
        board = Board(policy=policy, view=view)
        stop = _Stop()
        body = partial(
            _monitor_runs,
            config=config,
            policy=policy,
            max_concurrent=args.max_concurrent,
            run_ids=run_ids,
            board=board,
            headline=headline,
            until=partial(_nothing_left, board),
            duration=args.duration,
            stop=stop,
        )
        try:
            await _until_stopped(body, stop)
        finally:
            elapsed = trio.current_time() - board.start
            view.close(
                board.summary(
                    title="summary",
                    footer=[
                        _totals(board),
                        f"stopped after {elapsed:.1f} s: {stop.reason or 'error'}",
                    ],
                )
            )
        if board.fatal is not None:
            status = getattr(board.fatal, "status", None)
            raise _UsageError(
                f"Tinker rejected the API key (HTTP {status}); check TINKER_API_KEY"
            )
        return EXIT_FAILED if board.exhausted() else EXIT_OK

    return _run_trio(main)


def _totals(board: Board) -> str:
    states = [board.phase(row) for row in board.rows]
    counts = {s: states.count(s) for s in dict.fromkeys(states)}
    parts = ", ".join(f"{n} {s}" for s, n in counts.items())
    polls = sum(row.polls for row in board.rows)
    errors = sum(row.errors for row in board.rows)
    return f"{len(states)} run(s): {parts}; {polls} polls, {errors} failed"


# -- demo ------------------------------------------------------------------------


def _require_hypercorn(command: str) -> None:
    try:
        import hypercorn  # noqa: F401
    except ImportError:
        raise _UsageError(
            f"{command} needs hypercorn: pip install 'trio-tinkex-recovery[testing]'"
        ) from None


def _demo(args: argparse.Namespace) -> int:
    _require_hypercorn("the demo")
    if args.duration <= 0:
        raise _UsageError("--duration must be > 0")
    if args.runs > 100:
        raise _UsageError(f"--runs must be ≤ 100, got {args.runs}")
    from ._demo import DEMO_API_KEY, DemoScenario
    from .testing import serve_fake_tinker

    scenario = DemoScenario.create(
        seed=args.seed,
        runs=args.runs,
        duration=args.duration,
        fault_rate=args.fault_rate,
    )
    policy = scenario.policy()
    view = make_view(_view_kind(args), title=f"demo (seed {args.seed})")
    _configure_logging(args.verbose, view)

    async def main() -> int:
        board = Board(policy=policy, view=view)
        stop = _Stop()
        ok = False
        async with trio.open_nursery() as server:
            url: str = await server.start(serve_fake_tinker, scenario.fake)
            # HTTP retries are off so that injected faults reach the monitor
            # and the executor, where the demo shows what they do with them.
            config = Config(api_key=DEMO_API_KEY, base_url=url, max_retries=0)
            body = partial(
                _monitor_runs,
                config=config,
                policy=policy,
                max_concurrent=args.max_concurrent,
                run_ids=scenario.run_ids,
                board=board,
                headline=scenario.headline(url),
                until=lambda monitor: scenario.until(board.view),
                duration=None,
                stop=stop,
                scenario=scenario,
            )
            try:
                await _until_stopped(body, stop)
            finally:
                ok, table = scenario.verdict(board, stop.reason or "error")
                view.close(table)
                server.cancel_scope.cancel()
        return EXIT_OK if ok else EXIT_FAILED

    return _run_trio(main)


# -- simulate --------------------------------------------------------------------


def _simulate(args: argparse.Namespace) -> int:
    _require_hypercorn("simulate")
    if not 0 <= args.port <= 65535:
        raise _UsageError(f"--port must be 0-65535, got {args.port}")
    if not 0 <= args.runs <= 10_000:
        raise _UsageError(f"--runs must be 0-10000, got {args.runs}")
    from ._demo import Simulation
    from .testing import FakeTinker, serve_fake_tinker

    try:
        fake = FakeTinker(
            seed=args.seed, api_key=args.api_key, base_latency=args.latency
        )
        for spec in args.fault:
            fake.add_fault_rate(spec.fault(args.fault_path), spec.rate)
    except (TypeError, ValueError) as exc:
        raise _UsageError(str(exc)) from None
    out = sys.stdout
    simulation = Simulation(
        fake=fake,
        out=out,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        corrupt_every=args.corrupt_every,
    )
    run_ids = [f"run-{index + 1}" for index in range(args.runs)]
    for run_id in run_ids:
        simulation.add_run(run_id)

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    async def body(stop: _Stop) -> None:
        async with trio.open_nursery() as nursery:
            url: str = await nursery.start(
                partial(serve_fake_tinker, fake, host=args.host, port=args.port)
            )
            shown = ", ".join(run_ids[:5]) + (", …" if len(run_ids) > 5 else "")
            say(f"Tinker simulator on {url} (seed {args.seed}); runs: {shown or '-'}")
            say("Point a client at it:")
            say(f"  export TINKER_BASE_URL={url}")
            if args.api_key:
                say("  export TINKER_API_KEY=...   (the key given with --api-key)")
            else:
                say("  export TINKER_API_KEY=tml-simulator   (any tml- key works)")
            if run_ids:
                say(f"  trio-tinkex-recovery watch {' '.join(run_ids[:3])}")
            example = json.dumps({"run_id": run_ids[0] if run_ids else "RUN"})
            say("Corrupt a run by hand:")
            say(
                f"  curl -X POST {url}/_fake/corrupt "
                f"-H 'content-type: application/json' -d '{example}'"
            )
            say("Ctrl-C to stop.")
            simulation.start(nursery)
            if args.duration is not None:
                await trio.sleep(args.duration)
                stop.reason = "--duration reached"
                nursery.cancel_scope.cancel()

    async def main() -> int:
        stop = _Stop()
        start = trio.current_time()
        try:
            await _until_stopped(partial(body, stop), stop)
        except BaseException as exc:
            bind, rest = (
                exc.split(OSError)
                if isinstance(exc, BaseExceptionGroup)
                else ((exc, None) if isinstance(exc, OSError) else (None, exc))
            )
            if bind is None or rest is not None:
                raise
            raise _UsageError(
                f"cannot serve on {args.host}:{args.port}: {_first_leaf(bind)}"
            ) from None
        restores = fake.restores
        say()
        say(
            f"served {len(fake.requests)} requests; restores: "
            + (", ".join(f"{r} x{n}" for r, n in restores.items()) or "none")
            + "; corrupted: "
            + (", ".join(simulation.corrupted) or "none")
        )
        say(f"stopped after {trio.current_time() - start:.1f} s: {stop.reason}")
        return EXIT_OK

    return _run_trio(main)


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


# -- entry point -----------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).  None at all runs
            the demo.

    Returns:
        0 all good; 1 a recovery was exhausted (demo: a corrupted run not
        recovered exactly once); 2 bad usage or configuration; 130 a second
        Ctrl-C, or one before the command started.
    """
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:  # never die on a character the terminal lacks
            reconfigure(errors="replace")
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:  # before Trio runs, or after it
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: list[str]) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv or ["demo"])
    if args.command is None:
        parser.error("a command is required: watch, demo or simulate")
    subparser: argparse.ArgumentParser = args.parser
    if unknown:
        subparser.error(f"unrecognized arguments: {' '.join(unknown)}")
    command: Callable[[argparse.Namespace], int] = args.handler
    try:
        return command(args)
    except _UsageError as exc:
        print(f"{subparser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
