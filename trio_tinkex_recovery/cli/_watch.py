"""``watch RUN_ID...`` / ``watch --all``: watch runs on Tinker and recover
corrupted ones.

`monitor_runs` is the part the demo shares: it runs the monitor, feeds
its telemetry to a `Board` and redraws the view until told to stop.
"""

from __future__ import annotations

import math
from contextlib import AsyncExitStack
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs
import trio

from .._engine._monitor import open_monitor
from .._engine._polling import POLLING_MODES, PollingMode
from .._errors import TinkerAPIError
from .._store import (
    DEFAULT_LEASE,
    StoreError,
    default_state_path,
    is_dsn,
    open_store,
)
from .._types import validate_run_id
from ._board import Board
from ._notify import add_notify_options, build_notifiers
from ._notify import summary as notify_summary
from ._options import (
    MetricsOptions,
    OutputOptions,
    add_config_options,
    add_policy_options,
    add_view_options,
    build_config,
    build_policy,
    build_view,
    default_help,
    number,
)
from ._runtime import EXIT_FAILED, EXIT_OK, Command, Parser, Stop, UsageError, run_trio
from ._view import open_view

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence

    from .._config import Config
    from .._engine._monitor import Monitor
    from .._notify import Notifier
    from .._policy import Policy
    from .._protocols import ServiceProtocol
    from .._store import Store
    from ._runtime import Output

__all__ = ["COMMAND", "WatchOptions", "monitor_runs", "parse"]

#: Seconds between two redraws of the view (and checks of the stop conditions).
TICK: Final = 0.25
#: Events the view's subscription holds before it drops (and counts) them.
EVENT_BUFFER: Final = 65_536


@attrs.frozen
class WatchOptions:
    """What ``watch`` was asked to do, validated."""

    #: The runs named on the command line, without repeats.
    run_ids: tuple[str, ...]
    #: How to recover them.
    policy: Policy
    #: Where Tinker is, and the key.
    config: Config
    #: Restore attempts at once.
    max_concurrent: int = 1
    #: Seconds until it stops by itself (``None``: until Ctrl-C).
    duration: float | None = None
    #: How progress is shown.
    output: OutputOptions = attrs.field(factory=OutputOptions)
    #: The journal's file or ``postgresql://`` DSN (``None``: in memory only,
    #: ``--no-state``).
    state: str | None = None
    #: Seconds a replica's lease on a run lasts (with a DSN).
    lease: float = DEFAULT_LEASE
    #: Where metrics and probes are served (``None``: nowhere).
    metrics: MetricsOptions | None = None
    #: How runs are polled: ``auto``, ``list`` or ``each``.
    polling: PollingMode = "auto"
    #: Watch every active run too (``--all``), and new ones as they appear.
    all_runs: AllRuns | None = None
    #: Who is told of the chosen events (``--notify``), not started yet.
    notifiers: tuple[Notifier, ...] = ()


@attrs.frozen
class AllRuns:
    """``watch --all``: what `Monitor.monitor_all` is asked to watch."""

    #: ``owned`` or ``accessible``.
    scope: Literal["owned", "accessible"] = "owned"
    #: Only the runs of this project.
    project_id: str | None = None
    #: Leave out runs idle for longer than this, in seconds.
    active_within: float = 86400.0
    #: Restore runs found already corrupted too.
    recover_existing: bool = False


def parser(prog: str) -> Parser:
    """The parser of ``watch``'s options."""
    parser = Parser(
        prog=prog,
        description="Watch training runs on Tinker; restart each corrupted run "
        "from a checkpoint. The restored model belongs to this watcher's own "
        "session, not to your training script: watch is for programs that "
        "follow on_recovery; to keep a training script going, use 'run -- "
        "COMMAND'. Needs TINKER_API_KEY. Runs until Ctrl-C, SIGTERM, "
        "--duration, or until nothing is left to watch. The runs and their "
        "recoveries are kept in a state file, so a watcher started again (after "
        "a crash too) watches them again and never restores a run twice. Exit "
        "status: 0 all good (an interrupted recovery included), 1 a recovery "
        "was exhausted, 2 bad usage or configuration.",
    )
    parser.add_argument(
        "run_ids",
        nargs="*",
        metavar="RUN_ID",
        help="runs to watch, added to those the state file holds (none: watch "
        "what it holds)",
    )
    every = parser.add_argument_group("every run")
    every.add_argument(
        "--all",
        dest="all_runs",
        action="store_true",
        help="watch every run the key can see that is training, and each new "
        "one as it appears (a run already corrupted is reported, not restored)",
    )
    every.add_argument(
        "--scope",
        choices=("owned", "accessible"),
        help="with --all: the key's own runs, or every run it may read (owned)",
    )
    every.add_argument("--project", metavar="ID", help="with --all: only this project")
    every.add_argument(
        "--active-within",
        metavar="S",
        help="with --all: leave out runs idle for more than S seconds "
        f"{default_help(AllRuns, 'active_within')}",
    )
    every.add_argument(
        "--recover-existing",
        action="store_true",
        help="with --all: restore runs found already corrupted too",
    )
    parser.add_argument(
        "--polling",
        choices=POLLING_MODES,
        help="poll runs one GET each, or by pages of the run list (list), or "
        "whichever needs fewer requests (auto, the default)",
    )
    state = parser.add_argument_group("state")
    where = state.add_mutually_exclusive_group()
    where.add_argument(
        "--state",
        metavar="PATH_OR_DSN",
        help=f"the state file (default: {default_state_path()}), or a "
        "postgresql:// DSN shared by any number of replicas",
    )
    where.add_argument(
        "--no-state",
        action="store_true",
        help="keep nothing: a restart forgets the runs and their recoveries",
    )
    state.add_argument(
        "--lease",
        metavar="S",
        help="with a postgresql:// state: seconds a replica's lease on a run "
        "lasts, renewed every S/3; a replica that dies has its runs polled "
        "again within S + S/3 + the poll interval "
        + default_help(WatchOptions, "lease"),
    )
    add_config_options(parser.add_argument_group("connection"))
    policy = parser.add_argument_group("recovery policy")
    add_policy_options(policy)
    policy.add_argument(
        "--max-concurrent",
        metavar="K",
        help=f"restore attempts at once {default_help(WatchOptions, 'max_concurrent')}",
    )
    parser.add_argument(
        "--duration", metavar="S", help="stop after S seconds (default: until Ctrl-C)"
    )
    add_view_options(parser)
    add_notify_options(parser)
    return parser


def parse(argv: Sequence[str], prog: str = "watch") -> WatchOptions:
    """``watch``'s options from its arguments.

    Raises:
        UsageError: Bad usage, a bad run id, or a value the policy or the
            config rejects (the message names the option).
    """
    args = parser(prog).parse_args(argv)
    run_ids: dict[str, None] = {}
    for run_id in args.run_ids:
        try:
            validate_run_id(run_id)
        except ValueError as exc:
            raise UsageError(f"argument RUN_ID: {run_id[:80]!r}: {exc}") from None
        run_ids[run_id] = None
    state = None if args.no_state else (args.state or default_state_path())
    if not run_ids and state is None and not args.all_runs:
        raise UsageError(
            "name the runs to watch, or --all (with --no-state nothing is stored)"
        )
    given: dict[str, Any] = {}
    if args.polling is not None:
        given["polling"] = args.polling
    if args.all_runs:
        given["all_runs"] = _all_runs(args)
    else:
        for flag, dest in _WITH_ALL:
            if getattr(args, dest) not in (None, False):
                raise UsageError(f"argument {flag}: only with --all")
    if args.max_concurrent is not None:
        given["max_concurrent"] = number(
            args.max_concurrent, "--max-concurrent", int, low=1
        )
    if args.duration is not None:
        given["duration"] = number(args.duration, "--duration", float, low=0.0)
    if args.lease is not None:
        if state is None or not is_dsn(state):
            raise UsageError("argument --lease: only with --state postgresql://...")
        given["lease"] = number(args.lease, "--lease", float, low=1.0)
    policy, config = build_policy(args), build_config(args)
    output, metrics = build_view(args)
    return WatchOptions(
        run_ids=tuple(run_ids),
        policy=policy,
        config=config,
        output=output,
        state=state,
        metrics=metrics,
        notifiers=build_notifiers(args),
        **given,
    )


#: The options that only make sense with ``--all``, and their dest.
_WITH_ALL: Final = (
    ("--scope", "scope"),
    ("--project", "project"),
    ("--active-within", "active_within"),
    ("--recover-existing", "recover_existing"),
)


def _all_runs(args: argparse.Namespace) -> AllRuns:
    given: dict[str, Any] = {"recover_existing": args.recover_existing}
    if args.scope is not None:
        given["scope"] = args.scope
    if args.project is not None:
        if not args.project:
            raise UsageError("argument --project: must not be empty")
        given["project_id"] = args.project
    if args.active_within is not None:
        given["active_within"] = number(
            args.active_within, "--active-within", float, above=0.0
        )
    return AllRuns(**given)


def run(options: WatchOptions, out: Output, err: Output) -> int:
    """Watch until stopped; 1 if a recovery was exhausted."""
    policy, config = options.policy, options.config
    view = open_view(
        options.output,
        title=f"watching runs on {config.base_url}",
        out=out,
        err=err,
    )
    headline = (
        f"watching on {config.base_url}: poll every "
        f"{policy.poll_interval:g} s, strategy {policy.checkpoint_strategy}, "
        f"up to {policy.max_attempts} attempt(s). Ctrl-C to stop."
    )

    replicas = options.state is not None and is_dsn(options.state)

    async def main() -> int:
        async with AsyncExitStack() as stack:
            try:
                store = await stack.enter_async_context(
                    open_store(options.state, lease=options.lease)
                )
                stored = len((await store.load()).runs)
            except StoreError as exc:
                raise UsageError(str(exc)) from None
            if (
                not options.run_ids
                and not stored
                and not replicas
                and options.all_runs is None
            ):
                raise UsageError(
                    f"nothing to watch: the state file {options.state} holds no "
                    "run; name the runs to watch"
                )
            return await watch(store, stored)

    async def watch(store: Store, stored: int) -> int:
        board = Board(policy=policy, view=view)
        stop = Stop()
        if replicas:
            # One of any number of replicas: it waits for runs to claim.
            where = (
                f" Replica {getattr(store, 'replica_id', '?')} on {store.location} "
                f"({stored} run(s) there), lease {options.lease:g} s."
            )
        else:
            where = f" {stored} run(s) came from {store.location}." if stored else ""
        body = partial(
            monitor_runs,
            config=config,
            policy=policy,
            max_concurrent=options.max_concurrent,
            run_ids=options.run_ids,
            board=board,
            headline=headline + where,
            until=partial(
                _nothing_left, board, wait=replicas or options.all_runs is not None
            ),
            duration=options.duration,
            stop=stop,
            store=store,
            metrics=options.metrics,
            polling=options.polling,
            all_runs=options.all_runs,
            notifiers=options.notifiers,
        )
        try:
            await stop.until(body)
        finally:
            elapsed = trio.current_time() - board.start
            view.close(
                board.summary(
                    title="summary",
                    footer=[
                        board.totals(),
                        *notify_summary(options.notifiers),
                        f"stopped after {elapsed:.1f} s: {stop.reason or 'error'}",
                    ],
                )
            )
        if board.fatal is not None:
            status = getattr(board.fatal, "status", None)
            raise UsageError(
                f"Tinker rejected the API key (HTTP {status}); check TINKER_API_KEY"
            )
        return EXIT_FAILED if board.exhausted() else EXIT_OK

    return run_trio(main)


COMMAND: Final = Command(
    name="watch",
    summary="watch runs on Tinker and recover corrupted ones",
    parse=parse,
    run=run,
)


def _nothing_left(board: Board, monitor: Monitor, *, wait: bool) -> str | None:
    if board.fatal is not None:
        return "Tinker rejected the API key"
    if board.view.output_closed:
        return "the output was closed"
    if wait:
        return None  # new runs may appear (--all), or come with leases (replicas)
    if not monitor.monitored_runs and monitor.statistics().in_progress == 0:
        return "nothing left to watch"
    return None


# -- what watch and the demo share ---------------------------------------------


async def monitor_runs(
    *,
    config: Config | None = None,
    service: ServiceProtocol | None = None,
    policy: Policy,
    max_concurrent: int,
    run_ids: Sequence[str],
    board: Board,
    headline: str,
    until: Callable[[Monitor], str | None],
    duration: float | None,
    stop: Stop,
    beside: Callable[[trio.Nursery], None] | None = None,
    store: Store | None = None,
    metrics: MetricsOptions | None = None,
    polling: PollingMode = "auto",
    all_runs: AllRuns | None = None,
    notifiers: Sequence[Notifier] = (),
) -> None:
    """Watch ``run_ids`` until ``until`` gives a reason to stop, or ``duration``.

    The board follows the monitor through its telemetry, its recovery
    records and its statistics, also once the monitor has closed (so a
    recovery cut short shows as interrupted).

    Args:
        config: Where Tinker is: the monitor opens a native client for it.
        service: Polls and restores the runs, instead (e.g. a fake).
        policy: How to recover them.
        max_concurrent: Restore attempts at once.
        run_ids: The runs to watch.
        board: Gathers what happens, for the view.
        headline: What the view says first.
        until: Called every tick: a reason to stop, or ``None``.
        duration: Seconds until it stops by itself (``None``: never).
        stop: Where the reason it stopped is recorded.
        beside: Starts the caller's own tasks next to the monitor.
        store: The journal: its runs are watched too, its pending
            recoveries resumed.
        metrics: Where to serve the monitor's metrics and probes, from the
            start, before any run is watched (the headline gives the URL).
        polling: How the monitor polls runs.
        all_runs: Watch every active run too (`Monitor.monitor_all`).
        notifiers: Started next to the monitor, before any run is watched.

    Raises:
        UsageError: The metrics address cannot be bound, or ``all_runs``
            and the service cannot list runs.
    """
    monitor: Monitor | None = None
    try:
        async with (
            open_monitor(
                policy=policy,
                config=config,
                service=service,
                max_concurrent=max_concurrent,
                store=store,
                polling=polling,
            ) as monitor,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(_feed, monitor, board)
            for notifier in notifiers:
                await nursery.start(notifier.run, monitor)
            if metrics is not None:
                url = await _serve_metrics(nursery, monitor, metrics, notifiers)
                headline = f"{headline} Metrics on {url}/metrics."
            board.start = trio.current_time()
            board.view.open(headline)
            pending = {r for r, s in monitor.executor.recoveries.items() if s.pending}
            for run_id in sorted({*monitor.monitored_runs, *pending}):  # journal's
                board.add(run_id)
            for run_id in run_ids:
                board.add(run_id)
                await monitor.monitor_run(run_id)
            if all_runs is not None:
                await _monitor_all(monitor, board, all_runs)
            if beside is not None:
                beside(nursery)
            deadline = math.inf if duration is None else board.start + duration
            stop.reason = await _supervise(monitor, board, until, deadline)
            nursery.cancel_scope.cancel()
    finally:
        if monitor is not None:
            board.update(monitor.executor.recoveries, monitor.statistics())


async def _monitor_all(monitor: Monitor, board: Board, all_runs: AllRuns) -> None:
    """Watch every active run; the board notes how many were found.

    Raises:
        UsageError: The service cannot list runs, or listing failed.
    """
    try:
        await monitor.monitor_all(
            scope=all_runs.scope,
            project_id=all_runs.project_id,
            active_within=all_runs.active_within,
            recover_existing=all_runs.recover_existing,
        )
    except (TypeError, TinkerAPIError) as exc:
        raise UsageError(f"argument --all: cannot list the runs: {exc}") from None
    found = len(monitor.monitored_runs)
    skipped = monitor.statistics().existing_corrupted
    board.note(
        f"--all: watching {found} active run(s)"
        + (f", {skipped} of them already corrupted (not restored)" if skipped else "")
    )


async def _serve_metrics(
    nursery: trio.Nursery,
    monitor: Monitor,
    metrics: MetricsOptions,
    notifiers: Sequence[Notifier] = (),
) -> str:
    """Serve ``monitor``'s metrics and probes in ``nursery``; the base URL."""
    from ..metrics import serve_metrics

    try:
        url: str = await nursery.start(
            partial(
                serve_metrics,
                monitor,
                host=metrics.host,
                port=metrics.port,
                notifiers=notifiers,
            )
        )
    except OSError as exc:
        raise UsageError(
            f"argument --metrics-port: cannot serve on {metrics.host} port "
            f"{metrics.port}: {exc.strerror or exc}"
        ) from None
    return url


async def _feed(
    monitor: Monitor,
    board: Board,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with monitor.subscribe(max_buffer=EVENT_BUFFER) as events:
        task_status.started()
        async for event in events:
            board.on_event(event)


async def _supervise(
    monitor: Monitor,
    board: Board,
    until: Callable[[Monitor], str | None],
    deadline: float,
) -> str:
    """Redraw the view until ``until`` gives a reason to stop, or ``deadline``."""

    def tick() -> None:
        board.update(monitor.executor.recoveries, monitor.statistics())
        board.view.tick(board.stats)

    with trio.move_on_at(deadline):
        while True:
            tick()
            reason = until(monitor)
            if reason is not None:
                return reason
            await trio.sleep(TICK)
    tick()
    return "--duration reached"
