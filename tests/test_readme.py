"""The README's usage example runs as written."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).parent.parent / "README.rst"


def first_python_block(text: str) -> str:
    match = re.search(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", text)
    assert match is not None, "no python code block in the README"
    return "\n".join(line[4:] for line in match.group(1).splitlines())


def test_usage_example_runs():
    """The first code block recovers a run and prints the events it promises."""
    code = first_python_block(README.read_text(encoding="utf-8"))
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    events = [line.split()[0] for line in lines if not line.startswith("restarted")]
    assert events == [
        "detected",
        "started",
        "checkpoint_selected",
        "client_created",
        "completed",
    ]
    [restarted] = [line for line in lines if line.startswith("restarted as ")]
    assert restarted.endswith(":train:0")
