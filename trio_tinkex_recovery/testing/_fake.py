"""`FakeTinker`: an in-memory Tinker service and its state API.

The state lives here: runs, checkpoints, sessions, futures and the models
restored from checkpoints, plus the log of requests.  The ASGI app that
speaks the wire protocol over this state is in ``_app.py``.

Times on the wire (checkpoint ``time``, ``last_request_time``) come from a
logical clock that starts at ``epoch`` and advances one minute per event, so
they are deterministic and strictly increasing.  Futures and the request log
use Trio time, so everything works under ``MockClock``.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal

import attrs
import httpx
import trio

from .._types import Checkpoint, TrainingRun, WeightsInfo, parse_tinker_path
from ._app import NO_BODY, FakeTinkerApp, Reply, WireError, WireRequest, _Idempotent
from ._faults import Fault, FaultPlan
from ._records import RecordedRequest, Restore, SessionInfo, iso

__all__ = ["DEFAULT_EPOCH", "FakeTinker"]

#: The default start of the simulator's logical wall clock.
DEFAULT_EPOCH = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)

_KIND_SEGMENT = {"training": "weights", "sampler": "sampler_weights"}


@attrs.define(eq=False)
class _Checkpoint:
    name: str
    kind: Literal["training", "sampler"]
    time: dt.datetime
    metadata: dict[str, Any] | None = None
    expires_at: dt.datetime | None = None
    size_bytes: int | None = None
    deleted: bool = False

    def expired(self) -> bool:
        # The one wall-clock read of the simulator: expiry is a wall-clock
        # notion on the real service too, and tests pass past dates.
        return self.expires_at is not None and self.expires_at <= dt.datetime.now(
            dt.UTC
        )


@attrs.define(eq=False)
class _Run:
    run_id: str
    base_model: str
    lora_rank: int | None
    model_owner: str
    user_metadata: dict[str, Any] | None
    last_request_time: dt.datetime
    corrupted: bool = False
    checkpoints: dict[tuple[str, str], _Checkpoint] = attrs.field(factory=dict)
    #: For a restored model: the checkpoint it was restored from.
    restored_from: Checkpoint | None = None

    def path(self, ckpt: _Checkpoint) -> str:
        return f"tinker://{self.run_id}/{_KIND_SEGMENT[ckpt.kind]}/{ckpt.name}"

    def checkpoint_json(self, ckpt: _Checkpoint) -> dict[str, Any]:
        return {
            "checkpoint_id": f"{_KIND_SEGMENT[ckpt.kind]}/{ckpt.name}",
            "checkpoint_type": ckpt.kind,
            "time": iso(ckpt.time),
            "tinker_path": self.path(ckpt),
            "size_bytes": ckpt.size_bytes,
            "public": False,
            "expires_at": None if ckpt.expires_at is None else iso(ckpt.expires_at),
            "user_metadata": ckpt.metadata,
        }

    def live(self, kind: str | None = None) -> list[_Checkpoint]:
        return [
            c
            for c in self.checkpoints.values()
            if not c.deleted and (kind is None or c.kind == kind)
        ]

    def last_json(self, kind: Literal["training", "sampler"]) -> dict[str, Any] | None:
        live = self.live(kind)
        if live:
            return self.checkpoint_json(max(live, key=lambda c: c.time))
        if kind == "training" and self.restored_from is not None:
            return self.restored_from.to_json()
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "training_run_id": self.run_id,
            "base_model": self.base_model,
            "model_owner": self.model_owner,
            "is_lora": self.lora_rank is not None,
            "corrupted": self.corrupted,
            "lora_rank": self.lora_rank,
            "last_request_time": iso(self.last_request_time),
            "last_checkpoint": self.last_json("training"),
            "last_sampler_checkpoint": self.last_json("sampler"),
            "user_metadata": self.user_metadata,
        }


@attrs.define(eq=False)
class _Session:
    session_id: str
    tags: tuple[str, ...]
    user_metadata: dict[str, Any]
    heartbeats: int = 0
    finished: str | None = None
    #: model_seq_id -> the load_weights that used it
    loads: dict[int, _Load] = attrs.field(factory=dict)


@attrs.define(eq=False)
class _Load:
    #: What was asked (path, optimizer): a repeat must ask the same.
    identity: tuple[Any, ...]
    request_id: str
    model_id: str
    #: Whether a model was created (the checkpoint could be restored).
    restored: bool


@attrs.define(eq=False)
class _Future:
    request_id: str
    result: dict[str, Any]
    try_again_left: int
    ready_at: float


class FakeTinker:
    """An in-memory Tinker service, for tests, demos and benchmarks.

    Serve it in process with `transport` (an ``httpx.ASGITransport``; works
    with Trio's ``MockClock``) or on loopback with `serve_fake_tinker`.

    Args:
        seed: Seeds the ``random.Random`` that decides rate-based faults.
        api_key: When set, the only API key accepted; otherwise any
            non-empty ``X-API-Key`` is.
        model_owner: The default owner of the runs added.
        future_try_again: How many ``try_again`` answers each future gives
            before its result.
        future_delay: Seconds (Trio time) after submission before a future is
            ready; until then polls answer ``try_again``.
        long_poll: The longest a ``retrieve_future`` poll waits (Trio time)
            before answering ``try_again``.
        base_latency: Seconds (Trio time) added to every request, e.g. to
            model a network for benchmarks.
        client_config: The ``/api/v1/client/config`` answer (default ``{}``).
        dynamic_config: The ``/api/v1/client/dynamic_config`` answer;
            ``None`` (the default) answers 404, as older servers do.
        epoch: The start of the logical clock behind wire timestamps.
        request_log_limit: Keep only the latest this many requests in
            `requests` (``None``: keep all), e.g. for long benchmarks;
            `requests_received` still counts every one.

    Attributes:
        faults: The scripted faults and fault rates (see `script` and
            `add_fault_rate`).
        idempotent_replays: How many requests were answered from the
            ``X-Idempotency-Key`` cache instead of acting again.
        requests_received: How many requests arrived (admin ones excepted).
        telemetry_batches: How many ``/api/v1/telemetry`` batches arrived.

    The constructor's options are attributes of the same name and may be
    changed between requests (e.g. ``fake.base_latency = 0.01``).
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        api_key: str | None = None,
        model_owner: str = "fake-user",
        future_try_again: int = 1,
        future_delay: float = 0.0,
        long_poll: float = 0.05,
        base_latency: float = 0.0,
        client_config: Mapping[str, Any] | None = None,
        dynamic_config: Mapping[str, Any] | None = None,
        epoch: dt.datetime = DEFAULT_EPOCH,
        request_log_limit: int | None = None,
    ) -> None:
        if future_try_again < 0:
            raise ValueError(f"future_try_again must be >= 0, got {future_try_again}")
        for name, value in (
            ("future_delay", future_delay),
            ("long_poll", long_poll),
            ("base_latency", base_latency),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if request_log_limit is not None and request_log_limit < 0:
            raise ValueError(f"request_log_limit must be >= 0, got {request_log_limit}")
        if epoch.tzinfo is None:
            raise ValueError("epoch must be timezone-aware")
        self.api_key = api_key
        self.model_owner = model_owner
        self.future_try_again = future_try_again
        self.future_delay = future_delay
        self.long_poll = long_poll
        self.base_latency = base_latency
        self.client_config: dict[str, Any] = dict(client_config or {})
        self.dynamic_config: dict[str, Any] | None = (
            None if dynamic_config is None else dict(dynamic_config)
        )
        self.faults = FaultPlan(random.Random(seed))
        self.telemetry_batches = 0
        self.idempotent_replays = 0
        self._epoch = epoch
        self._ticks = 0
        self._runs: dict[str, _Run] = {}
        self._sessions: dict[str, _Session] = {}
        self._futures: dict[str, _Future] = {}
        self._saves: dict[tuple[str, int], tuple[tuple[Any, ...], str]] = {}
        self._restores: list[Restore] = []
        self._requests: deque[RecordedRequest] = deque(maxlen=request_log_limit)
        self.requests_received = 0
        self._counter = 0
        self._idempotency: dict[tuple[str, str, str], _Idempotent] = {}
        self._app = FakeTinkerApp(self)

    def __repr__(self) -> str:
        return (
            f"<FakeTinker runs={len(self._runs)} sessions={len(self._sessions)} "
            f"requests={len(self._requests)}>"
        )

    # ------------------------------------------------------------------
    # Serving

    @property
    def app(self) -> FakeTinkerApp:
        """The ASGI application speaking the Tinker wire protocol."""
        return self._app

    def transport(self) -> httpx.ASGITransport:
        """An ``httpx.ASGITransport`` over `app`, for in-process clients."""
        return httpx.ASGITransport(app=self._app)

    # ------------------------------------------------------------------
    # State API

    def add_run(
        self,
        run_id: str,
        *,
        base_model: str = "Qwen/Qwen3-8B",
        lora_rank: int | None = 32,
        checkpoints: Iterable[str] = ("ckpt-0001", "ckpt-0002"),
        user_metadata: Mapping[str, Any] | None = None,
        model_owner: str | None = None,
        corrupted: bool = False,
    ) -> TrainingRun:
        """Add a training run with training checkpoints, oldest first.

        Each checkpoint is ``tinker://{run_id}/weights/{name}``, saved later
        than the one before; the last becomes the run's ``last_checkpoint``.

        Args:
            run_id: The run's id.
            base_model: Its base model.
            lora_rank: Its LoRA rank; ``None`` for a full fine-tune.
            checkpoints: The names of its training checkpoints, oldest first.
            user_metadata: Its user metadata.
            model_owner: Its owner (default: the simulator's ``model_owner``).
            corrupted: Whether it starts out corrupted.

        Returns:
            The run, as ``GET /api/v1/training_runs/{run_id}`` reports it.

        Raises:
            ValueError: The run exists already.
        """
        if not isinstance(run_id, str) or not run_id or "/" in run_id:
            raise ValueError(f"invalid run_id {run_id!r}")
        if run_id in self._runs:
            raise ValueError(f"run {run_id!r} exists already")
        if isinstance(checkpoints, str):
            raise TypeError("checkpoints must be a sequence of names, not a str")
        self._runs[run_id] = _Run(
            run_id=run_id,
            base_model=base_model,
            lora_rank=lora_rank,
            model_owner=model_owner or self.model_owner,
            user_metadata=None if user_metadata is None else dict(user_metadata),
            last_request_time=self._stamp(),
            corrupted=corrupted,
        )
        for name in checkpoints:
            self.add_checkpoint(run_id, name)
        return self.run(run_id)

    def add_checkpoint(
        self,
        run_id: str,
        name: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        expires_at: dt.datetime | None = None,
        checkpoint_type: Literal["training", "sampler"] = "training",
        size_bytes: int | None = None,
    ) -> Checkpoint:
        """Add a checkpoint to a run, newer than every checkpoint so far.

        Args:
            run_id: The run.
            name: The checkpoint's name: its path is
                ``tinker://{run_id}/weights/{name}`` (``sampler_weights`` for
                sampler checkpoints).
            metadata: Its user metadata, e.g. ``{"loss": "0.12"}``.
            expires_at: When it expires (a past time: expired already).
            checkpoint_type: ``"training"`` or ``"sampler"``.
            size_bytes: Its reported size.

        Returns:
            The checkpoint, as the service reports it.

        Raises:
            KeyError: No such run.
            ValueError: A checkpoint of that name and type exists already.
        """
        run = self._run(run_id)
        if checkpoint_type not in _KIND_SEGMENT:
            raise ValueError(
                "checkpoint_type must be 'training' or 'sampler', "
                f"got {checkpoint_type!r}"
            )
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"invalid checkpoint name {name!r}")
        key = (checkpoint_type, name)
        existing = run.checkpoints.get(key)
        if existing is not None and not existing.deleted:
            raise ValueError(f"run {run_id!r} already has checkpoint {name!r}")
        if expires_at is not None and expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")
        ckpt = _Checkpoint(
            name=name,
            kind=checkpoint_type,
            time=self._stamp(),
            metadata=None if metadata is None else dict(metadata),
            expires_at=expires_at,
            size_bytes=size_bytes,
        )
        run.checkpoints.pop(key, None)
        run.checkpoints[key] = ckpt
        run.last_request_time = ckpt.time
        return Checkpoint.from_json(run.checkpoint_json(ckpt))

    def corrupt(self, run_id: str, corrupted: bool = True) -> None:
        """Flag a run as corrupted (or healthy again): the next GET reports it.

        Raises:
            KeyError: No such run.
        """
        self._run(run_id).corrupted = corrupted

    def expire_checkpoint(self, path: str) -> None:
        """Make a checkpoint expired: restoring it now fails as a user error.

        Raises:
            KeyError: No such checkpoint.
        """
        _run, ckpt = self._checkpoint(path)
        ckpt.expires_at = min(self._epoch, dt.datetime.now(dt.UTC)) - dt.timedelta(
            days=1
        )

    def delete_checkpoint(self, path: str) -> None:
        """Delete a checkpoint: it leaves the run's listing and cannot be restored.

        Raises:
            KeyError: No such checkpoint.
        """
        _, ckpt = self._checkpoint(path)
        ckpt.deleted = True

    def run(self, run_id: str) -> TrainingRun:
        """A run (or restored model) as ``GET /api/v1/training_runs/{id}`` shows it.

        Raises:
            KeyError: No such run.
        """
        return TrainingRun.from_json(self._run(run_id).to_json())

    def checkpoints(self, run_id: str) -> list[Checkpoint]:
        """A run's checkpoints as its listing shows them, oldest first.

        Raises:
            KeyError: No such run.
        """
        run = self._run(run_id)
        return [Checkpoint.from_json(run.checkpoint_json(c)) for c in run.live()]

    def weights_info(self, path: str) -> WeightsInfo:
        """What ``POST /api/v1/weights_info`` reports for a checkpoint.

        Raises:
            KeyError: No such checkpoint.
        """
        run, _ = self._checkpoint(path)
        return WeightsInfo.from_json(self._weights_info_json(run))

    @property
    def run_ids(self) -> tuple[str, ...]:
        """The ids of every run, restored models included, in creation order."""
        return tuple(self._runs)

    @property
    def sessions(self) -> dict[str, SessionInfo]:
        """A snapshot of every session, by id."""
        return {
            sid: SessionInfo(
                session_id=sid,
                tags=s.tags,
                user_metadata=dict(s.user_metadata),
                heartbeats=s.heartbeats,
                finished=s.finished,
                model_ids=tuple(
                    load.model_id for load in s.loads.values() if load.restored
                ),
            )
            for sid, s in self._sessions.items()
        }

    @property
    def restores(self) -> dict[str, int]:
        """How many distinct models were restored from each run's checkpoints.

        Counts ``load_weights`` operations actually performed: a request
        replayed through its idempotency key, or repeated for the same
        ``(session_id, model_seq_id)``, counts once.  Runs never restored
        from are absent.
        """
        counts: dict[str, int] = {}
        for restore in self._restores:
            counts[restore.source_run_id] = counts.get(restore.source_run_id, 0) + 1
        return counts

    def restore_count(self, run_id: str) -> int:
        """How many distinct models were restored from ``run_id``'s checkpoints."""
        return sum(1 for r in self._restores if r.source_run_id == run_id)

    @property
    def restore_log(self) -> list[Restore]:
        """Every restore performed, in order."""
        return list(self._restores)

    @property
    def requests(self) -> list[RecordedRequest]:
        """The requests received, in order (the latest ``request_log_limit``).

        Admin ``/_fake/`` requests are not recorded.
        """
        return list(self._requests)

    def request_count(
        self, *, method: str | None = None, path: str | None = None
    ) -> int:
        """How many recorded requests match ``method`` and the ``path`` prefix."""
        return sum(
            1
            for r in self._requests
            if (method is None or r.method == method.upper())
            and (path is None or r.path.startswith(path))
        )

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        self._requests.clear()

    # ------------------------------------------------------------------
    # Faults

    def script(self, *faults: Fault) -> None:
        """Queue faults: each strikes the next request it matches, once."""
        for fault in faults:
            if not isinstance(fault, Fault):
                raise TypeError(f"expected a Fault, got {type(fault).__name__}")
        self.faults.script.extend(faults)

    def add_fault_rate(self, fault: Fault, rate: float) -> None:
        """Make ``fault`` strike each matching request with probability ``rate``.

        Raises:
            ValueError: ``rate`` is not between 0 and 1.
        """
        if not isinstance(fault, Fault):
            raise TypeError(f"expected a Fault, got {type(fault).__name__}")
        self.faults.add_rate(fault, rate)

    def clear_faults(self) -> None:
        """Drop every scripted fault and every fault rate."""
        self.faults.clear()

    # ------------------------------------------------------------------
    # Internals used by the app

    def _stamp(self) -> dt.datetime:
        self._ticks += 1
        return self._epoch + dt.timedelta(minutes=self._ticks)

    def _next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}-{self._counter:06d}"

    def _run(self, run_id: str) -> _Run:
        try:
            return self._runs[run_id]
        except KeyError:
            raise KeyError(f"no run {run_id!r}") from None

    def _checkpoint(self, path: str) -> tuple[_Run, _Checkpoint]:
        run_id, segment, name = parse_tinker_path(path)
        kind = "sampler" if segment == "sampler_weights" else "training"
        run = self._run(run_id)
        ckpt = run.checkpoints.get((kind, name))
        if ckpt is None or ckpt.deleted:
            raise KeyError(f"no checkpoint {path!r}")
        return run, ckpt

    def _weights_info_json(self, run: _Run) -> dict[str, Any]:
        return {
            "base_model": run.base_model,
            "is_lora": run.lora_rank is not None,
            "lora_rank": run.lora_rank,
            "train_unembed": True,
            "train_mlp": True,
            "train_attn": True,
        }

    def _record(self, request: RecordedRequest) -> None:
        self.requests_received += 1
        self._requests.append(request)

    def _new_future(self, result: dict[str, Any]) -> str:
        request_id = self._next_id("req")
        self._futures[request_id] = _Future(
            request_id=request_id,
            result=result,
            try_again_left=self.future_try_again,
            ready_at=trio.current_time() + self.future_delay,
        )
        return request_id

    # ------------------------------------------------------------------
    # The wire protocol (see DESIGN.md section 4 and the SDK notes)

    async def _dispatch(self, request: WireRequest) -> Reply:
        """Answer an authenticated request: route it to its endpoint."""
        allowed: list[str] = []
        for method, pattern, handler in _ROUTES:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            if method != request.method:
                allowed.append(method)
                continue
            try:
                return Reply(200, await handler(self, request, match.groupdict()))
            except WireError as exc:
                return exc.reply()
        if allowed:
            return WireError(
                405, "method not allowed", headers=(("allow", ", ".join(allowed)),)
            ).reply()
        return WireError(404, f"no endpoint {request.path!r}").reply()

    async def _healthz(self, request: WireRequest, params: Mapping[str, str]) -> Any:
        return {"status": "ok"}

    async def _get_training_run(
        self, request: WireRequest, params: Mapping[str, str]
    ) -> Any:
        return self._wire_run(params["run_id"]).to_json()

    async def _list_training_runs(
        self, request: WireRequest, params: Mapping[str, str]
    ) -> Any:
        limit = _query_int(request, "limit", 20)
        offset = _query_int(request, "offset", 0)
        runs = list(self._runs.values())
        return {
            "training_runs": [r.to_json() for r in runs[offset : offset + limit]],
            "cursor": {"offset": offset, "limit": limit, "total_count": len(runs)},
        }

    async def _list_checkpoints(
        self, request: WireRequest, params: Mapping[str, str]
    ) -> Any:
        run = self._wire_run(params["run_id"])
        live = run.live()
        return {
            "checkpoints": [run.checkpoint_json(c) for c in live],
            "cursor": {
                "offset": 0,
                "limit": max(len(live), 100),
                "total_count": len(live),
            },
        }

    async def _delete_checkpoint(
        self, request: WireRequest, params: Mapping[str, str]
    ) -> Any:
        path = f"tinker://{params['run_id']}/{params['checkpoint_id']}"
        try:
            self.delete_checkpoint(path)
        except (KeyError, ValueError) as exc:
            raise WireError(404, f"checkpoint {path!r} not found") from exc
        return {}

    async def _weights_info(
        self, request: WireRequest, params: Mapping[str, str]
    ) -> Any:
        path = _field(_body(request), "tinker_path", str)
        problem = self._unrestorable(path, optimizer=False, allow_sampler=True)
        if problem is not None:
            status = 410 if "expired" in problem else 404
            raise WireError(status, problem)
        run, _ = self._checkpoint(path)
        return self._weights_info_json(run)

    async def _client_config(
        self, request: WireRequest, params: Mapping[str, str]
    ) -> Any:
        return self.client_config

    async def _dynamic_config(
        self, request: WireRequest, params: Mapping[str, str]
    ) -> Any:
        if self.dynamic_config is None:
            raise WireError(404, "Not Found")
        return self.dynamic_config

    async def _create_session(
        self, request: WireRequest, params: Mapping[str, str]
    ) -> Any:
        body = _body(request)
        tags = _field(body, "tags", list, required=False) or []
        metadata = _field(body, "user_metadata", dict, required=False) or {}
        session_id = self._next_id("session")
        self._sessions[session_id] = _Session(
            session_id=session_id, tags=tuple(map(str, tags)), user_metadata=metadata
        )
        return {"type": "create_session", "session_id": session_id}

    def _live_session(self, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise WireError(404, f"session {session_id!r} not found")
        if session.finished is not None:
            raise WireError(410, f"session {session_id!r} has finished")
        return session

    async def _session_heartbeat(
        self, request: WireRequest, params: Mapping[str, str]
    ) -> Any:
        session = self._live_session(_field(_body(request), "session_id", str))
        session.heartbeats += 1
        return {"type": "session_heartbeat"}

    async def _finish_session(
        self, request: WireRequest, params: Mapping[str, str]
    ) -> Any:
        session = self._sessions.get(params["session_id"])
        if session is None:
            raise WireError(404, f"session {params['session_id']!r} not found")
        body = request.json if isinstance(request.json, dict) else {}
        reason = body.get("reason")
        kind = reason.get("type") if isinstance(reason, dict) else None
        if session.finished is None:  # first reason wins
            session.finished = str(kind or "success")
        return {}

    async def _telemetry(self, request: WireRequest, params: Mapping[str, str]) -> Any:
        _body(request)
        self.telemetry_batches += 1
        return {"status": "accepted"}

    def _unrestorable(
        self, path: str, *, optimizer: bool, allow_sampler: bool = False
    ) -> str | None:
        """Why ``path`` cannot be restored, or ``None`` when it can."""
        try:
            run_id, segment, name = parse_tinker_path(path)
        except ValueError:
            return f"invalid checkpoint path {path!r}"
        run = self._runs.get(run_id)
        if run is None:
            return f"training run {run_id!r} not found for checkpoint {path!r}"
        kind = "sampler" if segment == "sampler_weights" else "training"
        if kind == "sampler" and not allow_sampler:
            return (
                f"checkpoint {path!r} is a sampler checkpoint: it holds no training "
                "state; restore a training checkpoint"
            )
        ckpt = run.checkpoints.get((kind, name))
        if ckpt is None or ckpt.deleted:
            return f"checkpoint {path!r} not found"
        if ckpt.expired():
            return f"checkpoint {path!r} has expired"
        return None

    async def _load_weights(
        self, request: WireRequest, params: Mapping[str, str]
    ) -> Any:
        body = _body(request)
        if "session_id" not in body and "model_id" in body:
            raise WireError(
                422, "the simulator supports only session_id/model_seq_id addressing"
            )
        session = self._live_session(_field(body, "session_id", str))
        seq = _field(body, "model_seq_id", int)
        path = _field(body, "path", str)
        optimizer = _field(body, "optimizer", bool)
        metadata = _field(body, "user_metadata", dict, required=False)
        identity = (path, optimizer)
        model_id = f"{session.session_id}:train:{seq}"
        previous = session.loads.get(seq)
        if previous is not None:
            if previous.identity != identity:
                raise WireError(
                    400, f"model_seq_id {seq} of this session is already used"
                )
            return {"request_id": previous.request_id, "model_id": model_id}
        if model_id in self._runs:
            raise WireError(400, f"model {model_id!r} exists already")
        problem = self._unrestorable(path, optimizer=optimizer)
        if problem is not None:
            result: dict[str, Any] = {"error": problem, "category": "user"}
        else:
            source, ckpt = self._checkpoint(path)
            self._runs[model_id] = _Run(
                run_id=model_id,
                base_model=source.base_model,
                lora_rank=source.lora_rank,
                model_owner=source.model_owner,
                user_metadata=metadata,
                last_request_time=self._stamp(),
                restored_from=Checkpoint.from_json(source.checkpoint_json(ckpt)),
            )
            self._restores.append(
                Restore(
                    model_id=model_id,
                    source_run_id=source.run_id,
                    tinker_path=path,
                    optimizer=optimizer,
                    session_id=session.session_id,
                )
            )
            result = {"type": "load_weights", "path": path, "model_id": model_id}
        request_id = self._new_future(result)
        session.loads[seq] = _Load(
            identity=identity,
            request_id=request_id,
            model_id=model_id,
            restored=problem is None,
        )
        return {"request_id": request_id, "model_id": model_id}

    async def _save(
        self, request: WireRequest, kind: Literal["training", "sampler"]
    ) -> Any:
        body = _body(request)
        model_id = _field(body, "model_id", str)
        name = _field(body, "path", str, required=False)
        seq = _field(body, "seq_id", int, required=False)
        ttl = _field(body, "ttl_seconds", int, required=False)
        overwrite = bool(_field(body, "overwrite", bool, required=False))
        metadata = _field(body, "user_metadata", dict, required=False)
        run = self._wire_run(model_id, what="model")
        identity = (kind, name, ttl, overwrite, repr(metadata))
        if seq is not None:
            previous = self._saves.get((model_id, seq))
            if previous is not None:
                if previous[0] != identity:
                    raise WireError(
                        400, f"seq_id {seq} of {model_id!r} is already used"
                    )
                return {"request_id": previous[1], "model_id": model_id}
        result: dict[str, Any]
        if name is None:
            result = {
                "error": "the simulator needs a checkpoint name",
                "category": "user",
            }
        elif run.corrupted:
            result = {"error": f"model {model_id!r} is corrupted", "category": "server"}
        elif (
            (kind, name) in run.checkpoints
            and not overwrite
            and not (run.checkpoints[(kind, name)].deleted)
        ):
            result = {
                "error": f"checkpoint {name!r} exists; pass overwrite=true",
                "category": "user",
            }
        else:
            expires_at = None
            if ttl is not None:
                expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl)
            run.checkpoints.pop((kind, name), None)
            ckpt = self.add_checkpoint(
                model_id,
                name,
                metadata=metadata,
                expires_at=expires_at,
                checkpoint_type=kind,
            )
            result = {
                "type": "save_weights"
                if kind == "training"
                else "save_weights_for_sampler",
                "path": ckpt.tinker_path,
            }
        request_id = self._new_future(result)
        if seq is not None:
            self._saves[(model_id, seq)] = (identity, request_id)
        return {"request_id": request_id, "model_id": model_id}

    async def _save_weights(
        self, request: WireRequest, params: Mapping[str, str]
    ) -> Any:
        return await self._save(request, "training")

    async def _save_weights_for_sampler(
        self, request: WireRequest, params: Mapping[str, str]
    ) -> Any:
        return await self._save(request, "sampler")

    async def _retrieve_future(
        self, request: WireRequest, params: Mapping[str, str]
    ) -> Any:
        request_id = _field(_body(request), "request_id", str)
        future = self._futures.get(request_id)
        if future is None:
            raise WireError(404, f"future {request_id!r} not found")
        now = trio.current_time()
        if future.try_again_left > 0 or now < future.ready_at:
            # Long-poll briefly: wake early if the result becomes ready.
            deadline = now + self.long_poll
            if future.try_again_left == 0:
                deadline = min(deadline, future.ready_at)
            await trio.sleep_until(deadline)
            if future.try_again_left > 0:
                future.try_again_left -= 1
                return _try_again(request_id)
            if trio.current_time() < future.ready_at:
                return _try_again(request_id)
        return future.result

    async def _get_info(self, request: WireRequest, params: Mapping[str, str]) -> Any:
        model_id = _field(_body(request), "model_id", str)
        run = self._wire_run(model_id, what="model")
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

    def _wire_run(self, run_id: str, *, what: str = "training run") -> _Run:
        run = self._runs.get(run_id)
        if run is None:
            raise WireError(404, f"{what} {run_id!r} not found")
        return run

    # ------------------------------------------------------------------
    # The admin API: /_fake/..., for a simulator in another process

    async def _admin(self, request: WireRequest) -> Reply:
        """Answer ``/_fake/`` requests: control a simulator served elsewhere.

        ``POST /_fake/runs`` (add_run's arguments), ``POST /_fake/corrupt``
        (``{"run_id", "corrupted"?}``), ``GET /_fake/restores`` and
        ``GET /_fake/stats``.  No key is needed: the simulator is for tests.
        """
        try:
            route = (request.method, request.path)
            if route == ("POST", "/_fake/runs"):
                body = _body(request)
                checkpoints = _field(body, "checkpoints", list, required=False)
                try:
                    run = self.add_run(
                        _field(body, "run_id", str),
                        base_model=_field(body, "base_model", str, required=False)
                        or "Qwen/Qwen3-8B",
                        lora_rank=_field(body, "lora_rank", int, required=False),
                        checkpoints=("ckpt-0001", "ckpt-0002")
                        if checkpoints is None
                        else [str(c) for c in checkpoints],
                        user_metadata=_field(
                            body, "user_metadata", dict, required=False
                        ),
                        corrupted=bool(_field(body, "corrupted", bool, required=False)),
                    )
                except (KeyError, ValueError, TypeError) as exc:
                    raise WireError(400, str(exc)) from exc
                return Reply(200, run.to_json())
            if route == ("POST", "/_fake/corrupt"):
                body = _body(request)
                run_id = _field(body, "run_id", str)
                flag = _field(body, "corrupted", bool, required=False)
                self._wire_run(run_id).corrupted = True if flag is None else flag
                return Reply(200, {})
            if route == ("GET", "/_fake/restores"):
                return Reply(200, {"restores": self.restores})
            if route == ("GET", "/_fake/stats"):
                return Reply(
                    200,
                    {
                        "requests": self.requests_received,
                        "runs": len(self._runs),
                        "sessions": len(self._sessions),
                        "restores": self.restores,
                        "idempotent_replays": self.idempotent_replays,
                    },
                )
            raise WireError(404, f"no admin endpoint {request.method} {request.path}")
        except WireError as exc:
            return exc.reply()


def _try_again(request_id: str) -> dict[str, Any]:
    return {"type": "try_again", "request_id": request_id, "queue_state": "active"}


def _body(request: WireRequest) -> dict[str, Any]:
    if request.json_error is not None:
        raise WireError(400, request.json_error)
    if request.json is NO_BODY or not isinstance(request.json, dict):
        raise WireError(422, "the request body must be a JSON object")
    return request.json


def _field(
    body: Mapping[str, Any], name: str, kind: type, *, required: bool = True
) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise WireError(422, f"field {name!r} is required")
        return None
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise WireError(
            422, f"field {name!r} must be {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _query_int(request: WireRequest, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise WireError(422, f"query parameter {name!r} must be an integer") from None
    if value < 0:
        raise WireError(422, f"query parameter {name!r} must be >= 0")
    return value


_Handler = Callable[[FakeTinker, WireRequest, Mapping[str, str]], Awaitable[Any]]

_RUN = r"(?P<run_id>[^/]+)"

#: (method, path pattern, endpoint); paths are matched whole.
_ROUTES: list[tuple[str, re.Pattern[str], _Handler]] = [
    (method, re.compile(pattern), handler)
    for method, pattern, handler in [
        ("GET", r"/api/v1/healthz", FakeTinker._healthz),
        ("GET", r"/api/v1/training_runs", FakeTinker._list_training_runs),
        ("GET", rf"/api/v1/training_runs/{_RUN}", FakeTinker._get_training_run),
        (
            "GET",
            rf"/api/v1/training_runs/{_RUN}/checkpoints",
            FakeTinker._list_checkpoints,
        ),
        (
            "DELETE",
            rf"/api/v1/training_runs/{_RUN}/checkpoints/"
            r"(?P<checkpoint_id>(?:weights|sampler_weights)/[^/]+)",
            FakeTinker._delete_checkpoint,
        ),
        ("POST", r"/api/v1/weights_info", FakeTinker._weights_info),
        ("POST", r"/api/v1/client/config", FakeTinker._client_config),
        ("POST", r"/api/v1/client/dynamic_config", FakeTinker._dynamic_config),
        ("POST", r"/api/v1/create_session", FakeTinker._create_session),
        ("POST", r"/api/v1/session_heartbeat", FakeTinker._session_heartbeat),
        (
            "POST",
            r"/api/v1/sessions/(?P<session_id>[^/]+)/finish",
            FakeTinker._finish_session,
        ),
        ("POST", r"/api/v1/load_weights", FakeTinker._load_weights),
        ("POST", r"/api/v1/retrieve_future", FakeTinker._retrieve_future),
        ("POST", r"/api/v1/get_info", FakeTinker._get_info),
        ("POST", r"/api/v1/save_weights", FakeTinker._save_weights),
        (
            "POST",
            r"/api/v1/save_weights_for_sampler",
            FakeTinker._save_weights_for_sampler,
        ),
        ("POST", r"/api/v1/telemetry", FakeTinker._telemetry),
    ]
]
