"""The simulator fixtures, for the SDK compatibility tests."""

from __future__ import annotations

from trio_tinkex_recovery.testing.pytest_plugin import (
    fake_tinker,
    fake_tinker_transport,
    fake_tinker_url,
)

__all__ = ["fake_tinker", "fake_tinker_transport", "fake_tinker_url"]
