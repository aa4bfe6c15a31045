"""What the engine opens but cannot import: the native client and the stores.

The engine depends on protocols only.  The package's top (its
``__init__``, the composition root) plugs in the two openers below when it
is imported, so `open_monitor` can open a service from a `Config` (or from
the environment) and a journal from a path without importing either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

import attrs

if TYPE_CHECKING:
    import os
    from collections.abc import Callable
    from contextlib import AbstractAsyncContextManager

    from .._config import Config
    from .._protocols import ServiceProtocol
    from .._store._base import Store

__all__ = ["BACKENDS", "Backends", "ServiceOpener", "StoreOpener", "plug_in"]

#: Opens a service from a `Config` (``None``: from the environment).
ServiceOpener: TypeAlias = (
    "Callable[[Config | None], AbstractAsyncContextManager[ServiceProtocol]]"
)
#: Opens a journal by location (a path or a DSN).
StoreOpener: TypeAlias = (
    "Callable[[str | os.PathLike[str]], AbstractAsyncContextManager[Store]]"
)


@attrs.define
class Backends:
    """The openers the composition root plugged in (``None``: not yet)."""

    open_service: ServiceOpener | None = None
    open_store: StoreOpener | None = None


#: The one set of backends `open_monitor` uses.
BACKENDS = Backends()


def plug_in(*, open_service: ServiceOpener, open_store: StoreOpener) -> None:
    """Hand the engine its openers; called once by the package's top."""
    BACKENDS.open_service = open_service
    BACKENDS.open_store = open_store
