"""An adapter for the official ``tinker`` SDK (the ``tinker`` extra).

For users who train with the official SDK and want a real
``tinker.TrainingClient`` back when a run is recovered::

    import tinker
    from trio_tinkex_recovery import Policy, open_monitor
    from trio_tinkex_recovery.sdk import SDKService

    service = SDKService(tinker.ServiceClient())
    async with open_monitor(policy=Policy(enabled=True), service=service) as monitor:
        await monitor.monitor_run("run-1")

The SDK is synchronous from Trio's point of view (it runs its own asyncio
loop in a thread), so every call goes through ``trio.to_thread.run_sync``.
A cancelled call is abandoned: the SDK finishes it in its own thread and
its result is dropped.  SDK errors are translated into this library's error
tree (``raise ... from``) so the executor can tell retryable from final ones.
"""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import trio

from ._errors import (
    APIConnectionError,
    APITimeoutError,
    CheckpointUnavailableError,
    RequestFailedError,
    TinkerAPIError,
    error_for_status,
)
from ._types import (
    Checkpoint,
    TrainingRun,
    TrainingRunPage,
    list_params,
    parse_tinker_path,
    validate_run_id,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    import tinker

__all__ = ["SDKRestClient", "SDKService"]

_T = TypeVar("_T")


def _translate(exc: Exception, *, path: str | None = None) -> Exception:
    """This library's error for an SDK error; anything else unchanged."""
    import tinker

    if isinstance(exc, tinker.RequestFailedError):
        category = str(getattr(exc, "category", "unknown")).lower()
        if category == "user" and path is not None:
            return CheckpointUnavailableError(
                f"restoring {path} failed: {exc.message}", path=path
            )
        return RequestFailedError(str(exc), category=category)
    if isinstance(exc, tinker.APITimeoutError):
        return APITimeoutError(str(exc))
    if isinstance(exc, tinker.APIConnectionError):
        return APIConnectionError(str(exc))
    if isinstance(exc, tinker.APIStatusError):
        status = exc.status_code
        if path is not None and status in (404, 410):
            return CheckpointUnavailableError(
                f"checkpoint {path} is unavailable: HTTP {status}",
                path=path,
                status=status,
            )
        return error_for_status(status, f"HTTP {status}: {exc.message}")
    if isinstance(exc, tinker.APIError):
        # e.g. APIResponseValidationError: the answer did not parse.
        return TinkerAPIError(str(exc), retryable=True)
    return exc


async def _call(function: Callable[[], _T], *, path: str | None = None) -> _T:
    try:
        return await trio.to_thread.run_sync(function, abandon_on_cancel=True)
    except Exception as exc:
        translated = _translate(exc, path=path)
        if translated is exc:
            raise
        raise translated from exc


class SDKRestClient:
    """Reads runs and checkpoints through a ``tinker.RestClient``.

    Args:
        rest_client: The SDK's REST client, or a callable that makes one.  A
            callable is called once, in a worker thread, on first use: the
            SDK may talk to the service while it builds its client, which
            must not block the Trio thread.
    """

    def __init__(
        self, rest_client: tinker.RestClient | Callable[[], tinker.RestClient]
    ) -> None:
        self._factory = rest_client if callable(rest_client) else None
        self._rest = None if callable(rest_client) else rest_client
        self._lock = trio.Lock()

    async def _client(self) -> tinker.RestClient:
        async with self._lock:
            if self._rest is None:
                assert self._factory is not None
                self._rest = await _call(self._factory)
            return self._rest

    def __repr__(self) -> str:
        return "<SDKRestClient>"

    async def get_training_run(self, run_id: str) -> TrainingRun:
        """The run, as the SDK reads it, as a `~trio_tinkex_recovery.TrainingRun`.

        Raises:
            ValueError: ``run_id`` is not a valid run id (nothing is sent).
            TinkerAPIError: The SDK's request failed.
            ResponseValidationError: The SDK's answer does not convert.
        """
        validate_run_id(run_id)
        rest = await self._client()
        run = await _call(lambda: rest.get_training_run(run_id).result())
        return TrainingRun.from_json(run.model_dump(mode="json"))

    async def list_training_runs(
        self,
        *,
        limit: int = 100,
        offset: int = 0,
        access_scope: Literal["owned", "accessible"] = "owned",
        project_id: str | None = None,
    ) -> TrainingRunPage:
        """One page of runs, as the SDK's ``list_training_runs`` reads it.

        Raises:
            ValueError: A bad ``limit``, ``offset``, ``access_scope`` or
                ``project_id`` (nothing is sent).
            TinkerAPIError: The SDK's request failed.
            ResponseValidationError: The SDK's answer does not convert.
        """
        list_params(
            limit=limit, offset=offset, access_scope=access_scope, project_id=project_id
        )
        rest = await self._client()
        response = await _call(
            lambda: rest.list_training_runs(
                limit=limit,
                offset=offset,
                access_scope=access_scope,
                project_id=project_id,
            ).result()
        )
        return TrainingRunPage.from_json(response.model_dump(mode="json"))

    async def list_checkpoints(self, run_id: str) -> list[Checkpoint]:
        """The run's checkpoints, converted to `~trio_tinkex_recovery.Checkpoint`.

        Raises:
            ValueError: ``run_id`` is not a valid run id (nothing is sent).
            TinkerAPIError: The SDK's request failed.
            ResponseValidationError: An answer does not convert.
        """
        validate_run_id(run_id)
        rest = await self._client()
        listing = await _call(lambda: rest.list_checkpoints(run_id).result())
        return [
            Checkpoint.from_json(c.model_dump(mode="json")) for c in listing.checkpoints
        ]


class SDKService:
    """The service seam over a ``tinker.ServiceClient``.

    Args:
        service_client: The SDK's service client; its training clients are
            what ``on_recovery`` receives as ``new_client``.
        rest_client: The SDK REST client used for polling; by default the
            one ``service_client.create_rest_client()`` makes.
    """

    def __init__(
        self,
        service_client: tinker.ServiceClient,
        *,
        rest_client: tinker.RestClient | None = None,
    ) -> None:
        self._service = service_client
        self._rest_client = rest_client
        self._rest: SDKRestClient | None = None

    def __repr__(self) -> str:
        return "<SDKService>"

    def create_rest_client(self) -> SDKRestClient:
        """A REST client (one per adapter) for polling runs.

        Never blocks: the SDK's own REST client is built on first use, in a
        worker thread.
        """
        if self._rest is None:
            self._rest = SDKRestClient(self._rest_client or self._sdk_rest_client)
        return self._rest

    def _sdk_rest_client(self) -> tinker.RestClient:
        with warnings.catch_warnings():
            # The SDK deprecates ServiceClient.create_rest_client() in favour
            # of tinker.RestClient(); both reach the same API.
            warnings.simplefilter("ignore", FutureWarning)
            return self._service.create_rest_client()

    async def create_training_client_from_state(self, path: str) -> Any:
        """A ``tinker.TrainingClient`` restored from ``path``, weights only.

        Raises:
            ValueError: ``path`` is not a checkpoint path (nothing is sent).
            CheckpointUnavailableError: The checkpoint is gone or unusable.
            TinkerAPIError: Another failure, ``retryable`` set as it applies.
        """
        return await self._restore(
            self._service.create_training_client_from_state, path
        )

    async def create_training_client_from_state_with_optimizer(self, path: str) -> Any:
        """A ``tinker.TrainingClient`` restored from ``path`` with its optimizer.

        Raises:
            ValueError: ``path`` is not a checkpoint path (nothing is sent).
            CheckpointUnavailableError: The checkpoint is gone or unusable.
            TinkerAPIError: Another failure, ``retryable`` set as it applies.
        """
        return await self._restore(
            self._service.create_training_client_from_state_with_optimizer, path
        )

    async def _restore(self, create: Callable[[str], Any], path: str) -> Any:
        parse_tinker_path(path)
        return await _call(functools.partial(_result, create, path), path=path)


def _result(create: Callable[[str], Any], path: str) -> Any:
    return create(path).result()
