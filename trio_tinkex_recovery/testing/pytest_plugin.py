"""Pytest fixtures for the Tinker simulator (needs pytest-trio).

Enable them in your top-level ``conftest.py``::

    pytest_plugins = ["trio_tinkex_recovery.testing.pytest_plugin"]

Fixtures:

- ``fake_tinker``: a fresh, empty
  `~trio_tinkex_recovery.testing.FakeTinker`;
- ``fake_tinker_transport``: an ``httpx.ASGITransport`` over it, for
  in-process clients (use with ``autojump_clock``);
- ``fake_tinker_url``: its base URL, served by hypercorn on 127.0.0.1 with a
  free port for the duration of the test (real I/O: no ``autojump_clock``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from ._fake import FakeTinker
from ._server import serve_fake_tinker

if TYPE_CHECKING:
    import httpx
    import trio

__all__ = ["fake_tinker", "fake_tinker_transport", "fake_tinker_url"]


@pytest.fixture
def fake_tinker() -> FakeTinker:
    """A fresh, empty Tinker simulator."""
    return FakeTinker()


@pytest.fixture
def fake_tinker_transport(fake_tinker: FakeTinker) -> httpx.ASGITransport:
    """An in-process ``httpx`` transport over ``fake_tinker``."""
    return fake_tinker.transport()


@pytest.fixture
async def fake_tinker_url(fake_tinker: FakeTinker, nursery: trio.Nursery) -> str:
    """``fake_tinker`` served on loopback; its base URL."""
    url: str = await nursery.start(serve_fake_tinker, fake_tinker)
    return url
