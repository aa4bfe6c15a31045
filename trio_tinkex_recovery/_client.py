"""The native Tinker client, for Trio: ServiceClient and RestClient.

(`TrainingClient` lives in ``_training_client.py``.)  This module is about
700 lines on purpose: a ``ServiceClient``'s session, its heartbeat, and the
restores made in it (plain ones, and the journaled ones that write every
side effect ahead and reconcile after a crash) share one piece of state,
the session, and read best side by side.

It speaks the wire protocol of the official ``tinker`` SDK 0.38.0 (request
paths, JSON keys, the session and ``load_weights`` flow), over one
`HTTPClient` per service client.

Restoring a checkpoint, as ``tinker/lib/public_interfaces/service_client.py``
does it (``_create_training_client_via_load_weights_submit``)::

    POST /api/v1/weights_info     {"tinker_path"}       base model, LoRA rank
    POST /api/v1/client/config    {"sdk_version"}       once per service client
    POST /api/v1/create_session   {...}                 once per service client
    POST /api/v1/load_weights     {"session_id", "model_seq_id", "path",
                                   "optimizer", "type": "load_weights"}
    POST /api/v1/retrieve_future  {"request_id", ...}   until a result

and the new model's id is ``f"{session_id}:train:{model_seq_id}"``.

A restore is never duplicated by our own retries: its HTTP retries reuse one
idempotency key and one body, and a restore that failed without a clear
answer (timeout, dropped connection, server error, cancellation) is
remembered, so that the next restore of the same path with the same
optimizer choice sends the very same request again (same key, same
``session_id`` and ``model_seq_id``) instead of a new one: the server
answers it with the model it already made.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final, Literal

import attrs
import trio

from . import _test_mode
from ._config import Config
from ._errors import (
    APIStatusError,
    CheckpointUnavailableError,
    NotFoundError,
    RequestFailedError,
    ResponseValidationError,
    TinkerAPIError,
    TinkexRecoveryError,
)
from ._failpoints import crash_point
from ._futures import retrieve_future
from ._http import HTTPClient, HTTPSettings, new_idempotency_key
from ._operations import GONE, Operation, is_definitive, required_str
from ._secrets import register
from ._store import LoadRecord, SessionRecord
from ._training_client import TrainingClient
from ._types import (
    Checkpoint,
    TrainingRun,
    TrainingRunPage,
    WeightsInfo,
    list_params,
    parse_tinker_path,
    validate_run_id,
)
from ._util import NoPublicConstructor

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    import httpx

    from ._store import Ledger

__all__ = ["RestClient", "ServiceClient", "TrainingClient", "open_service_client"]

logger = logging.getLogger("trio_tinkex_recovery.client")

#: The SDK release whose wire protocol this client speaks; sent where the
#: SDK sends its own version (``client/config``, ``create_session``).
WIRE_SDK_VERSION: Final = "0.38.0"
#: The SDK sends a session heartbeat every 10 s (``internal_client_holder.py``).
HEARTBEAT_INTERVAL: Final = 10.0
#: How long closing may take to tell the service the session is finished.
_FINISH_TIMEOUT: Final = 10.0

_FinishReason = Literal["success", "errored", "interrupted"]


@attrs.define
class _Session:
    """The service client's session and what is numbered within it."""

    session_id: str
    next_model_seq_id: int = 0
    #: Restores that failed ambiguously, by (path, optimizer).
    pending_loads: dict[tuple[str, bool], Operation] = attrs.field(factory=dict)
    #: Set once the service said the session is over (heartbeat 410).
    expired: bool = False
    #: Stops this session's heartbeat.
    heartbeat_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)

    def take_model_seq_id(self) -> int:
        seq_id = self.next_model_seq_id
        self.next_model_seq_id += 1
        return seq_id


class RestClient(metaclass=NoPublicConstructor):
    """Reads training runs, their checkpoints and checkpoint weights info.

    Made by `ServiceClient.create_rest_client`; it shares the service
    client's connection pool and is usable until the service client closes.
    """

    _factory_hint = "use ServiceClient.create_rest_client()"

    def __init__(self, http: HTTPClient) -> None:
        self._http = http

    def __repr__(self) -> str:
        return f"<RestClient base_url={self._http.base_url!r}>"

    async def get_training_run(self, run_id: str) -> TrainingRun:
        """The run as the service reports it now.

        ``GET /api/v1/training_runs/{run_id}?access_scope=owned``.

        Raises:
            TypeError: ``run_id`` is not a str.
            ValueError: ``run_id`` cannot be a run id (checked before sending).
            NotFoundError: No such run.
            TinkerAPIError: The request failed (after retries if transient).
            ResponseValidationError: The answer is not a valid training run.
        """
        validate_run_id(run_id)
        body = await self._http.request(
            "GET", f"/api/v1/training_runs/{run_id}", params={"access_scope": "owned"}
        )
        return TrainingRun.from_json(body)

    async def list_training_runs(
        self,
        *,
        limit: int = 100,
        offset: int = 0,
        access_scope: Literal["owned", "accessible"] = "owned",
        project_id: str | None = None,
    ) -> TrainingRunPage:
        """One page of the runs the key can see, in the service's order.

        ``GET /api/v1/training_runs?limit&offset&access_scope[&project_id]``.
        The service may return fewer runs than ``limit`` asks for (its
        page maximum is in the page's ``limit``).

        Args:
            limit: The most runs to return.
            offset: How many runs of the whole list to skip.
            access_scope: ``"owned"`` (the key's own runs) or
                ``"accessible"`` (every run the key may read).
            project_id: Only the runs of this project.

        Raises:
            ValueError: A bad ``limit``, ``offset``, ``access_scope`` or
                ``project_id`` (checked before sending).
            NotFoundError: The service has no list endpoint.
            TinkerAPIError: The request failed (after retries if transient).
            ResponseValidationError: The answer is not a page of runs.
        """
        params = list_params(
            limit=limit, offset=offset, access_scope=access_scope, project_id=project_id
        )
        body = await self._http.request("GET", "/api/v1/training_runs", params=params)
        return TrainingRunPage.from_json(body)

    async def list_checkpoints(self, run_id: str) -> list[Checkpoint]:
        """The run's checkpoints, training and sampler, in the service's order.

        ``GET /api/v1/training_runs/{run_id}/checkpoints``.

        Raises:
            TypeError: ``run_id`` is not a str.
            ValueError: ``run_id`` cannot be a run id (checked before sending).
            NotFoundError: No such run.
            TinkerAPIError: The request failed (after retries if transient).
            ResponseValidationError: The answer is not a list of checkpoints.
        """
        validate_run_id(run_id)
        path = f"/api/v1/training_runs/{run_id}/checkpoints"
        body = await self._http.request_object("GET", path)
        items = body.get("checkpoints")
        if not isinstance(items, list):
            raise ResponseValidationError(
                f"GET {path}: expected a list at $.checkpoints, "
                f"got {type(items).__name__}"
            )
        checkpoints = []
        for index, item in enumerate(items):
            try:
                checkpoints.append(Checkpoint.from_json(item))
            except ResponseValidationError as exc:
                raise ResponseValidationError(
                    f"GET {path}: $.checkpoints[{index}]: {exc}"
                ) from exc
        return checkpoints

    async def get_weights_info(self, tinker_path: str) -> WeightsInfo:
        """What the service knows about a checkpoint's weights.

        ``POST /api/v1/weights_info {"tinker_path": ...}``.

        Raises:
            TypeError: ``tinker_path`` is not a str.
            ValueError: ``tinker_path`` is not a ``tinker://`` checkpoint path.
            CheckpointUnavailableError: The service has no such checkpoint
                (HTTP 404 or 410): it never existed, was deleted or expired.
            TinkerAPIError: The request failed (after retries if transient).
            ResponseValidationError: The answer is not valid weights info.
        """
        parse_tinker_path(tinker_path)
        try:
            body = await self._http.request(
                "POST", "/api/v1/weights_info", json={"tinker_path": tinker_path}
            )
        except APIStatusError as exc:
            if exc.status in GONE:
                raise CheckpointUnavailableError(
                    f"checkpoint {tinker_path} is unavailable: {exc.message}",
                    path=tinker_path,
                    status=exc.status,
                ) from exc
            raise
        return WeightsInfo.from_json(body)


class ServiceClient(metaclass=NoPublicConstructor):
    """A connection to Tinker: creates training clients and REST clients.

    Made by `open_service_client`; it has no public constructor.  Training
    clients it creates live in one session, created on first use and kept
    alive by a heartbeat until the service client closes.
    """

    _factory_hint = "use open_service_client()"

    def __init__(self, http: HTTPClient, nursery: trio.Nursery) -> None:
        self._http = http
        self._nursery = nursery
        self._session_lock = trio.Lock()
        self._session: _Session | None = None
        # One key for creating the session, however many times it is tried:
        # a retry after a lost answer gets the session already created.
        self._session_key = new_idempotency_key()
        self._rest: RestClient | None = None
        self._closed = False

    def __repr__(self) -> str:
        session = self._session.session_id if self._session else None
        return (
            f"<ServiceClient base_url={self._http.base_url!r} session_id={session!r}>"
        )

    @property
    def session_id(self) -> str | None:
        """The session's id, once a training client was created."""
        return self._session.session_id if self._session else None

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this ServiceClient is closed")

    def create_rest_client(self) -> RestClient:
        """The REST client for reading runs and checkpoints (one per service).

        Raises:
            trio.ClosedResourceError: The service client is closed.
        """
        self._check_open()
        if self._rest is None:
            self._rest = RestClient._create(self._http)
        return self._rest

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
        return await self._restore(path, optimizer=False)

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
        return await self._restore(path, optimizer=True)

    async def _restore(self, path: str, *, optimizer: bool) -> TrainingClient:
        self._check_open()
        parse_tinker_path(path)
        info = await self.create_rest_client().get_weights_info(path)
        session = await self._ensure_session()
        key = (path, optimizer)
        operation = session.pending_loads.pop(key, None) or Operation(
            seq_id=session.take_model_seq_id()
        )
        settled = False
        try:
            await self._load_weights(session, operation, path, optimizer=optimizer)
            settled = True
        except TinkerAPIError as exc:
            settled = not exc.retryable or is_definitive(exc)
            raise
        finally:
            if not settled and not session.expired:
                session.pending_loads[key] = operation
        return TrainingClient._create(
            model_id=f"{session.session_id}:train:{operation.seq_id}",
            session_id=session.session_id,
            base_model=info.base_model,
            lora_rank=info.lora_rank,
            checkpoint=Checkpoint.from_path(path),
            optimizer_restored=optimizer,
            http=self._http,
        )

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
        self._check_open()
        parse_tinker_path(path)
        doubt = ledger.in_doubt()
        if doubt is not None:
            client = await self._reconcile(doubt, ledger)
            if client is not None:
                return client
        info = await self.create_rest_client().get_weights_info(path)
        session = await self._ledger_session(ledger)
        # A sequence number is written as taken before it is used, so no two
        # restores, across restarts too, ever share one.
        seq = max(ledger.next_seq(session.session_id), session.next_model_seq_id)
        session.next_model_seq_id = seq + 1
        await ledger.put_session(
            SessionRecord(self._session_key, session.session_id, next_seq=seq + 1)
        )
        load = LoadRecord(
            key=new_idempotency_key(),
            run_id=ledger.run_id,
            attempt=ledger.attempt,
            session_id=session.session_id,
            model_seq_id=seq,
            path=path,
            optimizer=optimizer,
        )
        await ledger.put_load(load)
        crash_point("load-written")
        return await self._send_recorded_load(load, info, ledger)

    async def _send_recorded_load(
        self, load: LoadRecord, info: WeightsInfo, ledger: Ledger
    ) -> TrainingClient:
        """Send (or send again) a recorded ``load_weights``; record how it ended."""
        session = _Session(load.session_id)
        operation = Operation(seq_id=load.model_seq_id, key=load.key)

        async def accepted(request_id: str) -> None:
            nonlocal load
            load = attrs.evolve(load, request_id=request_id)
            await ledger.put_load(load)

        try:
            await self._load_weights(
                session,
                operation,
                load.path,
                optimizer=load.optimizer,
                accepted=accepted,
            )
        except TinkerAPIError as exc:
            if not exc.retryable or is_definitive(exc):
                await ledger.put_load(attrs.evolve(load, outcome="failed"))
            raise
        # Its outcome is written by the caller, after the recovery's own
        # outcome: until then a restart finds it in doubt and reconciles it.
        ledger.restored = load
        return self._training_client(load, info)

    def _training_client(self, load: LoadRecord, info: WeightsInfo) -> TrainingClient:
        return TrainingClient._create(
            model_id=load.model_id,
            session_id=load.session_id,
            base_model=info.base_model,
            lora_rank=info.lora_rank,
            checkpoint=Checkpoint.from_path(load.path),
            optimizer_restored=load.optimizer,
            http=self._http,
        )

    async def _reconcile(
        self, load: LoadRecord, ledger: Ledger
    ) -> TrainingClient | None:
        """Settle a restore that may have been sent; its client if it completed."""
        rest = self.create_rest_client()
        try:
            await rest.get_training_run(load.model_id)
        except NotFoundError:
            pass
        else:
            logger.info(
                "run %s: restore %s had completed before the restart",
                ledger.run_id,
                load.model_id,
            )
            ledger.restored = load
            info = await rest.get_weights_info(load.path)
            return self._training_client(load, info)
        if not await self._session_alive(load.session_id):
            # The service ended that session: the load cannot have happened
            # (no model), and cannot be sent again.
            await ledger.put_load(attrs.evolve(load, outcome="failed"))
            return None
        info = await rest.get_weights_info(load.path)
        return await self._send_recorded_load(load, info, ledger)

    async def _session_alive(self, session_id: str) -> bool:
        """Whether the service still knows ``session_id`` (one heartbeat)."""
        try:
            await self._http.request(
                "POST",
                "/api/v1/session_heartbeat",
                json={"session_id": session_id, "type": "session_heartbeat"},
                parse=False,
            )
        except APIStatusError as exc:
            if exc.status in GONE:
                return False
            raise
        return True

    async def _ledger_session(self, ledger: Ledger) -> _Session:
        """The session to restore in: this client's, the journal's, or a new one."""
        async with self._session_lock:
            self._check_open()
            stored = ledger.session()
            if self._session is not None and not self._session.expired:
                return self._session
            if (
                stored is not None
                and stored.session_id is not None
                and self._session is None
                and await self._session_alive(stored.session_id)
            ):
                # Made by a watcher before a restart: still alive, keep it.
                self._session_key = stored.key
                self._session = _Session(stored.session_id)
                self._start_heartbeat(self._session)
                return self._session
            if stored is not None and stored.session_id is None:
                # Its creation may have been sent: ask again with the same key.
                self._session_key = stored.key
            elif self._session is not None or stored is not None:
                self._session_key = new_idempotency_key()
            await ledger.put_session(SessionRecord(key=self._session_key))
            if self._session is None:
                await self._fetch_client_config()
            session = await self._create_session()
            await ledger.put_session(
                SessionRecord(key=self._session_key, session_id=session.session_id)
            )
            return session

    async def _load_weights(
        self,
        session: _Session,
        operation: Operation,
        path: str,
        *,
        optimizer: bool,
        accepted: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        try:
            body = await self._http.request_object(
                "POST",
                "/api/v1/load_weights",
                json={
                    "session_id": session.session_id,
                    "model_seq_id": operation.seq_id,
                    "path": path,
                    "optimizer": optimizer,
                    "type": "load_weights",
                },
                idempotency_key=operation.key,
            )
        except APIStatusError as exc:
            if exc.status in GONE:
                raise CheckpointUnavailableError(
                    f"checkpoint {path} is unavailable: {exc.message}",
                    path=path,
                    status=exc.status,
                ) from exc
            raise
        request_id = required_str(body, "request_id", "POST /api/v1/load_weights")
        if accepted is not None:
            await accepted(request_id)
        crash_point("load-accepted")
        try:
            await retrieve_future(self._http, request_id, request_type="LoadWeights")
        except RequestFailedError as exc:
            if exc.category == "user":
                raise CheckpointUnavailableError(
                    f"checkpoint {path} could not be restored: {exc.message}",
                    path=path,
                ) from exc
            raise

    async def _ensure_session(self) -> _Session:
        async with self._session_lock:
            self._check_open()
            if self._session is not None and not self._session.expired:
                return self._session
            if self._session is None:
                await self._fetch_client_config()
            else:  # the service ended the old session; start another
                self._session_key = new_idempotency_key()
            return await self._create_session()

    async def _create_session(self) -> _Session:
        """``create_session`` with this client's session key; start its heartbeat."""
        body = await self._http.request_object(
            "POST",
            "/api/v1/create_session",
            json={
                "tags": [],
                "user_metadata": {},
                "sdk_version": WIRE_SDK_VERSION,
                "type": "create_session",
            },
            idempotency_key=self._session_key,
        )
        session = _Session(
            required_str(body, "session_id", "POST /api/v1/create_session")
        )
        self._session = session
        logger.debug("created session %s", session.session_id)
        self._start_heartbeat(session)
        return session

    def _start_heartbeat(self, session: _Session) -> None:
        interval = _test_mode.heartbeat_interval(HEARTBEAT_INTERVAL)
        if interval is not None:
            self._nursery.start_soon(self._heartbeat, session, interval)

    async def _fetch_client_config(self) -> None:
        """``POST /api/v1/client/config``, as the SDK's first request.

        Nothing in the answer is needed here (``{}`` is valid); a service
        that does not know the endpoint (404) is fine too.
        """
        try:
            body = await self._http.request_object(
                "POST", "/api/v1/client/config", json={"sdk_version": WIRE_SDK_VERSION}
            )
        except APIStatusError as exc:
            if exc.status != 404:
                raise
            return
        if body.get("pjwt_auth_enabled") is True:
            logger.warning(
                "the service offers JWT authentication; this client keeps using "
                "the API key"
            )

    async def _heartbeat(self, session: _Session, interval: float) -> None:
        """Tell the service the session is alive, every ``interval`` seconds.

        Failures are logged and the loop goes on, except 410 (the session
        is over): the next restore then creates a new session.
        """
        with session.heartbeat_scope:
            next_at = trio.current_time()
            while True:
                next_at += interval
                await trio.sleep_until(next_at)
                try:
                    await self._http.request(
                        "POST",
                        "/api/v1/session_heartbeat",
                        json={
                            "session_id": session.session_id,
                            "type": "session_heartbeat",
                        },
                        max_retries=0,
                        attempt_timeout=interval,
                        parse=False,
                    )
                except TinkexRecoveryError as exc:
                    if isinstance(exc, APIStatusError) and exc.status == 410:
                        logger.warning(
                            "session %s has ended; the next restore starts a new one",
                            session.session_id,
                        )
                        session.expired = True
                        session.pending_loads.clear()
                        return
                    logger.info(
                        "heartbeat of session %s failed: %s", session.session_id, exc
                    )

    async def aclose(self, *, reason: _FinishReason = "success") -> None:
        """Finish the session (if any) and close the connection pool.

        Idempotent.  It tells the service the session is finished (at most
        ~10 s, shielded from cancellation; a failure is logged), so training
        clients made here stop working.

        Args:
            reason: The finish reason sent to the service.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        if self._session is not None:
            self._session.heartbeat_scope.cancel()
        with trio.move_on_after(_FINISH_TIMEOUT, shield=True):
            try:
                session = self._session
                if session is not None and not session.expired:
                    await self._finish_session(session.session_id, reason)
            finally:
                await self._http.aclose()

    async def _finish_session(self, session_id: str, reason: _FinishReason) -> None:
        try:
            await self._http.request(
                "POST",
                f"/api/v1/sessions/{session_id}/finish",
                json={"reason": {"type": reason}},
                max_retries=1,
                parse=False,
            )
        except TinkexRecoveryError as exc:
            logger.info("could not finish session %s: %s", session_id, exc)


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
    async with _open_service_client(config, transport=transport) as service:
        yield service


@asynccontextmanager
async def _open_service_client(
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
            reason: _FinishReason = "success"
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
