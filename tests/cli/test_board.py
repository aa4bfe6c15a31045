"""The board and its views: built from events and recovery records only.

In-process, with hand-made events: hostile server text, dropped events and
interrupted recoveries.
"""

from __future__ import annotations

import io
import json
import re
import sys

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_tinkex_recovery import Policy, RecoveryState, Statistics, TelemetryEvent
from trio_tinkex_recovery.cli._board import Board
from trio_tinkex_recovery.cli._runtime import Output
from trio_tinkex_recovery.cli._view import (
    JsonView,
    LinesView,
    LiveView,
    View,
    make_view,
)

POLICY = Policy(enabled=True)
#: What a terminal would act on: C0/C1 controls, DEL, bidi controls.
UNSAFE = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
#: A line our output could have: a note, stamped with seconds.
FORGED = "[ 99.9s] run-1: recovered → run-x from ckpt-9"
HOSTILE = {
    "newline": f"x\n{FORGED}",
    "carriage return": f"x\r{FORGED}",
    "ansi": f"\x1b[2K\x1b[1G{FORGED}",
    "osc": "\x1b]0;owned\x07\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\",
    "c1": f"\x9b2J\x85{FORGED}",
    "bidi": "\u202egnp.exe",
}


def event(name, run_id="run-1", **metadata) -> TelemetryEvent:
    """An event as the monitor would send it, at the current Trio time."""
    attempt = metadata.get("attempt")
    return TelemetryEvent(
        name=name,
        run_id=run_id,
        time=trio.current_time(),
        measurements={} if attempt is None else {"attempt": attempt},
        metadata={**metadata, "run_id": run_id},
    )


def hostile_events(text: str) -> list[TelemetryEvent]:
    """A recovery whose every server-supplied string carries ``text``."""
    path = f"tinker://run-1/weights/{text}"
    return [
        event("polled", checkpoint=path, corrupted=False, note=text),
        event("poll_error", error=RuntimeError(text)),
        event("polled", checkpoint=path, corrupted=True),
        event("detected", checkpoint=path),
        event("started", attempt=1),
        event("checkpoint_selected", attempt=1, checkpoint=path),
        event("failed", attempt=1, error=RuntimeError(text)),
        event("completed", attempt=2, checkpoint=path, new_run_id=text),
    ]


def recovered(text: str) -> dict[str, RecoveryState]:
    """The record of run-1 recovered into a run named ``text``."""
    return {
        "run-1": RecoveryState(
            run_id="run-1",
            phase="done",
            attempt=2,
            checkpoint=f"tinker://run-1/weights/{text}",
            new_run_id=text,
            error=text,
        )
    }


def play(view: View, events: list[TelemetryEvent], recoveries) -> Board:
    """Feed ``events`` and ``recoveries`` to a board drawn by ``view``; close it."""
    board = Board(policy=POLICY, view=view)
    view.open("watching")
    for item in events:
        board.on_event(item)
    board.update(recoveries, Statistics(polls=3))
    view.tick(board.stats)
    view.close(board.summary(title="summary", footer=[board.totals()]))
    return board


async def test_plain_lines_never_show_server_controls():
    """--plain: server text is shown without controls; no line can be forged."""
    for name, text in HOSTILE.items():
        out = io.StringIO()
        play(LinesView(Output(out)), hostile_events(text), recovered(text))
        shown = out.getvalue()
        assert not UNSAFE.search(shown), name
        assert not any(line.startswith("[ 99.9s]") for line in shown.splitlines())
        assert "run-1: recovered → " in shown  # the real note is there


async def test_live_view_never_shows_server_controls():
    """The live table and its summary: server text without controls."""
    for name, text in HOSTILE.items():
        out = io.StringIO()  # not a terminal: rich adds no escape of its own
        play(LiveView(Output(out), title=text), hostile_events(text), recovered(text))
        shown = out.getvalue()
        assert not UNSAFE.search(shown), name
        assert "recovered" in shown


async def test_json_lines_escape_server_controls():
    """--json: one line per event, control characters escaped, text intact."""
    text = HOSTILE["ansi"]
    out, err = io.StringIO(), io.StringIO()
    play(JsonView(Output(out), Output(err)), hostile_events(text), recovered(text))
    lines = out.getvalue().splitlines()
    assert len(lines) == len(hostile_events(text))
    assert not UNSAFE.search(out.getvalue())
    assert json.loads(lines[-1])["metadata"]["new_run_id"] == text
    assert not UNSAFE.search(err.getvalue())


EVENTS = [
    event_args
    for event_args in [
        ("polled", "run-1", {"checkpoint": "tinker://run-1/weights/a", "corrupted": 0}),
        ("poll_error", "run-1", {"error": RuntimeError("503")}),
        ("polled", "run-1", {"checkpoint": None, "corrupted": True}),
        ("detected", "run-1", {"checkpoint": "tinker://run-1/weights/a"}),
        ("started", "run-1", {"attempt": 1}),
        ("checkpoint_selected", "run-1", {"attempt": 1, "checkpoint": 7}),
        ("failed", "run-1", {"attempt": 1, "error": None}),
        ("completed", "run-1", {"attempt": 2, "new_run_id": "run-1b"}),
        ("polled", "run-1b", {"checkpoint": "tinker://run-1/weights/a"}),
        ("interrupted", "run-2", {"attempt": 3}),
        ("exhausted", "run-3", {}),
    ]
]


@settings(max_examples=60, deadline=None)
@given(kept=st.lists(st.booleans(), min_size=len(EVENTS), max_size=len(EVENTS)))
def test_dropped_events_leave_a_working_board(kept):
    """Any events lost (a full buffer): the board still draws every run."""

    async def main() -> str:
        out = io.StringIO()
        events = [
            event(name, run_id, **meta)
            for keep, (name, run_id, meta) in zip(kept, EVENTS, strict=True)
            if keep
        ]
        records = {
            "run-1": RecoveryState(run_id="run-1", phase="done", new_run_id="run-1b"),
            "run-2": RecoveryState(run_id="run-2", phase="interrupted", attempt=3),
        }
        board = play(LinesView(Output(out)), events, records)
        assert board.exhausted() == []
        return out.getvalue()

    shown = trio.run(main)
    assert re.search(r"^run-1 +recovered → run-1b ", shown, re.MULTILINE)
    assert re.search(r"^run-1b ", shown, re.MULTILINE)
    assert re.search(r"^run-2 +interrupted ", shown, re.MULTILINE)
    assert shown.count("run-2: recovery INTERRUPTED at attempt 3") == 1


async def test_an_interrupted_recovery_is_not_exhausted():
    """An interrupted record: noted once, shown as interrupted, not a failure."""
    out = io.StringIO()
    records = {
        "run-1": RecoveryState(run_id="run-1", phase="interrupted", attempt=2),
        "run-2": RecoveryState(run_id="run-2", phase="exhausted", attempt=3),
    }
    board = play(
        LinesView(Output(out)),
        [event("interrupted", attempt=2), event("exhausted", "run-2", attempt=3)],
        records,
    )
    shown = out.getvalue()
    assert shown.count("run-1: recovery INTERRUPTED at attempt 2") == 1
    assert re.search(r"^run-1 +interrupted +0 +0 +2/3 ", shown, re.MULTILINE)
    assert board.exhausted() == ["run-2"]
    assert "2 run(s): 1 interrupted, 1 exhausted; 3 polls, 0 failed" in shown


def test_live_view_without_rich_falls_back_to_lines(monkeypatch, capsys):
    """Without rich, the live view becomes plain lines, and says why."""
    monkeypatch.setitem(sys.modules, "rich", None)
    view = make_view("live", title="t", out=Output(sys.stdout), err=Output(sys.stderr))
    assert isinstance(view, LinesView)
    assert "pip install 'trio-tinkex-recovery[cli]'" in capsys.readouterr().err
