"""Text safe to show on a terminal, whatever a server put in it.

Run ids, checkpoint paths, error messages and metadata come from a server.
Printed as they are, an escape sequence in one could recolour, move the
cursor, retitle the window or rewrite a line already shown; a newline could
start a line of its own that looks like ours (``[ 99.9s] run-1: recovered``).
`printable` is applied to such text before a person sees it.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["printable"]

#: Escape sequences, whole: what a terminal would act on, not only its ESC.
_SEQUENCE: Final = re.compile(
    r"""
    (?:\x1b\[|\x9b) [\x30-\x3f]* [\x20-\x2f]* [\x40-\x7e]?   # CSI (colours, cursor)
    | (?:\x1b[\]PX^_]|[\x90\x98\x9d-\x9f])                  # OSC, DCS, SOS, PM, APC
      .*? (?:\x07|\x1b\\|\x9c|\Z)                           # ... up to their end
    | \x1b [\x20-\x2f]* [\x30-\x7e]?                        # any other ESC sequence
    """,
    re.VERBOSE | re.DOTALL,
)
#: What is left of controls after the sequences: white space becomes a space,
#: other C0/C1 controls, DEL, bidi controls and line separators go.
_CONTROLS: Final = {
    **{code: None for code in (*range(0x20), *range(0x7F, 0xA0))},
    **{ord(c): " " for c in "\t\n\v\f\r"},
    **{
        code: None
        for code in (
            0x061C,  # ARABIC LETTER MARK
            0x200E,  # LEFT-TO-RIGHT MARK
            0x200F,  # RIGHT-TO-LEFT MARK
            0x2028,  # LINE SEPARATOR
            0x2029,  # PARAGRAPH SEPARATOR
            *range(0x202A, 0x202F),  # embeddings and overrides (LRE … RLO)
            *range(0x2066, 0x206A),  # isolates (LRI … PDI)
        )
    },
}


def printable(text: str) -> str:
    """``text`` without escape sequences, control characters or bidi controls.

    Escape sequences (CSI, OSC and the other ESC forms, in their 7-bit and
    8-bit spellings) are removed whole; tabs, newlines and carriage returns
    become spaces, so the text stays on one line; every other C0 or C1
    control, DEL, and the Unicode bidi controls and line separators are
    removed.  Everything else, non-ASCII letters included, is kept.

    Args:
        text: Text that may have come from a server.

    Returns:
        The text as it may be shown on a terminal.
    """
    return _SEQUENCE.sub("", text).translate(_CONTROLS)
