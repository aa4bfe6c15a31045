"""``unwatch RUN...``: remove runs from the state file.

A removed run is not watched again by the next ``watch``.  A recovery in
progress is kept (it ends on its own when a watcher resumes it).  The state
file must not be in use: stop the watcher first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import attrs

from .._store import StoreError, default_state_path, is_dsn, open_store
from .._types import validate_run_id
from ._runtime import EXIT_OK, Command, Parser, UsageError, run_trio

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._runtime import Output

__all__ = ["COMMAND", "UnwatchOptions", "parse"]


@attrs.frozen
class UnwatchOptions:
    """Which runs ``unwatch`` removes, from which state file."""

    #: The runs.
    run_ids: tuple[str, ...]
    #: The state file.
    state: str


def parser(prog: str) -> Parser:
    """The parser of ``unwatch``'s options."""
    parser = Parser(
        prog=prog,
        description="Remove runs from the state file, so that the next watch "
        "does not watch them. Stop the watcher that uses the file first.",
    )
    parser.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="runs to remove")
    parser.add_argument(
        "--state",
        metavar="PATH_OR_DSN",
        help=f"the state file (default: {default_state_path()}), or a "
        "postgresql:// DSN (the replicas let the runs go at their next renewal)",
    )
    return parser


def parse(argv: Sequence[str], prog: str = "unwatch") -> UnwatchOptions:
    """``unwatch``'s options from its arguments."""
    args = parser(prog).parse_args(argv)
    for run_id in args.run_ids:
        try:
            validate_run_id(run_id)
        except ValueError as exc:
            raise UsageError(f"argument RUN_ID: {run_id[:80]!r}: {exc}") from None
    return UnwatchOptions(
        run_ids=tuple(dict.fromkeys(args.run_ids)),
        state=args.state or default_state_path(),
    )


def run(options: UnwatchOptions, out: Output, err: Output) -> int:
    """Remove the runs; say which were not there."""

    async def main() -> int:
        try:
            async with open_store(options.state) as store:
                known = (await store.load()).runs
                await store.remove_runs(options.run_ids)
                # A DSN is shown without its password.
                where = store.location if is_dsn(options.state) else options.state
        except StoreError as exc:
            raise UsageError(str(exc)) from None
        removed = [r for r in options.run_ids if r in known]
        missing = [r for r in options.run_ids if r not in known]
        out.line(f"unwatched {len(removed)} run(s) in {where}")
        if missing:
            err.line(f"not watched, nothing to do: {', '.join(missing)}")
        return EXIT_OK

    return run_trio(main)


COMMAND: Final = Command(
    name="unwatch",
    summary="remove runs from the state file",
    parse=parse,
    run=run,
)
