"""``status``: what the state file knows about each run.

Read beside a running watcher (the file is opened read-only, without its
lock): the watched runs, each run's recovery (phase, attempt, checkpoint,
successor or error), its recovery history, and restores whose outcome is
still in doubt; with a ``postgresql://`` state shared by replicas, the
replica that holds each run.  ``--json`` prints the same as one JSON
document.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any, Final

import attrs

from .._store import PostgresStore, StoreError, default_state_path, open_store
from .._text import printable
from ._runtime import EXIT_OK, Command, Parser, UsageError, run_trio

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .._store import HistoryEntry, Snapshot
    from .._store._postgres import Owner
    from ._runtime import Output

__all__ = ["COMMAND", "StatusOptions", "parse"]


@attrs.frozen
class StatusOptions:
    """What ``status`` was asked to show."""

    #: The state file.
    state: str
    #: One JSON document instead of tables.
    json: bool = False


def parser(prog: str) -> Parser:
    """The parser of ``status``'s options."""
    parser = Parser(
        prog=prog,
        description="Show what the state file knows: the watched runs, their "
        "recoveries and recovery history. Safe beside a running watcher.",
    )
    parser.add_argument(
        "--state",
        metavar="PATH_OR_DSN",
        help=f"the state file (default: {default_state_path()}), or a "
        "postgresql:// DSN",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    return parser


def parse(argv: Sequence[str], prog: str = "status") -> StatusOptions:
    """``status``'s options from its arguments."""
    args = parser(prog).parse_args(argv)
    return StatusOptions(state=args.state or default_state_path(), json=args.json)


def report(
    snapshot: Snapshot,
    history: Sequence[HistoryEntry],
    owners: Mapping[str, Owner] | None = None,
) -> dict[str, Any]:
    """What ``status --json`` prints: every run with its recovery and history.

    With ``owners`` (replicas sharing a database), each run says which
    replica holds it and for how many more seconds.
    """
    ids = sorted({*snapshot.runs, *snapshot.recoveries})
    runs = []
    for run_id in ids:
        stored = snapshot.runs.get(run_id)
        recovery = snapshot.recoveries.get(run_id)
        owner = None if owners is None else owners.get(run_id)
        state = recovery.state if recovery is not None else None
        runs.append(
            {
                "run_id": run_id,
                "watched": stored is not None,
                "metadata": dict(stored.metadata) if stored else {},
                "restored_this_episode": bool(stored and stored.recovered),
                "successor": stored.successor if stored else None,
                "owner": None
                if owner is None
                else {"replica": owner.replica, "expires_in": owner.expires_in},
                "recovery": None
                if state is None
                else {
                    "phase": state.phase,
                    "attempt": state.attempt,
                    "checkpoint": state.checkpoint,
                    "new_run_id": state.new_run_id,
                    "error": state.error,
                    "retry_at": recovery.retry_at_wall if recovery else None,
                },
                "history": [
                    {
                        "at": entry.at,
                        "phase": entry.phase,
                        "attempt": entry.attempt,
                        "detail": entry.detail,
                    }
                    for entry in history
                    if entry.run_id == run_id
                ],
            }
        )
    return {
        "runs": runs,
        "replicas": owners is not None,
        "restores_in_doubt": [
            {
                "run_id": load.run_id,
                "attempt": load.attempt,
                "model_id": load.model_id,
                "path": load.path,
                "request_id": load.request_id,
            }
            for load in snapshot.open_loads
        ],
    }


def _when(at: float) -> str:
    return dt.datetime.fromtimestamp(at, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _lines(location: str, data: dict[str, Any]) -> list[str]:
    runs = data["runs"]
    pending = sum(
        1
        for r in runs
        if r["recovery"]
        and r["recovery"]["phase"] in ("queued", "attempting", "waiting")
    )
    kind = "database" if data["replicas"] else "state file"
    lines = [f"{kind} {location}: {len(runs)} run(s), {pending} recovery pending"]
    if not runs:
        return lines
    replicas = data["replicas"]
    rows: list[tuple[str, ...]] = [
        ("run", "watched", "recovery", "attempt", "checkpoint", "outcome")
        + (("owner",) if replicas else ())
    ]
    for run in runs:
        recovery = run["recovery"] or {}
        outcome = recovery.get("new_run_id") or recovery.get("error") or ""
        if recovery.get("new_run_id"):
            outcome = f"-> {outcome}"
        owner = run["owner"]
        held = "-"
        if owner is not None:
            held = owner["replica"]
            if owner["expires_in"] <= 0:
                held += " (expired)"
        rows.append(
            (
                run["run_id"],
                "yes" if run["watched"] else "no",
                recovery.get("phase", "-"),
                str(recovery.get("attempt", "-")),
                recovery.get("checkpoint") or "-",
                outcome,
            )
            + ((held,) if replicas else ())
        )
    rows = [tuple(printable(cell)[:80] for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    history = [(run["run_id"], h) for run in runs for h in run["history"]]
    if history:
        lines += ["", "history:"]
        for run_id, h in sorted(history, key=lambda pair: pair[1]["at"]):
            detail = f"  {h['detail']}" if h["detail"] else ""
            lines.append(
                printable(
                    f"  {_when(h['at'])}  {run_id}  {h['phase']} "
                    f"#{h['attempt']}{detail}"
                )
            )
    for load in data["restores_in_doubt"]:
        lines.append(
            printable(
                f"restore in doubt: {load['run_id']} attempt {load['attempt']} -> "
                f"{load['model_id']} (checked before anything is resent)"
            )
        )
    return lines


def run(options: StatusOptions, out: Output, err: Output) -> int:
    """Print the state file's runs and recoveries."""

    async def main() -> int:
        try:
            async with open_store(options.state, readonly=True) as store:
                snapshot = await store.load()
                history = await store.history()
                owners = (
                    await store.owners() if isinstance(store, PostgresStore) else None
                )
                # A DSN is shown without its password.
                location = store.location if owners is not None else options.state
        except StoreError as exc:
            raise UsageError(str(exc)) from None
        data = report(snapshot, history, owners)
        if options.json:
            out.line(json.dumps({"state": location, **data}, indent=2))
        else:
            for line in _lines(location, data):
                out.line(line)
        return EXIT_OK

    return run_trio(main)


COMMAND: Final = Command(
    name="status",
    summary="show the runs and recoveries the state file holds",
    parse=parse,
    run=run,
)
