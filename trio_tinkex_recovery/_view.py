"""The CLI's view of watched runs: what it knows per run, and how it shows it.

`Board` gathers per-run facts from three sources:

- polls, seen through `CountingRest`, a wrapper around the REST client the
  monitor polls with (``open_monitor(rest_for_service=board.rest_for_service)``):
  how many, when the last one was, whether it failed, the newest checkpoint;
- telemetry events (`Board.on_event`): detection and recovery times;
- the executor's `RecoveryState` records: the recovery phase and attempt.

Views render it.  `LiveView` redraws a rich table a few times a second (a
terminal); `LinesView` prints one plain line per change (logs, pipes, or
when rich is not installed); `JsonView` writes telemetry events as JSON
lines on stdout and everything meant for people on stderr.  Rendering
happens in the Trio thread (rich's own refresh thread is off), so nothing
here needs a lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Literal, TextIO

import attrs
import trio

from ._errors import AuthenticationError
from ._telemetry import describe
from ._types import parse_tinker_path

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._executor import Executor, RecoveryState
    from ._policy import Policy
    from ._protocols import RestClientProtocol
    from ._telemetry import Statistics, TelemetryEvent
    from ._types import Checkpoint, TrainingRun

__all__ = [
    "Board",
    "CountingRest",
    "JsonView",
    "LinesView",
    "LiveView",
    "RunRow",
    "SummaryTable",
    "View",
    "ViewKind",
    "make_view",
    "rich_available",
]

logger = logging.getLogger("trio_tinkex_recovery.cli")

#: How the CLI shows progress: a live table, plain lines, or JSON lines.
ViewKind = Literal["live", "lines", "json"]

#: How many recent notes the live view shows under its table.
_FEED_LINES = 6

#: Rich styles of the states a row can be in.
_STYLES = {
    "starting": "dim",
    "watching": "green",
    "poll failing": "yellow",
    "corrupted": "bold red",
    "recovering": "yellow",
    "retrying": "yellow",
    "recovered": "bold cyan",
    "exhausted": "bold red",
}


def rich_available() -> bool:
    """Whether rich (the ``cli`` extra) can be imported."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def short_path(path: str | None, run_id: str) -> str:
    """A checkpoint path as the table shows it: its name, its run if another's."""
    if path is None:
        return "-"
    try:
        run, kind, name = parse_tinker_path(path)
    except (TypeError, ValueError):
        return path
    text = name if run == run_id else f"{run}/{name}"
    return text if kind == "weights" else f"{text} ({kind})"


@attrs.define(eq=False)
class RunRow:
    """What the CLI knows about one watched run."""

    #: The run's id.
    run_id: str
    #: The run this one was recovered from, for a followed run.
    origin: str | None = None
    #: Polls answered (successfully or not).
    polls: int = 0
    #: Polls that failed.
    errors: int = 0
    #: Failed polls in a row, up to now.
    failing: int = 0
    #: When the last poll ended (Trio time).
    last_poll: float | None = None
    #: The last poll error, as ``Type: message``.
    last_error: str | None = None
    #: The newest checkpoint a poll reported (``tinker://`` path).
    checkpoint: str | None = None
    #: Whether the last poll saw ``corrupted: true``.
    corrupted: bool = False
    #: When the monitor reported the run corrupted (Trio time).
    detected_at: float | None = None
    #: When its recovery completed (Trio time).
    recovered_at: float | None = None


@attrs.frozen
class SummaryTable:
    """A table for the end of a command, renderable with or without rich."""

    #: The line above the table.
    title: str
    #: Column headers.
    headers: Sequence[str]
    #: Cells, row by row.
    rows: Sequence[Sequence[str]]
    #: A rich style per row (ignored in plain text).
    styles: Sequence[str] = ()
    #: Lines under the table.
    footer: Sequence[str] = ()
    #: The one column that may wrap when the terminal is narrow.
    wrap: int = 1

    def plain(self) -> str:
        """The table as aligned plain text."""
        widths = [len(h) for h in self.headers]
        for row in self.rows:
            for index, cell in enumerate(row):
                widths[index] = max(widths[index], len(cell))

        def line(cells: Sequence[str]) -> str:
            return "  ".join(
                c.ljust(w) for c, w in zip(cells, widths, strict=True)
            ).rstrip()

        lines = [self.title, line(self.headers)]
        lines.extend(line(row) for row in self.rows)
        lines.extend(self.footer)
        return "\n".join(lines)


class CountingRest:
    """A REST client that tells a `Board` about every poll it makes.

    Every call goes to the wrapped client unchanged; ``get_training_run``
    (what the monitor polls with) is also counted per run.
    """

    def __init__(self, inner: RestClientProtocol, board: Board) -> None:
        self._inner = inner
        self._board = board

    def __repr__(self) -> str:
        return f"<CountingRest {self._inner!r}>"

    async def get_training_run(self, run_id: str) -> TrainingRun:
        """Poll ``run_id`` through the wrapped client, and count it."""
        try:
            run = await self._inner.get_training_run(run_id)
        except Exception as exc:
            self._board.on_poll(run_id, error=exc)
            raise
        self._board.on_poll(run_id, run=run)
        return run

    async def list_checkpoints(self, run_id: str) -> list[Checkpoint]:
        """The wrapped client's ``list_checkpoints``."""
        return await self._inner.list_checkpoints(run_id)


class Board:
    """Per-run facts for the views, fed by polls, events and the executor.

    Args:
        policy: The monitor's policy (for ``max_attempts`` and following).
        view: Where notes about changes go.
    """

    def __init__(self, *, policy: Policy, view: View) -> None:
        self.policy = policy
        self.view = view
        view.board = self
        self.start = trio.current_time()
        self.executor: Executor | None = None
        #: An error that makes watching pointless (the key was rejected).
        self.fatal: BaseException | None = None
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
            return row
        row = self._rows[run_id] = RunRow(run_id=run_id, origin=origin)
        if origin is not None and origin in self._order:
            self._order.insert(self._order.index(origin) + 1, run_id)
        else:
            self._order.append(run_id)
        return row

    def rest_for_service(self, service: Any) -> CountingRest:
        """For ``open_monitor(rest_for_service=...)``: count the polls."""
        return CountingRest(service.create_rest_client(), self)

    def note(self, text: str) -> None:
        """Tell the view something happened, now."""
        self.view.note(trio.current_time() - self.start, text)

    # -- inputs ----------------------------------------------------------------

    def on_poll(
        self,
        run_id: str,
        *,
        run: TrainingRun | None = None,
        error: Exception | None = None,
    ) -> None:
        """Record one poll of ``run_id``: its answer or its error."""
        row = self.row(run_id)
        first = row.polls == 0
        row.polls += 1
        row.last_poll = trio.current_time()
        if error is not None:
            row.errors += 1
            row.failing += 1
            row.last_error = describe(error)
            logger.debug("%s: poll #%d failed: %s", run_id, row.polls, row.last_error)
            if row.failing == 1:
                self.note(f"{run_id}: poll failed: {row.last_error}")
            if isinstance(error, AuthenticationError) and self.fatal is None:
                self.fatal = error
            return
        assert run is not None
        if run.last_checkpoint is not None:
            row.checkpoint = run.last_checkpoint.tinker_path
        row.corrupted = run.corrupted
        logger.debug(
            "%s: poll #%d ok, corrupted=%s, checkpoint=%s",
            run_id,
            row.polls,
            str(run.corrupted).lower(),
            row.checkpoint,
        )
        if row.failing:
            self.note(f"{run_id}: polls answer again after {row.failing} failed")
            row.failing = 0
        elif first and not run.corrupted:
            origin = f", recovered from {row.origin}" if row.origin else ""
            self.note(
                f"{run_id}: watching, checkpoint "
                f"{short_path(row.checkpoint, run_id)}{origin}"
            )

    def on_event(self, event: TelemetryEvent) -> None:
        """Record a telemetry event and note it for people."""
        self.view.event(event)
        run_id = event.run_id
        meta = event.metadata
        row = self.row(run_id)
        attempt = meta.get("attempt")
        checkpoint = meta.get("checkpoint")
        error = describe(meta.get("error"))
        if event.name == "detected":
            row.detected_at = event.time
            row.corrupted = True
            self.note(
                f"{run_id}: CORRUPTED; last checkpoint {short_path(checkpoint, run_id)}"
            )
        elif event.name == "started":
            self.note(
                f"{run_id}: recovery attempt {attempt}/{self.policy.max_attempts}"
            )
        elif event.name == "checkpoint_selected":
            self.note(f"{run_id}: restoring {checkpoint}")
        elif event.name == "failed":
            self.note(f"{run_id}: attempt {attempt} failed: {error}")
        elif event.name == "exhausted":
            self.note(f"{run_id}: EXHAUSTED after {attempt} attempt(s): {error}")
        elif event.name == "completed":
            row.recovered_at = event.time
            new_run_id = meta.get("new_run_id")
            self.note(
                f"{run_id}: recovered → {new_run_id or '?'} "
                f"from {short_path(checkpoint, run_id)}"
            )
            if self.policy.follow_recovered and isinstance(new_run_id, str):
                self.add(new_run_id, origin=run_id)

    # -- outputs ---------------------------------------------------------------

    def recovery(self, run_id: str) -> RecoveryState | None:
        """The executor's record of ``run_id``'s recovery, if any."""
        return None if self.executor is None else self.executor.recovery_state(run_id)

    def phase(self, row: RunRow) -> str:
        """Where the run stands, in a word or two (a key of the state styles)."""
        rec = self.recovery(row.run_id)
        if rec is not None:
            return {
                "queued": "corrupted",
                "attempting": "recovering",
                "waiting": "retrying",
                "done": "recovered",
            }.get(rec.phase, "exhausted")
        if row.corrupted:
            return "corrupted"
        if row.polls == 0:
            return "starting"
        if row.failing:
            return "poll failing"
        return "watching"

    def state(self, row: RunRow) -> tuple[str, str]:
        """The row's state: a short text and its rich style."""
        phase = self.phase(row)
        rec = self.recovery(row.run_id)
        label = phase
        if rec is not None and phase == "retrying":
            wait = max(0.0, (rec.retry_at or 0.0) - trio.current_time())
            label = f"retrying in {wait:.1f}s"
        elif rec is not None and phase == "recovered":
            label = f"recovered → {rec.new_run_id or '?'}"
        return label, _STYLES[phase]

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
        """The runs whose recovery was given up."""
        return [
            row.run_id
            for row in self.rows
            if (rec := self.recovery(row.run_id)) is not None
            and rec.phase == "exhausted"
        ]

    def cells(self, row: RunRow, now: float) -> list[str]:
        """One row of the live table (without the state, styled separately)."""
        last = "-" if row.last_poll is None else f"{now - row.last_poll:.1f}s ago"
        return [
            row.run_id,
            last,
            str(row.polls),
            str(row.errors),
            self.attempt(row),
            self.checkpoint(row),
        ]

    def summary(self, *, title: str, footer: Sequence[str] = ()) -> SummaryTable:
        """The end-of-command table of every run."""
        rows: list[list[str]] = []
        styles: list[str] = []
        for row in self.rows:
            state, style = self.state(row)
            rows.append(
                [
                    row.run_id,
                    state,
                    str(row.polls),
                    str(row.errors),
                    self.attempt(row),
                    self.checkpoint(row),
                ]
            )
            styles.append(style)
        return SummaryTable(
            title=title,
            headers=["run", "state", "polls", "errors", "attempt", "checkpoint"],
            rows=rows,
            styles=styles,
            footer=footer,
        )


def statistics_line(stats: Statistics) -> str:
    """The monitor's counters in one line."""
    return (
        f"watching {stats.monitored} · polls {stats.polls} · "
        f"poll errors {stats.poll_errors} · detected {stats.detected} · "
        f"attempts {stats.attempts} · recovered {stats.completed} · "
        f"exhausted {stats.exhausted}"
        + (f" · dropped events {stats.dropped_events}" if stats.dropped_events else "")
    )


class View:
    """How a command shows progress; this base shows nothing."""

    board: Board | None = None
    #: Set when a reader closed our output (``--json | head``): stop then.
    output_closed: bool = False
    _closed: frozenset[int] = frozenset()

    def _write(self, stream: TextIO, text: str) -> None:
        """Write and flush; a closed pipe ends the output, not the program."""
        if id(stream) in self._closed:
            return
        try:
            stream.write(text)
            stream.flush()
        except BrokenPipeError:
            self.output_closed = True
            self._closed |= {id(stream)}
            # Nothing more can reach the reader; keep the interpreter's
            # final flush from failing on the same pipe.
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, stream.fileno())
                os.close(devnull)

    def open(self, headline: str) -> None:
        """The command is running; say what it does."""

    def note(self, elapsed: float, text: str) -> None:
        """Something changed, ``elapsed`` seconds after the start."""

    def event(self, event: TelemetryEvent) -> None:
        """A telemetry event arrived."""

    def tick(self, stats: Statistics) -> None:
        """Redraw, if the view redraws."""

    def close(self, summary: SummaryTable) -> None:
        """The command has ended: show the summary."""


class LinesView(View):
    """Plain lines, one per change, and a plain summary table.

    Args:
        out: Where to write (flushed after every line).
    """

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def _print(self, text: str) -> None:
        self._write(self._out, text + "\n")

    def open(self, headline: str) -> None:
        """Print the headline."""
        self._print(headline)

    def note(self, elapsed: float, text: str) -> None:
        """Print ``[ 12.3s] text``."""
        self._print(f"[{elapsed:6.1f}s] {text}")

    def close(self, summary: SummaryTable) -> None:
        """Print the summary table."""
        self._print("")
        self._print(summary.plain())


class JsonView(LinesView):
    """Telemetry events as JSON lines on ``out``; words for people on ``err``.

    Args:
        out: Where the JSON lines go (stdout), nothing else.
        err: Where the headline and the summary go (stderr).
    """

    def __init__(self, out: TextIO, err: TextIO) -> None:
        super().__init__(err)
        self._json = out

    def note(self, elapsed: float, text: str) -> None:
        """Notes are not events: not shown."""

    def event(self, event: TelemetryEvent) -> None:
        """Write the event as one JSON line."""
        self._write(self._json, json.dumps(event.to_json()) + "\n")


class LiveView(View):
    """A rich table redrawn in place, with the latest notes under it.

    Args:
        out: The terminal.
        title: The table's title.
    """

    def __init__(self, out: TextIO, *, title: str) -> None:
        from rich.console import Console

        #: The rich console drawing on ``out``.
        # Run ids such as "session:train:0" must not become emoji or markup.
        self.console = Console(file=out, emoji=False, markup=False, highlight=False)
        self._title = title
        self._feed: list[str] = []
        self._live: Any = None
        self._stats: Statistics | None = None

    def open(self, headline: str) -> None:
        """Print the headline and start drawing."""
        from rich.live import Live

        self.console.print(headline, style="bold")
        self._live = Live(
            self._render(),
            console=self.console,
            auto_refresh=False,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live.start()

    def note(self, elapsed: float, text: str) -> None:
        """Keep the note for the feed under the table."""
        self._feed.append(f"[{elapsed:6.1f}s] {text}")
        del self._feed[:-_FEED_LINES]

    def tick(self, stats: Statistics) -> None:
        """Redraw the table."""
        self._stats = stats
        if self._live is not None:
            self._live.update(self._render(), refresh=True)

    def _render(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(title=self._title, title_justify="left", expand=False)
        # When the terminal is narrow, the state wraps (at its arrow); ids and
        # numbers never do.
        table.add_column("run", no_wrap=True)
        table.add_column("state", min_width=10)
        table.add_column("last poll", no_wrap=True, justify="right")
        for header in ("polls", "errors", "attempt"):
            table.add_column(header, no_wrap=True, justify="right")
        table.add_column("checkpoint", no_wrap=True)
        board = self.board
        below = [] if self._stats is None else [statistics_line(self._stats)]
        if board is not None:
            now = trio.current_time()
            rows, hidden = _fit(board, self.console.size.height - _FEED_LINES - 9)
            for row in rows:
                state, style = board.state(row)
                cells = board.cells(row, now)
                table.add_row(cells[0], Text(state, style=style), *cells[1:])
            if hidden:
                below.insert(0, f"{hidden} more run(s) not shown, all quiet")
        lines = [Text(line, no_wrap=True, overflow="ellipsis") for line in below]
        feed = [
            Text(line, style="dim", no_wrap=True, overflow="ellipsis")
            for line in self._feed
        ]
        return Group(table, *lines, *feed)

    def close(self, summary: SummaryTable) -> None:
        """Stop drawing and print the summary as a rich table."""
        from rich.table import Table
        from rich.text import Text

        if self._live is not None:
            self._live.update(self._render(), refresh=True)
            self._live.stop()
            self._live = None
        table = Table(title=summary.title, title_justify="left")
        for index, header in enumerate(summary.headers):
            table.add_column(header, no_wrap=index != summary.wrap, overflow="fold")
        for index, row in enumerate(summary.rows):
            style = summary.styles[index] if index < len(summary.styles) else ""
            table.add_row(*(Text(cell, style=style) for cell in row))
        self.console.print()
        self.console.print(table)
        for line in summary.footer:
            self.console.print(line)


#: Which rows the live view keeps when they do not all fit: trouble first.
_PRIORITY = {
    "corrupted": 0,
    "recovering": 0,
    "retrying": 0,
    "exhausted": 0,
    "poll failing": 0,
    "recovered": 1,
    "starting": 2,
    "watching": 2,
}


def _fit(board: Board, limit: int) -> tuple[list[RunRow], int]:
    """The rows to draw (at least 5, at most ``limit``) and how many are left out."""
    rows = board.rows
    limit = max(5, limit)
    if len(rows) <= limit:
        return rows, 0
    ranked = sorted(
        range(len(rows)), key=lambda i: (_PRIORITY[board.phase(rows[i])], i)
    )
    keep = sorted(ranked[:limit])
    return [rows[i] for i in keep], len(rows) - limit


def make_view(
    kind: ViewKind,
    *,
    title: str,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> View:
    """The view for ``kind``; a live view without rich falls back to lines."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    if kind == "json":
        return JsonView(out, err)
    if kind == "live":
        if rich_available():
            return LiveView(out, title=title)
        print(
            "note: the live view needs rich (pip install "
            "'trio-tinkex-recovery[cli]'); showing plain lines",
            file=err,
        )
    return LinesView(out)
