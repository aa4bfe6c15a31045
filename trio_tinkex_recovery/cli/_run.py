"""``run [options] -- COMMAND [ARG...]``: supervise a training command.

A thin shell over `trio_tinkex_recovery.supervise`: the options become a
policy, a config and the supervisor's own settings; the supervisor's
reports become lines on stderr (``trio-tinkex-recovery[JOB]: …``, or JSON
lines with ``--json``); its result becomes the exit status.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import attrs

from .._supervise import EXIT_EXHAUSTED, JobLockedError, supervise
from ._notify import add_notify_options, build_notifiers
from ._options import (
    add_config_options,
    add_policy_options,
    build_config,
    build_policy,
    number,
)
from ._runtime import Command, Parser, UsageError, configure_logging, run_trio

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._config import Config
    from .._notify import Notifier
    from .._policy import Policy
    from .._supervise import SupervisorEvent
    from ._runtime import Output

__all__ = ["COMMAND", "RunOptions", "parse"]


@attrs.frozen
class RunOptions:
    """What ``run`` was asked to do, validated."""

    #: The training command.
    command: tuple[str, ...]
    policy: Policy
    config: Config
    grace: float = 30.0
    max_restarts: int = 3
    restart_on_error: int = 0
    log_path: str | None = None
    discover: bool = False
    state: str | None = None
    json: bool = False
    #: ``--base-url``, also given to the command as ``TINKER_BASE_URL``.
    base_url: str | None = None
    #: Restart the command when its run stalls (needs ``--stall-timeout``).
    restart_on_stall: bool = False
    #: Who is told of the chosen events (``--notify``), not started yet.
    notifiers: tuple[Notifier, ...] = ()


def parser(prog: str) -> Parser:
    """The parser of ``run``'s options (the command comes after ``--``)."""
    parser = Parser(
        prog=prog,
        usage=f"{prog} [options] -- COMMAND [ARG...]",
        description="Run a training command and keep it training: when the run "
        "it trains is corrupted, stop the command and start it again, telling it "
        "(TTR_RESUME_PATH, trio_tinkex_recovery.supervised) which checkpoint to "
        "resume from, so the restored model is the one it trains. Needs "
        "TINKER_API_KEY. Exit status: the command's own (128+N if killed by "
        f"signal N); {EXIT_EXHAUSTED} when the restarts are used up (the command "
        "stays stopped); 2 bad usage or configuration.",
    )
    job = parser.add_argument_group("supervision")
    job.add_argument(
        "--grace",
        metavar="S",
        help="seconds between SIGTERM and SIGKILL when stopping the command "
        "(default: 30)",
    )
    job.add_argument(
        "--max-restarts",
        metavar="N",
        help="restarts over the job's life, whatever their reason (default: 3)",
    )
    job.add_argument(
        "--restart-on-error",
        metavar="N",
        help="restart after an error exit whose run is healthy, up to N times "
        "(default: 0; a bug restarted is a loop)",
    )
    job.add_argument(
        "--log-path",
        metavar="DIR",
        help="tinker-cookbook's log folder: its checkpoints.jsonl names the run "
        "(pass behavior_if_log_dir_exists=resume to the script)",
    )
    job.add_argument(
        "--discover",
        action="store_true",
        help="take any run of the key's owner first seen after the command "
        "started as its run (only when one job uses the key)",
    )
    job.add_argument(
        "--state",
        metavar="PATH",
        help="the job's state file (default: "
        "$XDG_STATE_HOME/trio-tinkex-recovery/jobs/JOB.json)",
    )
    job.add_argument(
        "--restart-on-stall",
        action="store_true",
        help="restart the command the corruption way when its run stalls "
        "(needs --stall-timeout)",
    )
    job.add_argument(
        "--json", action="store_true", help="write our lines on stderr as JSON"
    )
    add_config_options(parser.add_argument_group("connection"))
    add_policy_options(parser.add_argument_group("recovery policy"))
    add_notify_options(parser)
    return parser


def parse(argv: Sequence[str], prog: str = "run") -> RunOptions:
    """``run``'s options and command from its arguments.

    Raises:
        UsageError: No command after ``--``, or a bad option.
    """
    argv = list(argv)
    if "--" not in argv:
        if any(a in ("-h", "--help") for a in argv):
            parser(prog).parse_args(argv)
        raise UsageError(
            "the command to run comes after --", usage=parser(prog).format_usage()
        )
    split = argv.index("--")
    args = parser(prog).parse_args(argv[:split])
    command = tuple(argv[split + 1 :])
    if not command:
        raise UsageError("no command after --", usage=parser(prog).format_usage())
    given: dict[str, object] = {}
    if args.grace is not None:
        given["grace"] = number(args.grace, "--grace", float, low=0.0)
    for flag, dest in (
        ("--max-restarts", "max_restarts"),
        ("--restart-on-error", "restart_on_error"),
    ):
        if getattr(args, dest) is not None:
            given[dest] = number(getattr(args, dest), flag, int, low=0)
    if args.log_path is not None:
        given["log_path"] = args.log_path
    policy = build_policy(args)
    if args.restart_on_stall and policy.stall_timeout is None:
        raise UsageError(
            "argument --restart-on-stall: needs --stall-timeout S",
            usage=parser(prog).format_usage(),
        )
    return RunOptions(
        command=command,
        policy=policy,
        restart_on_stall=args.restart_on_stall,
        notifiers=build_notifiers(args),
        config=build_config(args),
        discover=args.discover,
        state=args.state,
        json=args.json,
        base_url=args.base_url,
        **given,  # type: ignore[arg-type]
    )


def run(options: RunOptions, out: Output, err: Output) -> int:
    """Supervise the command; its exit status."""
    configure_logging(0)

    def report(event: SupervisorEvent) -> None:
        if options.json:
            err.line(
                json.dumps(
                    {
                        "event": event.name,
                        "job_id": event.job_id,
                        "message": event.message,
                        **event.fields,
                    },
                    default=str,
                )
            )
        else:
            err.line(f"trio-tinkex-recovery[{event.job_id}]: {event.message}")

    environ = dict(os.environ)
    if options.base_url is not None:
        # The command trains on the service the supervisor watches.
        environ["TINKER_BASE_URL"] = options.base_url

    async def main() -> int:
        try:
            result = await supervise(
                options.command,
                policy=options.policy,
                config=options.config,
                grace=options.grace,
                max_restarts=options.max_restarts,
                restart_on_error=options.restart_on_error,
                log_path=options.log_path,
                discover=options.discover,
                restart_on_stall=options.restart_on_stall,
                notifiers=options.notifiers,
                state=options.state,
                on_event=report,
                environ=environ,
            )
        except (JobLockedError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        return result.exit_status

    return run_trio(main)


COMMAND = Command(
    name="run",
    summary="run a training command; restart it from a checkpoint when corrupted",
    parse=parse,
    run=run,
)
