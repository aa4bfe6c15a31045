"""Restoring a checkpoint into a new model, plain or journaled.

As ``tinker/lib/public_interfaces/service_client.py`` does it
(``_create_training_client_via_load_weights_submit``)::

    POST /api/v1/weights_info     {"tinker_path"}       base model, LoRA rank
    (the session, see ``_session.py``)
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
from typing import TYPE_CHECKING, Any

import attrs

from .._errors import (
    CheckpointUnavailableError,
    NotFoundError,
    RequestFailedError,
    TinkerAPIError,
)
from .._failpoints import crash_point
from .._store import LoadRecord, SessionRecord
from .._types import Checkpoint, WeightsInfo, parse_tinker_path
from ._futures import retrieve_future
from ._http import new_idempotency_key
from ._operations import Operation, is_definitive, required_str
from ._rest import checkpoint_gone
from ._session import Session
from ._training_client import TrainingClient

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from .._store import Ledger
    from ._http import HTTPClient
    from ._rest import RestClient
    from ._session import SessionKeeper

__all__ = ["Restorer"]

logger = logging.getLogger("trio_tinkex_recovery.client")


class Restorer:
    """Makes the restores of one service client, in its session.

    Args:
        http: The service client's HTTP client.
        sessions: The service client's session.
        rest: The service client's REST client.
    """

    def __init__(
        self, http: HTTPClient, sessions: SessionKeeper, rest: RestClient
    ) -> None:
        self._http = http
        self._sessions = sessions
        self._rest = rest

    async def restore(self, path: str, *, optimizer: bool) -> TrainingClient:
        """A new model restored from ``path`` (see `ServiceClient`)."""
        self._sessions.check_open()
        parse_tinker_path(path)
        info = await self._rest.get_weights_info(path)
        session = await self._sessions.ensure()
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

    async def create_lora(
        self,
        base_model: str,
        *,
        rank: int,
        user_metadata: Mapping[str, Any] | None,
    ) -> TrainingClient:
        """A new LoRA model (see `ServiceClient.create_lora_training_client`)."""
        self._sessions.check_open()
        session = await self._sessions.ensure()
        operation = Operation(seq_id=session.take_model_seq_id())
        request: dict[str, Any] = {
            "session_id": session.session_id,
            "model_seq_id": operation.seq_id,
            "base_model": base_model,
            "lora_config": {"rank": rank},
            "type": "create_model",
        }
        if user_metadata is not None:
            request["user_metadata"] = dict(user_metadata)
        body = await self._http.request_object(
            "POST", "/api/v1/create_model", json=request, idempotency_key=operation.key
        )
        request_id = required_str(body, "request_id", "POST /api/v1/create_model")
        await retrieve_future(self._http, request_id, request_type="CreateModel")
        return TrainingClient._create(
            model_id=f"{session.session_id}:train:{operation.seq_id}",
            session_id=session.session_id,
            base_model=base_model,
            lora_rank=rank,
            checkpoint=None,
            optimizer_restored=False,
            http=self._http,
        )

    async def restore_with_ledger(
        self, path: str, *, optimizer: bool, ledger: Ledger
    ) -> TrainingClient:
        """Restore ``path`` writing every side effect ahead in ``ledger``.

        See `ServiceClient.restore_with_ledger`.
        """
        self._sessions.check_open()
        parse_tinker_path(path)
        doubt = ledger.in_doubt()
        if doubt is not None:
            client = await self._reconcile(doubt, ledger)
            if client is not None:
                return client
        info = await self._rest.get_weights_info(path)
        session = await self._sessions.from_ledger(ledger)
        # A sequence number is written as taken before it is used, so no two
        # restores, across restarts too, ever share one.
        seq = max(ledger.next_seq(session.session_id), session.next_model_seq_id)
        session.next_model_seq_id = seq + 1
        await ledger.put_session(
            SessionRecord(self._sessions.key, session.session_id, next_seq=seq + 1)
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
        session = Session(load.session_id)
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
        rest = self._rest
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
        if not await self._sessions.alive(load.session_id):
            # The service ended that session: the load cannot have happened
            # (no model), and cannot be sent again.
            await ledger.put_load(attrs.evolve(load, outcome="failed"))
            return None
        info = await rest.get_weights_info(load.path)
        return await self._send_recorded_load(load, info, ledger)

    async def _load_weights(
        self,
        session: Session,
        operation: Operation,
        path: str,
        *,
        optimizer: bool,
        accepted: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        with checkpoint_gone(path):
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
