"""The simulator's endpoints: a `WireRequest` in, a `Reply` out.

`Endpoints` routes an authenticated request to the endpoint for its method
and path, reads and checks its JSON, and acts through the state's public
methods.  What the state refuses (`Refused`) is answered as an HTTP error;
asynchronous operations answer a future's ``request_id``, polled through
``/api/v1/retrieve_future``.  ``/_fake/`` admin requests (to control a
simulator served in another process) are answered by `Endpoints.admin`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import trio

from ._model import Refused
from ._proto import PROTOBUF, decode_fields, encode_forward_backward_output
from ._wire import Reply, WireError, WireRequest, body_of, field, query_int

if TYPE_CHECKING:
    from ._model import StoredRun
    from ._state import TinkerState

__all__ = ["Endpoints"]

_Endpoint = Callable[..., Awaitable[Any]]
_Handler = TypeVar("_Handler", bound=_Endpoint)

_RUN = r"(?P<run_id>[^/]+)"
_CHECKPOINT = r"(?P<checkpoint_id>(?:weights|sampler_weights)/[^/]+)"

#: (method, path pattern, endpoint, its fixed arguments); paths are matched
#: whole, and the path's named groups are passed as keyword arguments.
_ROUTES: list[
    tuple[str, re.Pattern[str], Callable[..., Awaitable[Any]], dict[str, Any]]
] = []


def _route(method: str, pattern: str, **fixed: Any) -> Callable[[_Handler], _Handler]:
    """Serve ``method pattern`` with the decorated endpoint (and ``fixed``)."""

    def register(handler: _Handler) -> _Handler:
        _ROUTES.append((method, re.compile(pattern), handler, fixed))
        return handler

    return register


#: The HTTP status of each reason the state refuses an operation for.
_REFUSAL_STATUS = {"not_found": 404, "gone": 410, "conflict": 400}


class Endpoints:
    """The endpoints of the Tinker API, over a `TinkerState`."""

    def __init__(self, state: TinkerState) -> None:
        self._state = state

    def __repr__(self) -> str:
        return f"<Endpoints state={self._state!r}>"

    async def dispatch(self, request: WireRequest) -> Reply:
        """Answer an authenticated request: route it to its endpoint."""
        allowed: list[str] = []
        for method, pattern, handler, fixed in _ROUTES:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            if method != request.method:
                allowed.append(method)
                continue
            try:
                answer = await handler(self, request, **match.groupdict(), **fixed)
            except Refused as exc:
                return WireError(_REFUSAL_STATUS[exc.reason], exc.message).reply()
            except WireError as exc:
                return exc.reply()
            return answer if isinstance(answer, Reply) else Reply(200, answer)
        if allowed:
            return WireError(
                405, "method not allowed", headers=(("allow", ", ".join(allowed)),)
            ).reply()
        return WireError(404, f"no endpoint {request.path!r}").reply()

    # ------------------------------------------------------------------
    # Runs, checkpoints, weights

    @_route("GET", r"/api/v1/healthz")
    async def _healthz(self, request: WireRequest) -> Any:
        return {"status": "ok"}

    @_route("GET", rf"/api/v1/training_runs/{_RUN}")
    async def _get_training_run(self, request: WireRequest, run_id: str) -> Any:
        return self._run(run_id).to_json()

    @_route("GET", r"/api/v1/training_runs")
    async def _list_training_runs(self, request: WireRequest) -> Any:
        state = self._state
        state.list_requests += 1
        limit = min(query_int(request, "limit", 20), state.list_page_max)
        offset = query_int(request, "offset", 0)
        scope = request.query.get("access_scope", "owned")
        if scope not in ("owned", "accessible"):
            raise WireError(
                422, "query parameter 'access_scope' must be 'owned' or 'accessible'"
            )
        runs, total = state.list_page(
            owned_only=scope == "owned",
            project_id=request.query.get("project_id"),
            offset=offset,
            limit=limit,
        )
        return {
            "training_runs": [r.to_json() for r in runs],
            "cursor": {"offset": offset, "limit": limit, "total_count": total},
        }

    @_route("GET", rf"/api/v1/training_runs/{_RUN}/checkpoints")
    async def _list_checkpoints(self, request: WireRequest, run_id: str) -> Any:
        run = self._run(run_id)
        live = run.live()
        return {
            "checkpoints": [run.checkpoint_json(c) for c in live],
            "cursor": {
                "offset": 0,
                "limit": max(len(live), 100),
                "total_count": len(live),
            },
        }

    @_route("DELETE", rf"/api/v1/training_runs/{_RUN}/checkpoints/{_CHECKPOINT}")
    async def _delete_checkpoint(
        self, request: WireRequest, run_id: str, checkpoint_id: str
    ) -> Any:
        path = f"tinker://{run_id}/{checkpoint_id}"
        try:
            self._state.delete_checkpoint(path)
        except (KeyError, ValueError) as exc:
            raise WireError(404, f"checkpoint {path!r} not found") from exc
        return {}

    @_route("POST", r"/api/v1/weights_info")
    async def _weights_info(self, request: WireRequest) -> Any:
        path = field(body_of(request), "tinker_path", str)
        problem = self._state.unrestorable(path, allow_sampler=True)
        if problem is not None:
            status = 410 if "expired" in problem else 404
            raise WireError(status, problem)
        return self._state.weights_info(path).to_json()

    # ------------------------------------------------------------------
    # Client set-up and sessions

    @_route("POST", r"/api/v1/client/config")
    async def _client_config(self, request: WireRequest) -> Any:
        return self._state.client_config

    @_route("POST", r"/api/v1/client/dynamic_config")
    async def _dynamic_config(self, request: WireRequest) -> Any:
        if self._state.dynamic_config is None:
            raise WireError(404, "Not Found")
        return self._state.dynamic_config

    @_route("POST", r"/api/v1/create_session")
    async def _create_session(self, request: WireRequest) -> Any:
        body = body_of(request)
        session_id = self._state.create_session(
            field(body, "tags", list, required=False) or [],
            field(body, "user_metadata", dict, required=False) or {},
            field(body, "project_id", str, required=False),
        )
        return {"type": "create_session", "session_id": session_id}

    @_route("POST", r"/api/v1/session_heartbeat")
    async def _session_heartbeat(self, request: WireRequest) -> Any:
        session_id = field(body_of(request), "session_id", str)
        self._state.live_session(session_id).heartbeats += 1
        return {"type": "session_heartbeat"}

    @_route("POST", r"/api/v1/sessions/(?P<session_id>[^/]+)/finish")
    async def _finish_session(self, request: WireRequest, session_id: str) -> Any:
        body = request.json if isinstance(request.json, dict) else {}
        reason = body.get("reason")
        kind = reason.get("type") if isinstance(reason, dict) else None
        self._state.finish_session(session_id, None if kind is None else str(kind))
        return {}

    @_route("GET", r"/api/v1/sessions/(?P<session_id>[^/]+)")
    async def _get_session(self, request: WireRequest, session_id: str) -> Any:
        info = self._state.sessions.get(session_id)
        if info is None:
            raise WireError(404, f"session {session_id!r} not found")
        return {"training_run_ids": list(info.model_ids), "sampler_ids": []}

    @_route("POST", r"/api/v1/telemetry")
    async def _telemetry(self, request: WireRequest) -> Any:
        body_of(request)
        self._state.telemetry_batches += 1
        return {"status": "accepted"}

    # ------------------------------------------------------------------
    # Models: restores, saves, futures

    @_route("POST", r"/api/v1/load_weights")
    async def _load_weights(self, request: WireRequest) -> Any:
        body = body_of(request)
        if "session_id" not in body and "model_id" in body:
            raise WireError(
                422, "the simulator supports only session_id/model_seq_id addressing"
            )
        session_id = field(body, "session_id", str)
        request_id, model_id = self._state.load_weights(
            session_id,
            field(body, "model_seq_id", int),
            field(body, "path", str),
            optimizer=field(body, "optimizer", bool),
            user_metadata=field(body, "user_metadata", dict, required=False),
        )
        return {"request_id": request_id, "model_id": model_id}

    @_route("POST", r"/api/v1/create_model")
    async def _create_model(self, request: WireRequest) -> Any:
        body = body_of(request)
        lora = field(body, "lora_config", dict, required=False)
        rank = None
        if lora is not None:
            rank = field(lora, "rank", int, required=False) or 32
        request_id, model_id = self._state.create_model(
            field(body, "session_id", str),
            field(body, "model_seq_id", int),
            base_model=field(body, "base_model", str),
            lora_rank=rank,
            user_metadata=field(body, "user_metadata", dict, required=False),
        )
        return {"request_id": request_id, "model_id": model_id}

    @_route("POST", r"/api/v1/save_weights", kind="training")
    @_route("POST", r"/api/v1/save_weights_for_sampler", kind="sampler")
    async def _save(
        self, request: WireRequest, kind: Literal["training", "sampler"]
    ) -> Any:
        body = body_of(request)
        model_id = field(body, "model_id", str)
        request_id = self._state.save(
            model_id,
            kind,
            name=field(body, "path", str, required=False),
            seq=field(body, "seq_id", int, required=False),
            ttl=field(body, "ttl_seconds", int, required=False),
            overwrite=bool(field(body, "overwrite", bool, required=False)),
            user_metadata=field(body, "user_metadata", dict, required=False),
        )
        return {"request_id": request_id, "model_id": model_id}

    @_route("POST", r"/api/v1/retrieve_future")
    async def _retrieve_future(self, request: WireRequest) -> Any:
        request_id = field(body_of(request), "request_id", str)
        future = self._state.find_future(request_id)
        if future is None:
            raise WireError(404, f"future {request_id!r} not found")
        now = trio.current_time()
        if future.try_again_left > 0 or now < future.ready_at:
            # Long-poll briefly: wake early if the result becomes ready.
            deadline = now + self._state.long_poll
            if future.try_again_left == 0:
                deadline = min(deadline, future.ready_at)
            await trio.sleep_until(deadline)
            if future.try_again_left > 0:
                future.try_again_left -= 1
                return _try_again(request_id)
            if trio.current_time() < future.ready_at:
                return _try_again(request_id)
        result = future.result
        # The SDK takes a ForwardBackwardOutput in protobuf only, and says so.
        if "loss_fn_outputs" in result and PROTOBUF in request.headers.get(
            "accept", ""
        ):
            raw = encode_forward_backward_output(result)
            return Reply(200, result, raw=raw, content_type=PROTOBUF)
        return result

    @_route("POST", r"/api/v1/forward_backward")
    async def _forward_backward(self, request: WireRequest) -> Any:
        if PROTOBUF in request.headers.get("content-type", ""):
            if request.headers.get("content-encoding", "identity") != "identity":
                raise WireError(415, "the simulator reads uncompressed bodies only")
            try:
                fields = decode_fields(request.body)
                model_id = _proto_bytes(fields, 1).decode()
                seq: int | None = _proto_int(fields, 2)
                loss_fn = _proto_bytes(fields, 4).decode()
                forward_only = bool(_proto_int(fields, 6))
            except ValueError as exc:  # UnicodeDecodeError included
                raise WireError(400, f"bad ForwardBackwardRequest: {exc}") from exc
            examples = len(fields.get(3, ()))
        else:  # JSON, as earlier SDKs sent it
            body = body_of(request)
            model_id = field(body, "model_id", str)
            seq = field(body, "seq_id", int, required=False)
            given = field(body, "forward_backward_input", dict)
            examples = len(field(given, "data", list))
            loss_fn = field(given, "loss_fn", str)
            forward_only = bool(field(body, "forward_only", bool, required=False))
        request_id = self._state.forward_backward(
            model_id,
            seq,
            examples=examples,
            loss_fn=loss_fn,
            forward_only=forward_only,
        )
        return {"request_id": request_id, "model_id": model_id}

    @_route("POST", r"/api/v1/optim_step")
    async def _optim_step(self, request: WireRequest) -> Any:
        body = body_of(request)
        model_id = field(body, "model_id", str)
        given = (
            field(body, "adam_params", dict, required=False)
            or field(body, "optimizer_params", dict, required=False)
            or field(body, "optim_params", dict)
        )
        rate = field(given, "learning_rate", float, required=False)
        request_id = self._state.optim_step(
            model_id,
            field(body, "seq_id", int, required=False),
            learning_rate=None if rate is None else float(rate),
        )
        return {"request_id": request_id, "model_id": model_id}

    @_route("POST", r"/api/v1/get_info")
    async def _get_info(self, request: WireRequest) -> Any:
        model_id = field(body_of(request), "model_id", str)
        run = self._run(model_id, what="model")
        return {
            "type": "get_info",
            "model_id": model_id,
            "model_data": {
                "model_name": run.base_model,
                "tokenizer_id": run.base_model,
            },
            "is_lora": run.lora_rank is not None,
            "lora_rank": run.lora_rank,
            "model_name": run.base_model,
        }

    def _run(self, run_id: str, *, what: str = "training run") -> StoredRun:
        run = self._state.find_run(run_id)
        if run is None:
            raise WireError(404, f"{what} {run_id!r} not found")
        return run

    # ------------------------------------------------------------------
    # The admin API: /_fake/..., for a simulator in another process

    async def admin(self, request: WireRequest) -> Reply:
        """Answer ``/_fake/`` requests: control a simulator served elsewhere.

        ``POST /_fake/runs`` (add_run's arguments), ``POST /_fake/corrupt``
        (``{"run_id", "corrupted"?}``), ``GET /_fake/restores`` and
        ``GET /_fake/stats``.  No key is needed: the simulator is for tests.
        """
        state = self._state
        try:
            route = (request.method, request.path)
            if route == ("POST", "/_fake/runs"):
                body = body_of(request)
                checkpoints = field(body, "checkpoints", list, required=False)
                try:
                    run = state.add_run(
                        field(body, "run_id", str),
                        base_model=field(body, "base_model", str, required=False)
                        or "Qwen/Qwen3-8B",
                        lora_rank=field(body, "lora_rank", int, required=False),
                        checkpoints=("ckpt-0001", "ckpt-0002")
                        if checkpoints is None
                        else [str(c) for c in checkpoints],
                        user_metadata=field(
                            body, "user_metadata", dict, required=False
                        ),
                        corrupted=bool(field(body, "corrupted", bool, required=False)),
                        project_id=field(body, "project_id", str, required=False),
                    )
                except (KeyError, ValueError, TypeError) as exc:
                    raise WireError(400, str(exc)) from exc
                return Reply(200, run.to_json())
            if route == ("POST", "/_fake/corrupt"):
                body = body_of(request)
                run_id = field(body, "run_id", str)
                flag = field(body, "corrupted", bool, required=False)
                self._run(run_id)
                state.corrupt(run_id, True if flag is None else flag)
                return Reply(200, {})
            if route == ("GET", "/_fake/restores"):
                return Reply(200, {"restores": state.restores})
            if route == ("GET", "/_fake/stats"):
                return Reply(
                    200,
                    {
                        "requests": state.requests_received,
                        "runs": len(state.run_ids),
                        "sessions": len(state.sessions),
                        "restores": state.restores,
                        "idempotent_replays": state.idempotent_replays,
                    },
                )
            raise WireError(404, f"no admin endpoint {request.method} {request.path}")
        except WireError as exc:
            return exc.reply()


def _proto_int(fields: Mapping[int, list[int | bytes]], number: int) -> int:
    """The last value of an integer protobuf field (0 when absent)."""
    value = (fields.get(number) or [0])[-1]
    if not isinstance(value, int):
        raise ValueError(f"field {number} is not an integer")
    return value


def _proto_bytes(fields: Mapping[int, list[int | bytes]], number: int) -> bytes:
    """The last value of a string or bytes protobuf field (empty when absent)."""
    value = (fields.get(number) or [b""])[-1]
    if not isinstance(value, bytes):
        raise ValueError(f"field {number} is not a string")
    return value


def _try_again(request_id: str) -> dict[str, Any]:
    return {"type": "try_again", "request_id": request_id, "queue_state": "active"}
