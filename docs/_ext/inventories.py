"""Write the offline intersphinx inventories of ``docs/_inv/``.

Why they are shipped rather than downloaded: ``docs/conf.py``.

``python docs/_ext/inventories.py`` writes ``trio.inv`` and ``httpx.inv``
from the tables below.  With ``--python PATH`` (the ``objects.inv`` of the
Python 3.11 documentation, e.g. from Debian's ``python3.11-doc`` package:
``/usr/share/doc/python3.11/html/objects.inv``) it also writes
``python.inv``: the entries of that inventory named in ``PYTHON`` below,
unchanged.  Each table lists only what these pages link to.
"""

from __future__ import annotations

import argparse
import pathlib
import zlib

HERE = pathlib.Path(__file__).parent
OUT = HERE.parent / "_inv"

# (name, domain:role, page#anchor) on https://trio.readthedocs.io/en/stable/
TRIO: list[tuple[str, str, str]] = [
    ("trio", "py:module", "reference-core.html#module-trio"),
    ("trio.Nursery", "py:class", "reference-core.html#trio.Nursery"),
    ("trio.Nursery.start", "py:method", "reference-core.html#trio.Nursery.start"),
    ("trio.open_nursery", "py:function", "reference-core.html#trio.open_nursery"),
    ("trio.CancelScope", "py:class", "reference-core.html#trio.CancelScope"),
    ("trio.Cancelled", "py:exception", "reference-core.html#trio.Cancelled"),
    (
        "trio.ClosedResourceError",
        "py:exception",
        "reference-core.html#trio.ClosedResourceError",
    ),
    (
        "trio.TASK_STATUS_IGNORED",
        "py:data",
        "reference-core.html#trio.TASK_STATUS_IGNORED",
    ),
    ("trio.TaskStatus", "py:class", "reference-core.html#trio.TaskStatus"),
    ("trio.sleep_until", "py:function", "reference-core.html#trio.sleep_until"),
    ("trio.current_time", "py:function", "reference-core.html#trio.current_time"),
    ("trio.run", "py:function", "reference-core.html#trio.run"),
    ("trio.CapacityLimiter", "py:class", "reference-core.html#trio.CapacityLimiter"),
    (
        "trio.MemoryReceiveChannel",
        "py:class",
        "reference-core.html#trio.MemoryReceiveChannel",
    ),
    (
        "trio.MemorySendChannel",
        "py:class",
        "reference-core.html#trio.MemorySendChannel",
    ),
    ("trio.Event", "py:class", "reference-core.html#trio.Event"),
    (
        "trio.testing.MockClock",
        "py:class",
        "reference-testing.html#trio.testing.MockClock",
    ),
]

# (name, domain:role, page#anchor) on https://www.python-httpx.org/
HTTPX: list[tuple[str, str, str]] = [
    ("httpx", "py:module", "api/"),
    ("httpx.AsyncClient", "py:class", "api/#asyncclient"),
    ("httpx.AsyncBaseTransport", "py:class", "advanced/transports/#custom-transports"),
    ("httpx.MockTransport", "py:class", "advanced/transports/#mock-transports"),
    ("httpx.ASGITransport", "py:class", "advanced/transports/#asgi-transport"),
    ("httpx.Request", "py:class", "api/#request"),
    ("httpx.Response", "py:class", "api/#response"),
    ("httpx.Timeout", "py:class", "advanced/timeouts/"),
]

# Names taken from the official Python inventory, as (name, domain:role).
PYTHON: list[tuple[str, str]] = [
    ("BaseException", "py:exception"),
    ("Exception", "py:exception"),
    ("ExceptionGroup", "py:exception"),
    ("KeyError", "py:exception"),
    ("None", "py:data"),
    ("OSError", "py:exception"),
    ("TypeError", "py:exception"),
    ("ValueError", "py:exception"),
    ("bool", "py:class"),
    ("collections.abc.AsyncIterator", "py:class"),
    ("collections.abc.Awaitable", "py:class"),
    ("collections.abc.Callable", "py:class"),
    ("collections.abc.Iterable", "py:class"),
    ("collections.abc.Mapping", "py:class"),
    ("collections.abc.MutableMapping", "py:class"),
    ("contextlib.AbstractAsyncContextManager", "py:class"),
    ("contextlib.AbstractContextManager", "py:class"),
    ("datetime.datetime", "py:class"),
    ("dict", "py:class"),
    ("float", "py:class"),
    ("frozenset", "py:class"),
    ("int", "py:class"),
    ("list", "py:class"),
    ("object", "py:class"),
    ("os.PathLike", "py:class"),
    ("str", "py:class"),
    ("tuple", "py:class"),
    ("typing.Any", "py:data"),
    ("typing.Literal", "py:data"),
]


def _header(project: str, version: str) -> bytes:
    return (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    ).encode()


def write(path: pathlib.Path, project: str, version: str, lines: list[str]) -> None:
    """Write one inventory (format version 2) with these entry lines."""
    body = "".join(f"{line}\n" for line in sorted(set(lines))).encode()
    path.write_bytes(_header(project, version) + zlib.compress(body, 9))


def _entries(table: list[tuple[str, str, str]]) -> list[str]:
    lines = []
    for name, role, uri in table:
        display = "-"
        lines.append(f"{name} {role} 1 {uri} {display}")
    return lines


def _python_lines(source: pathlib.Path) -> list[str]:
    raw = source.read_bytes()
    head, _, rest = raw.partition(b"compressed using zlib.\n")
    del head
    wanted = set(PYTHON)
    lines = []
    for line in zlib.decompress(rest).decode().splitlines():
        name, role = line.split(" ", 2)[:2]
        if (name, role) in wanted:
            lines.append(line)
            wanted.discard((name, role))
    if wanted:
        raise SystemExit(f"not in {source}: {sorted(wanted)}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", type=pathlib.Path, help="Python's objects.inv")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    write(OUT / "trio.inv", "Trio", "0.35", _entries(TRIO))
    write(OUT / "httpx.inv", "HTTPX", "0.28", _entries(HTTPX))
    if args.python is not None:
        write(OUT / "python.inv", "Python", "3.11", _python_lines(args.python))


if __name__ == "__main__":
    main()
