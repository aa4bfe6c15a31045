"""What the CLI knows about the runs it watches, and where it learns it.

`Board` observes the monitor the way any user of the library can, and no
other way:

- telemetry events (`Board.on_event`): every poll (``polled``,
  ``poll_error``), detections and recovery steps;
- the executor's `RecoveryState` records and the monitor's `Statistics`,
  read a few times a second (`Board.update`).

Events come through a bounded subscription: under load some may be dropped
(``statistics().dropped_events``).  Nothing here assumes an event arrived:
a row is made for any run an event or a record names, and the recovery
columns come from the records, which are never dropped.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

import trio

from .._engine._telemetry import Statistics, describe
from .._errors import AuthenticationError
from .._types import parse_tinker_path, validate_run_id
from ._table import RunRow, SummaryTable

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .._engine._executor import RecoveryState
    from .._engine._telemetry import TelemetryEvent
    from .._policy import Policy
    from ._view import View

__all__ = ["Board", "RunRow", "short_path"]

logger = logging.getLogger("trio_tinkex_recovery.cli")

#: Where a recovery stands, as the board says it (by `RecoveryState.phase`).
_PHASES: Final = {
    "queued": "corrupted",
    "attempting": "recovering",
    "waiting": "retrying",
    "done": "recovered",
    "exhausted": "exhausted",
    "interrupted": "interrupted",
}


def short_path(path: object, run_id: str) -> str:
    """A checkpoint path as the table shows it: its name, its run if another's."""
    if not isinstance(path, str):
        return "-"
    try:
        run, kind, name = parse_tinker_path(path)
    except (TypeError, ValueError):
        return path
    text = name if run == run_id else f"{run}/{name}"
    return text if kind == "weights" else f"{text} ({kind})"


class Board:
    """Per-run facts for the views, from events and recovery records.

    Args:
        policy: The monitor's policy (for ``max_attempts`` and following).
        view: Where notes about changes go.
    """

    def __init__(self, *, policy: Policy, view: View) -> None:
        self.policy = policy
        self.view = view
        view.board = self
        self.start = trio.current_time()
        #: An error that makes watching pointless (the key was rejected).
        self.fatal: BaseException | None = None
        #: The executor's records, as of the last `update`.
        self.recoveries: Mapping[str, RecoveryState] = {}
        #: The monitor's counters, as of the last `update`.
        self.stats = Statistics()
        self._rows: dict[str, RunRow] = {}
        self._order: list[str] = []

    @property
    def rows(self) -> list[RunRow]:
        """Every row, followed runs right after the run they replace."""
        return [self._rows[run_id] for run_id in self._order]

    def row(self, run_id: str) -> RunRow:
        """The row of ``run_id``, added if it is new."""
        row = self._rows.get(run_id)
        if row is None:
            row = self.add(run_id)
        return row

    def add(self, run_id: str, *, origin: str | None = None) -> RunRow:
        """Add a row (once); a followed run goes right after its origin."""
        row = self._rows.get(run_id)
        if row is not None:
            if row.origin is None and origin is not None:
                row.origin = origin
            return row
        row = self._rows[run_id] = RunRow(run_id=run_id, origin=origin)
        if origin is not None and origin in self._order:
            at = self._order.index(origin) + 1
            while at < len(self._order) and self._rows[self._order[at]].origin:
                at += 1  # after the runs already recovered from it
            self._order.insert(at, run_id)
        else:
            self._order.append(run_id)
        return row

    def note(self, text: str) -> None:
        """Tell the view something happened, now."""
        self.view.note(trio.current_time() - self.start, text)

    # -- inputs ----------------------------------------------------------------

    def update(
        self, recoveries: Mapping[str, RecoveryState], stats: Statistics
    ) -> None:
        """Take the executor's records and the monitor's counters as they are now.

        A recovery that ended without its event being seen (it was dropped,
        or the monitor closed while stopping) is noted here.
        """
        self.recoveries = recoveries
        self.stats = stats
        for run_id, rec in recoveries.items():
            row = self.row(run_id)
            if rec.phase == "done" and rec.new_run_id:
                self._follow(rec.new_run_id, run_id)
            if rec.phase == "interrupted":
                self._interrupted(row, rec.attempt)

    def on_event(self, event: TelemetryEvent) -> None:
        """Record a telemetry event and note it for people."""
        self.view.event(event)
        run_id = event.run_id
        meta = event.metadata
        row = self.row(run_id)
        attempt = meta.get("attempt")
        checkpoint = meta.get("checkpoint")
        error = meta.get("error")
        if event.name == "polled":
            self._polled(row, event.time, checkpoint, corrupted=meta.get("corrupted"))
        elif event.name == "poll_error":
            self._poll_failed(row, event.time, error)
        elif event.name == "detected":
            row.detected_at = event.time
            row.corrupted = True
            row.ended = False
            self.note(
                f"{run_id}: CORRUPTED; last checkpoint {short_path(checkpoint, run_id)}"
            )
        elif event.name == "started":
            self.note(
                f"{run_id}: recovery attempt {attempt}/{self.policy.max_attempts}"
            )
        elif event.name == "checkpoint_selected":
            self.note(f"{run_id}: restoring {describe(checkpoint)}")
        elif event.name == "failed":
            self.note(f"{run_id}: attempt {attempt} failed: {describe(error)}")
        elif event.name == "exhausted":
            row.ended = True
            self.note(
                f"{run_id}: EXHAUSTED after {attempt} attempt(s): {describe(error)}"
            )
        elif event.name == "interrupted":
            self._interrupted(row, attempt)
        elif event.name == "completed":
            row.ended = True
            row.recovered_at = event.time
            new_run_id = meta.get("new_run_id")
            self.note(
                f"{run_id}: recovered → {describe(new_run_id or '?')} "
                f"from {short_path(checkpoint, run_id)}"
            )
            if isinstance(new_run_id, str):
                self._follow(new_run_id, run_id)

    def _follow(self, new_run_id: str, origin: str) -> None:
        """A row for the run a recovery created, if the monitor will watch it."""
        if not self.policy.follow_recovered:
            return
        try:
            validate_run_id(new_run_id)
        except ValueError:
            return  # the monitor cannot watch it either (and logs why)
        self.add(new_run_id, origin=origin)

    def _polled(
        self, row: RunRow, time: float, checkpoint: object, *, corrupted: object
    ) -> None:
        first = row.polls == 0
        row.polls += 1
        row.last_poll = time
        if isinstance(checkpoint, str):
            row.checkpoint = checkpoint
        row.corrupted = corrupted is True
        logger.debug(
            "%s: poll #%d ok, corrupted=%s, checkpoint=%s",
            row.run_id,
            row.polls,
            str(row.corrupted).lower(),
            row.checkpoint,
        )
        if row.failing:
            self.note(f"{row.run_id}: polls answer again after {row.failing} failed")
            row.failing = 0
        elif first and not row.corrupted:
            origin = f", recovered from {row.origin}" if row.origin else ""
            self.note(
                f"{row.run_id}: watching, checkpoint "
                f"{short_path(row.checkpoint, row.run_id)}{origin}"
            )

    def _interrupted(self, row: RunRow, attempt: object) -> None:
        # Told by its event or by its record, whichever comes first.
        if not row.ended:
            row.ended = True
            self.note(f"{row.run_id}: recovery INTERRUPTED at attempt {attempt}")

    def _poll_failed(self, row: RunRow, time: float, error: object) -> None:
        row.polls += 1
        row.errors += 1
        row.failing += 1
        row.last_poll = time
        row.last_error = describe(error)
        logger.debug("%s: poll #%d failed: %s", row.run_id, row.polls, row.last_error)
        if row.failing == 1:
            self.note(f"{row.run_id}: poll failed: {row.last_error}")
        if isinstance(error, AuthenticationError) and self.fatal is None:
            self.fatal = error

    # -- outputs ---------------------------------------------------------------

    def recovery(self, run_id: str) -> RecoveryState | None:
        """The executor's record of ``run_id``'s recovery, if any."""
        return self.recoveries.get(run_id)

    def phase(self, row: RunRow) -> str:
        """Where the run stands, in a word or two (a key of the state styles)."""
        rec = self.recovery(row.run_id)
        if rec is not None:
            return _PHASES.get(rec.phase, rec.phase)
        if row.corrupted:
            return "corrupted"
        if row.polls == 0:
            return "starting"
        if row.failing:
            return "poll failing"
        return "watching"

    def state(self, row: RunRow) -> str:
        """The row's state as the tables show it."""
        phase = self.phase(row)
        rec = self.recovery(row.run_id)
        if rec is not None and phase == "retrying":
            wait = max(0.0, (rec.retry_at or 0.0) - trio.current_time())
            return f"retrying in {wait:.1f}s"
        if rec is not None and phase == "recovered":
            return f"recovered → {rec.new_run_id or '?'}"
        return phase

    def attempt(self, row: RunRow) -> str:
        """The row's recovery attempt as ``n/max``, or ``-``."""
        rec = self.recovery(row.run_id)
        if rec is None or rec.attempt == 0:
            return "-"
        return f"{rec.attempt}/{self.policy.max_attempts}"

    def checkpoint(self, row: RunRow) -> str:
        """The checkpoint worth showing: the one restored, else the newest seen."""
        rec = self.recovery(row.run_id)
        path = rec.checkpoint if rec is not None and rec.checkpoint else row.checkpoint
        return short_path(path, row.run_id)

    def exhausted(self) -> list[str]:
        """The runs whose recovery was given up (not those interrupted)."""
        return [r for r, rec in self.recoveries.items() if rec.phase == "exhausted"]

    def cells(self, row: RunRow, now: float) -> list[str]:
        """One row of the live table: run, state, last poll, polls, errors, …"""
        last = "-" if row.last_poll is None else f"{now - row.last_poll:.1f}s ago"
        return [
            row.run_id,
            self.state(row),
            last,
            str(row.polls),
            str(row.errors),
            self.attempt(row),
            self.checkpoint(row),
        ]

    def totals(self) -> str:
        """The runs by state, and the monitor's poll counters, in one line."""
        states = [self.phase(row) for row in self.rows]
        counts = {s: states.count(s) for s in dict.fromkeys(states)}
        parts = ", ".join(f"{n} {s}" for s, n in counts.items())
        stats = self.stats
        return (
            f"{len(states)} run(s): {parts or 'none'}; {stats.polls} polls, "
            f"{stats.poll_errors} failed"
        )

    def summary(self, *, title: str, footer: Sequence[str] = ()) -> SummaryTable:
        """The end-of-command table of every run."""
        rows: list[list[str]] = []
        styles: list[str] = []
        for row in self.rows:
            cells = self.cells(row, 0.0)
            del cells[2]  # when it was last polled means nothing any more
            rows.append(cells)
            styles.append(self.phase(row))
        return SummaryTable(
            title=title,
            headers=["run", "state", "polls", "errors", "attempt", "checkpoint"],
            rows=rows,
            styles=styles,
            footer=footer,
        )
