"""The command line: ``run``, ``watch``, ``status``, ``unwatch``, ``demo``, …

::

    trio-tinkex-recovery run [options] -- COMMAND   run a training command, restart it
                                                    from a checkpoint when corrupted
    trio-tinkex-recovery watch [RUN_ID...] [options]  watch runs on Tinker, recover them
    trio-tinkex-recovery status [--json]            what the state file holds
    trio-tinkex-recovery unwatch RUN_ID...          remove runs from the state file
    trio-tinkex-recovery demo [options]             simulator + corruptions + recoveries
    trio-tinkex-recovery simulate [options]         serve the simulator on a port

``python -m trio_tinkex_recovery`` is the same; without a command it runs
the demo.  Exit codes: 0 all good (a recovery interrupted by stopping
included); 1 a recovery was exhausted (for the demo: a corrupted run was
not recovered exactly once); 2 bad usage or configuration, including a
missing, malformed or rejected API key (never shown).  Ctrl-C or SIGTERM
stops cleanly: the summary is printed, no traceback; a second Ctrl-C during
shutdown exits at once with 130.  A closed stdout (``>&-``, or a reader
that went away, ``| head -1``) ends a command quietly.

Progress is shown as a live table (rich, the ``cli`` extra) on a terminal,
as plain lines when stdout is not a terminal (or with ``--plain``), or as
telemetry events in JSON lines with ``--json`` (stdout carries nothing
else; the summary goes to stderr).

One module per command (``_watch``, ``_status``, ``_unwatch``, ``_demo``,
``_simulate``); what they
share: ``_runtime`` (exit codes, usage errors, signals, logging),
``_options`` (options turned into `Policy` and `Config`, the one place
where values are checked), ``_board`` (what is known per run) and
``_view`` (how it is shown).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Final

from . import _demo, _run, _simulate, _status, _unwatch, _watch
from ._runtime import EXIT_INTERRUPTED, EXIT_USAGE, Parser, UsageError, prog

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._runtime import Command

__all__ = ["main"]

_COMMANDS: Final[dict[str, Command[Any]]] = {
    command.name: command
    for command in (
        _run.COMMAND,
        _watch.COMMAND,
        _status.COMMAND,
        _unwatch.COMMAND,
        _demo.COMMAND,
        _simulate.COMMAND,
    )
}


def _parser(name: str) -> Parser:
    """The top-level parser: the commands, ``--help`` and ``--version``."""
    from .. import __version__

    parser = Parser(
        prog=name,
        description="Watch Tinker training runs and restart corrupted ones from a "
        "checkpoint; or try it all on a built-in simulator. "
        f"'{name} COMMAND --help' tells more about each command.",
        epilog="Without a command, runs the demo. Exit codes: 0 all good, 1 a run's "
        "recovery was exhausted (demo: a corrupted run not recovered exactly once), "
        "2 bad usage or configuration.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in _COMMANDS.values():
        commands.add_parser(command.name, help=command.summary, add_help=False)
    return parser


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
    args = list(sys.argv[1:] if argv is None else argv) or ["demo"]
    name = prog()
    command = _COMMANDS.get(args[0])
    try:
        if command is None:
            _parser(name).parse_args(args)  # --help, --version, or a usage error
            raise UsageError(f"a command is required: {', '.join(_COMMANDS)}")
        return command.main(args[1:], name)
    except UsageError as exc:
        if exc.usage:
            sys.stderr.write(exc.usage)
        where = name if command is None else f"{name} {command.name}"
        print(f"{where}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before Trio runs, or after it
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
