"""The service client: a connection to Tinker, and how to open one.

It speaks the wire protocol of the official ``tinker`` SDK 0.38.0 (request
paths, JSON keys, the session and ``load_weights`` flow), over one
`HTTPClient` per service client.  What it does is spread by concept over
the package: the session and its heartbeat in ``_session.py``, restores
(plain and journaled) in ``_restore.py``, reads in ``_rest.py``, the
models made in ``_training_client.py``.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from .._config import Config
from .._secrets import register
from .._util import NoPublicConstructor
from ._http import HTTPClient, HTTPSettings
from ._rest import RestClient
from ._restore import Restorer
from ._session import FINISH_TIMEOUT, FinishReason, SessionKeeper

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping
    from typing import Any

    import httpx

    from .._store import Ledger
    from ._training_client import TrainingClient

__all__ = ["ServiceClient", "open_service_client", "open_tuned_service_client"]


class ServiceClient(metaclass=NoPublicConstructor):
    """A connection to Tinker: creates training clients and REST clients.

    Made by `open_service_client`; it has no public constructor.  Training
    clients it creates live in one session, created on first use and kept
    alive by a heartbeat until the service client closes.
    """

    _factory_hint = "use open_service_client()"

    def __init__(self, http: HTTPClient, nursery: trio.Nursery) -> None:
        self._http = http
        self._sessions = SessionKeeper(http, nursery)
        self._rest = RestClient._create(http)
        self._restorer = Restorer(http, self._sessions, self._rest)

    def __repr__(self) -> str:
        session = self._sessions.session_id
        return (
            f"<ServiceClient base_url={self._http.base_url!r} session_id={session!r}>"
        )

    @property
    def session_id(self) -> str | None:
        """The session's id, once a training client was created."""
        return self._sessions.session_id

    def create_rest_client(self) -> RestClient:
        """The REST client for reading runs and checkpoints (one per service).

        Raises:
            trio.ClosedResourceError: The service client is closed.
        """
        self._sessions.check_open()
        return self._rest

    async def create_lora_training_client(
        self,
        base_model: str,
        rank: int = 32,
        *,
        user_metadata: Mapping[str, Any] | None = None,
    ) -> TrainingClient:
        """A new LoRA model of ``base_model`` to train, in this client's session.

        ``POST /api/v1/create_model {"session_id", "model_seq_id",
        "base_model", "lora_config": {"rank"}, "user_metadata"?}``, then the
        result from ``retrieve_future`` (as the SDK's
        ``create_lora_training_client``).  The model has no checkpoint until
        it saves one (`TrainingClient.save_state`).

        Args:
            base_model: The base model, e.g. ``"Qwen/Qwen3-8B"``.
            rank: The LoRA rank.
            user_metadata: Stored with the training run.

        Raises:
            RequestFailedError: The service failed the creation.
            TinkerAPIError: A request failed (after retries if transient).
            trio.ClosedResourceError: The service client is closed.
        """
        return await self._restorer.create_lora(
            base_model, rank=rank, user_metadata=user_metadata
        )

    async def create_training_client_from_state(self, path: str) -> TrainingClient:
        """A new model restored from the checkpoint at ``path``, weights only.

        Args:
            path: ``tinker://{run}/weights/{name}``.

        Raises:
            TypeError: ``path`` is not a str.
            ValueError: ``path`` is not a checkpoint path (checked before
                sending).
            CheckpointUnavailableError: The checkpoint is gone, expired or
                unusable: the service answered 404/410 for it, or failed the
                load with category ``user``.
            RequestFailedError: The service failed the load for another reason
                (retryable).
            TinkerAPIError: A request failed (after retries if transient).
            ResponseValidationError: An answer is malformed.
            trio.ClosedResourceError: The service client is closed.
        """
        return await self._restorer.restore(path, optimizer=False)

    async def create_training_client_from_state_with_optimizer(
        self, path: str
    ) -> TrainingClient:
        """A new model restored from ``path`` with its optimizer state.

        Args:
            path: ``tinker://{run}/weights/{name}``.

        Raises:
            TypeError: ``path`` is not a str.
            ValueError: ``path`` is not a checkpoint path.
            CheckpointUnavailableError: The checkpoint is gone, expired or
                unusable (404/410, or the load failed with category ``user``).
            RequestFailedError: The service failed the load for another reason.
            TinkerAPIError: A request failed (after retries if transient).
            ResponseValidationError: An answer is malformed.
            trio.ClosedResourceError: The service client is closed.
        """
        return await self._restorer.restore(path, optimizer=True)

    async def restore_with_ledger(
        self, path: str, *, optimizer: bool, ledger: Ledger
    ) -> TrainingClient:
        """Restore ``path`` writing every side effect ahead in ``ledger``.

        What the monitor uses with a journal, so that a watcher killed at
        any point and started again restores the run exactly once:

        - a restore of this run that may have been sent before (its record
          has no outcome) is reconciled first: if its model
          ``{session_id}:train:{model_seq_id}`` exists, it completed and is
          returned; otherwise the very same request (same idempotency key,
          same body) is sent again, unless the service says its session is
          gone;
        - the session is created with a key written beforehand, and reused
          across restarts while the service says it is alive;
        - each ``load_weights`` is written (key, session, sequence number,
          path, optimizer flag) before it is sent, its request id once
          accepted, and its outcome once known (a success is marked by the
          caller through ``ledger.settle()``, after it recorded the recovery).

        Raises:
            StoreError: A journal write failed; nothing it was meant to
                precede was sent.
            Exception: As `create_training_client_from_state`.
        """
        return await self._restorer.restore_with_ledger(
            path, optimizer=optimizer, ledger=ledger
        )

    async def aclose(self, *, reason: FinishReason = "success") -> None:
        """Finish the session (if any) and close the connection pool.

        Idempotent.  It tells the service the session is finished (at most
        ~10 s, shielded from cancellation; a failure is logged), so training
        clients made here stop working.

        Args:
            reason: The finish reason sent to the service.
        """
        if self._sessions.closed:
            await trio.lowlevel.checkpoint()
            return
        self._sessions.close()
        with trio.move_on_after(FINISH_TIMEOUT, shield=True):
            try:
                await self._sessions.finish(reason)
            finally:
                await self._http.aclose()


@asynccontextmanager
async def open_service_client(
    config: Config | None = None, *, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[ServiceClient]:
    """Connect to Tinker for the duration of the ``async with`` block.

    Args:
        config: Where and how; ``Config.from_env()`` when ``None``.
        transport: An httpx transport to use instead of the network, e.g.
            ``FakeTinker().transport()`` or ``httpx.MockTransport``.

    Yields:
        The `ServiceClient`.  Leaving the block finishes its session and
        closes it.  Like every nursery-owning context manager, an exception
        from the block surfaces as an `ExceptionGroup`.

    Raises:
        ValueError: ``config`` is ``None`` and the environment has no valid
            ``TINKER_API_KEY``.
    """
    async with open_tuned_service_client(config, transport=transport) as service:
        yield service


@asynccontextmanager
async def open_tuned_service_client(
    config: Config | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    settings: HTTPSettings | None = None,
) -> AsyncIterator[ServiceClient]:
    """`open_service_client` with the HTTP layer's knobs, for benchmarks."""
    if config is None:
        config = Config.from_env()
    http = HTTPClient(config, transport=transport, settings=settings)
    unregister = register(config.api_key)  # masked in every log line and event
    try:
        async with trio.open_nursery() as nursery:
            service = ServiceClient._create(http, nursery)
            reason: FinishReason = "success"
            try:
                yield service
            except Exception:
                reason = "errored"
                raise
            except BaseException:
                reason = "interrupted"
                raise
            finally:
                await service.aclose(reason=reason)
    finally:
        try:
            await http.aclose()
        finally:
            unregister()
