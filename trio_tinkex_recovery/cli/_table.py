"""What a board shows and a view draws: rows, and the end-of-command table.

`Board` (``_board.py``) fills `RunRow` objects from the monitor's events;
the views (``_view.py``) draw them through the small `Rows` protocol, and
both make a `SummaryTable` at the end.  Living here, these types let the
board use the views without the views importing the board.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import attrs

from .._text import printable

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ["Rows", "RunRow", "SummaryTable", "printable_all"]


@attrs.define(eq=False)
class RunRow:
    """What the CLI knows about one watched run."""

    #: The run's id.
    run_id: str
    #: The run this one was recovered from, for a followed run.
    origin: str | None = None
    #: Polls answered (successfully or not), as far as events told.
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
    #: Whether the end of its recovery was noted already.
    ended: bool = False


class Rows(Protocol):
    """What a view reads from the board it draws."""

    @property
    def rows(self) -> list[RunRow]:
        """Every row, in the order to show them."""
        ...

    def phase(self, row: RunRow) -> str:
        """Where the row's run stands (its colour)."""
        ...

    def cells(self, row: RunRow, now: float) -> list[str]:
        """The row's cells at Trio time ``now``."""
        ...


def printable_all(texts: Iterable[str]) -> tuple[str, ...]:
    return tuple(printable(text) for text in texts)


def _printable_rows(rows: Iterable[Iterable[str]]) -> tuple[tuple[str, ...], ...]:
    return tuple(printable_all(row) for row in rows)


@attrs.frozen
class SummaryTable:
    """A table for the end of a command, renderable with or without rich.

    Every text is made `printable` when the table is made.
    """

    #: The line above the table.
    title: str = attrs.field(converter=printable)
    #: Column headers.
    headers: Sequence[str] = attrs.field(converter=printable_all)
    #: Cells, row by row.
    rows: Sequence[Sequence[str]] = attrs.field(converter=_printable_rows)
    #: What each row is (a run's phase, e.g. ``recovered``), for its colour.
    styles: Sequence[str] = ()
    #: Lines under the table.
    footer: Sequence[str] = attrs.field(default=(), converter=printable_all)
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
