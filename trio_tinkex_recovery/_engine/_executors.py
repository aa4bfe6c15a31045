"""Making executors: `open_executor` for a program, `new_executor` for a monitor."""

from __future__ import annotations

import random
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from .._validators import check_number
from ._executor import Executor
from ._telemetry import Telemetry

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from .._protocols import RestClientProtocol, ServiceProtocol
    from .._store._base import Store

__all__ = ["check_max_concurrent", "new_executor", "open_executor"]


@asynccontextmanager
async def open_executor(
    *,
    rest: RestClientProtocol | None = None,
    service: ServiceProtocol | None = None,
    max_concurrent: int = 1,
    store: Store | None = None,
) -> AsyncIterator[Executor]:
    """Run an executor for the duration of the ``async with`` block.

    Args:
        rest: Reads runs and checkpoints for every recovery; by default each
            recovery uses its service's ``create_rest_client()``.
        service: The default service for `Executor.recover` calls that pass
            ``None``.
        max_concurrent: How many attempts may run at once (≥ 1).
        store: The journal each recovery's progress is written to (before
            its side effects); see `open_store`.  ``None`` keeps it in memory.

    Leaving the block cancels recoveries still in progress (their records
    end as ``interrupted``) and callbacks still running.
    """
    executor = new_executor(
        rest=rest,
        service=service,
        max_concurrent=max_concurrent,
        telemetry=Telemetry(),
        journal=store,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(executor.run)
        try:
            yield executor
        finally:
            nursery.cancel_scope.cancel()


def check_max_concurrent(max_concurrent: object) -> None:
    """Reject a ``max_concurrent`` that is not an int ≥ 1."""
    check_number("max_concurrent", max_concurrent, minimum=1, integer=True)


def new_executor(
    *,
    rest: RestClientProtocol | None,
    service: ServiceProtocol | None,
    max_concurrent: int,
    telemetry: Telemetry,
    rng: random.Random | None = None,
    journal: Store | None = None,
) -> Executor:
    """Make an executor that emits through ``telemetry`` (a monitor's own)."""
    check_max_concurrent(max_concurrent)
    return Executor._create(
        rest=rest,
        service=service,
        max_concurrent=max_concurrent,
        telemetry=telemetry,
        rng=rng or random.Random(),
        journal=journal,
    )
