"""How the commands show progress: a live table, plain lines, or JSON lines.

`LiveView` redraws a rich table a few times a second (a terminal);
`LinesView` prints one plain line per change (logs, pipes, or when rich is
not installed); `JsonView` writes telemetry events as JSON lines on stdout
and everything meant for people on stderr.  They render a `Board`.
Rendering happens in the Trio thread (rich's own refresh thread is off), so
nothing here needs a lock.

Much of what is shown came from a server (run ids, paths, error texts).
Every text goes through `printable` on its way to the terminal, so a server
cannot move the cursor, recolour the screen or forge a line; JSON lines
escape such characters anyway.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final, Literal

import trio

from .._text import printable
from ._runtime import Output, configure_logging
from ._table import Rows, RunRow, SummaryTable, printable_all

if TYPE_CHECKING:
    from .._engine._telemetry import Statistics, TelemetryEvent
    from ._options import OutputOptions

__all__ = [
    "JsonView",
    "LinesView",
    "LiveView",
    "SummaryTable",
    "View",
    "ViewKind",
    "make_view",
    "open_view",
    "rich_available",
    "statistics_line",
    "view_kind",
]

#: How the CLI shows progress: a live table, plain lines, or JSON lines.
ViewKind = Literal["live", "lines", "json"]

#: How many recent notes the live view shows under its table.
_FEED_LINES: Final = 6

#: Rich styles of the states a row can be in.
_STYLES: Final = {
    "starting": "dim",
    "watching": "green",
    "healthy": "green",
    "poll failing": "yellow",
    "corrupted": "bold red",
    "recovering": "yellow",
    "retrying": "yellow",
    "recovered": "bold cyan",
    "exhausted": "bold red",
    "interrupted": "bold yellow",
}

#: Which rows the live view keeps when they do not all fit: trouble first.
_PRIORITY: Final = {"recovered": 1, "starting": 2, "watching": 2}


def rich_available() -> bool:
    """Whether rich (the ``cli`` extra) can be imported."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def statistics_line(stats: Statistics) -> str:
    """The monitor's counters in one line."""
    return (
        f"watching {stats.monitored} · polls {stats.polls} · "
        f"poll errors {stats.poll_errors} · detected {stats.detected} · "
        f"attempts {stats.attempts} · recovered {stats.completed} · "
        f"exhausted {stats.exhausted} · interrupted {stats.interrupted}"
        + (f" · dropped events {stats.dropped_events}" if stats.dropped_events else "")
    )


class View:
    """How a command shows progress; this base shows nothing.

    Args:
        out: Where the view writes (stdout).
    """

    board: Rows | None = None

    def __init__(self, out: Output) -> None:
        self.out = out

    @property
    def output_closed(self) -> bool:
        """Whether a reader closed our output (``| head``): stop then."""
        return self.out.closed

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

    def __init__(self, out: Output) -> None:
        super().__init__(out)
        self._lines = out

    def open(self, headline: str) -> None:
        """Print the headline."""
        self._lines.line(printable(headline))

    def note(self, elapsed: float, text: str) -> None:
        """Print ``[ 12.3s] text``."""
        self._lines.line(f"[{elapsed:6.1f}s] {printable(text)}")

    def close(self, summary: SummaryTable) -> None:
        """Print the summary table."""
        self._lines.line()
        self._lines.line(summary.plain())


class JsonView(LinesView):
    """Telemetry events as JSON lines on ``out``; words for people on ``err``.

    Args:
        out: Where the JSON lines go (stdout), nothing else.
        err: Where the headline and the summary go (stderr).
    """

    def __init__(self, out: Output, err: Output) -> None:
        super().__init__(err)
        self.out = out

    def note(self, elapsed: float, text: str) -> None:
        """Notes are not events: not shown."""

    def event(self, event: TelemetryEvent) -> None:
        """Write the event as one JSON line (control characters escaped)."""
        self.out.line(json.dumps(event.to_json()))


class LiveView(View):
    """A rich table redrawn in place, with the latest notes under it.

    Args:
        out: The terminal.
        title: The table's title.
    """

    def __init__(self, out: Output, *, title: str) -> None:
        super().__init__(out)
        from rich.console import Console

        #: The rich console drawing on ``out``.
        # Run ids such as "session:train:0" must not become emoji or markup.
        self.console = Console(
            file=out.stream, emoji=False, markup=False, highlight=False
        )
        self._title = printable(title)
        self._feed: list[str] = []
        self._live: Any = None
        self._stats: Statistics | None = None

    def open(self, headline: str) -> None:
        """Print the headline and start drawing."""
        from rich.live import Live

        self.console.print(printable(headline), style="bold")
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
        self._feed.append(f"[{elapsed:6.1f}s] {printable(text)}")
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
                cells = printable_all(board.cells(row, now))
                state = Text(cells[1], style=_STYLES.get(board.phase(row), ""))
                table.add_row(cells[0], state, *cells[2:])
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
            kind = summary.styles[index] if index < len(summary.styles) else ""
            style = _STYLES.get(kind, "")
            table.add_row(*(Text(cell, style=style) for cell in row))
        self.console.print()
        self.console.print(table)
        for line in summary.footer:
            self.console.print(line)


def _fit(board: Rows, limit: int) -> tuple[list[RunRow], int]:
    """The rows to draw (at least 5, at most ``limit``) and how many are left out."""
    rows = board.rows
    limit = max(5, limit)
    if len(rows) <= limit:
        return rows, 0
    ranked = sorted(
        range(len(rows)), key=lambda i: (_PRIORITY.get(board.phase(rows[i]), 0), i)
    )
    keep = sorted(ranked[:limit])
    return [rows[i] for i in keep], len(rows) - limit


def make_view(kind: ViewKind, *, title: str, out: Output, err: Output) -> View:
    """The view for ``kind``; a live view without rich falls back to lines."""
    if kind == "json":
        return JsonView(out, err)
    if kind == "live":
        if rich_available():
            return LiveView(out, title=title)
        err.line(
            "note: the live view needs rich (pip install "
            "'trio-tinkex-recovery[cli]'); showing plain lines"
        )
    return LinesView(out)


def view_kind(*, as_json: bool, plain: bool, out: Output) -> ViewKind:
    """The view the output options ask for: live only on a terminal."""
    if as_json:
        return "json"
    if plain or not out.isatty():
        return "lines"
    return "live"


def open_view(options: OutputOptions, *, title: str, out: Output, err: Output) -> View:
    """The view the output options ask for, with logging set up to match."""
    kind = view_kind(as_json=options.json, plain=options.plain, out=out)
    view = make_view(kind, title=title, out=out, err=err)
    configure_logging(options.verbose, console=getattr(view, "console", None))
    return view
