"""The seams: what the monitor and executor need from a Tinker client.

The native client (`open_service_client`), the official SDK adapter and a
test's own fake all fit these protocols; nothing here imports them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias, runtime_checkable

if TYPE_CHECKING:
    from ._types import Checkpoint, TrainingRun, TrainingRunPage

__all__ = [
    "ListingRestClientProtocol",
    "RestClientFactory",
    "RestClientProtocol",
    "ServiceProtocol",
]


@runtime_checkable
class RestClientProtocol(Protocol):
    """Reads runs and their checkpoints."""

    async def get_training_run(self, run_id: str) -> TrainingRun:
        """The run as the service reports it now."""
        ...

    async def list_checkpoints(self, run_id: str) -> list[Checkpoint]:
        """The run's checkpoints, in any order."""
        ...


@runtime_checkable
class ListingRestClientProtocol(RestClientProtocol, Protocol):
    """A REST client that can also list runs a page at a time.

    Optional: the monitor coalesces the polls of runs read through such a
    client into list pages (``open_monitor(polling=...)``), and
    ``Monitor.monitor_all`` needs one.  A client without it is polled one
    run at a time.
    """

    async def list_training_runs(
        self,
        *,
        limit: int = 100,
        offset: int = 0,
        access_scope: Literal["owned", "accessible"] = "owned",
        project_id: str | None = None,
    ) -> TrainingRunPage:
        """One page of the runs the key can see."""
        ...


@runtime_checkable
class ServiceProtocol(Protocol):
    """Creates training clients from checkpoints, and REST clients."""

    async def create_training_client_from_state(self, path: str) -> Any:
        """A training client restored from ``path``, weights only."""
        ...

    async def create_training_client_from_state_with_optimizer(self, path: str) -> Any:
        """A training client restored from ``path`` with its optimizer state."""
        ...

    def create_rest_client(self) -> RestClientProtocol:
        """A REST client for polling runs."""
        ...


#: Turns a service into the REST client used to poll its runs; sync or async.
RestClientFactory: TypeAlias = Callable[
    [Any], RestClientProtocol | Awaitable[RestClientProtocol]
]
