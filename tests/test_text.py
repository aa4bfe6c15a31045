"""`printable`: server text made safe for a terminal."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_tinkex_recovery._text import printable

FORGED = "[ 99.9s] run-1: recovered → run-x"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, ünïcode → ✓ 😀", "plain text, ünïcode → ✓ 😀"),
        (f"x\n{FORGED}", f"x {FORGED}"),
        (f"x\r{FORGED}", f"x {FORGED}"),
        ("a\tb\x0bc\x0cd", "a b c d"),
        ("\x1b[31mred\x1b[0m", "red"),
        ("\x1b[2K\x1b[1Gover", "over"),
        ("\x1b[?25l\x1b[38;5;196mhidden cursor", "hidden cursor"),
        ("\x1b]0;window title\x07after", "after"),
        ("\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\", "link"),
        ("\x1bP+q544e\x1b\\x", "x"),
        ("\x1b]unterminated osc to the end", ""),
        ("a\x1bcb\x1b7c\x1b(Bd", "abcd"),
        ("\x9b2J8-bit csi", "8-bit csi"),
        ("\x9d0;title\x9cafter", "after"),
        ("nul\x00bell\x07del\x7fnel\x85", "nulbelldelnel"),
        ("\u202egnp.exe", "gnp.exe"),
        ("a\u2066b\u2069c\u200fd\u061ce", "abcde"),
        ("line\u2028sep\u2029par", "lineseppar"),
    ],
)
def test_printable(text, shown):
    """Escape sequences go whole, white space becomes a space, controls go."""
    assert printable(text) == shown


@given(st.text())
def test_printable_leaves_nothing_a_terminal_acts_on(text):
    """Whatever the input: no control character, no bidi control, one line."""
    shown = printable(text)
    assert not set(shown) & {chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))}
    assert not set(shown) & set(
        "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
    )
    assert printable(shown) == shown
