"""The simulator's state: what `FakeTinker` holds, and nothing of HTTP.

`TinkerState` keeps the runs, checkpoints, sessions, futures and restored
models; the request log and the faults come from `Traffic`.  Its
methods are the state API users call (``add_run``, ``corrupt``, ...) and the
operations the endpoints perform (``create_session``, ``load_weights``,
...); an operation the service refuses raises `Refused`, which the
endpoints answer as an HTTP error.

Every operation reads or changes the same runs, so they stay in one
class; what has a life of its own lives beside it: the sessions and futures
(``_sessions``), the records (``_model``), the request log and faults
(``_traffic``) and the per-model request log (``_training``).

Times on the wire (checkpoint ``time``, ``last_request_time``) come from a
logical clock that starts at ``epoch`` and advances one minute per event, so
they are deterministic and strictly increasing.  Futures and the request log
use Trio time, so everything works under ``MockClock``.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import TYPE_CHECKING, Any, Literal

import attrs
import trio

from .._types import Checkpoint, TrainingRun, WeightsInfo, parse_tinker_path
from ._creation import Clock, check_corrupted_requests, new_model
from ._index import Listing, RunIndex
from ._model import (
    DEFAULT_EPOCH,
    KIND_SEGMENT,
    LIST_ORDERS,
    CorruptedRequests,
    ListOrder,
    PendingFuture,
    Refused,
    StoredCheckpoint,
    StoredLoad,
    StoredRun,
    StoredSession,
)
from ._records import Restore, SessionInfo, TrainingStep
from ._sessions import Futures, Ids, Sessions
from ._traffic import DEFAULT_REQUEST_LOG_LIMIT, Traffic
from ._training import ModelLog

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

__all__ = ["TinkerState"]


class TinkerState(Traffic, Listing):
    """An in-memory Tinker service's state; `FakeTinker` serves it over HTTP.

    The constructor's options are documented on `FakeTinker`.
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
        request_log_limit: int | None = DEFAULT_REQUEST_LOG_LIMIT,
        list_order: ListOrder = "recent",
        list_page_max: int = 100,
        corrupted_requests: CorruptedRequests = "fail",
        wall_clock: bool = False,
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
        if epoch.tzinfo is None:
            raise ValueError("epoch must be timezone-aware")
        if list_order not in LIST_ORDERS:
            raise ValueError(
                f"list_order must be one of {', '.join(LIST_ORDERS)}, "
                f"got {list_order!r}"
            )
        if isinstance(list_page_max, bool) or not isinstance(list_page_max, int):
            raise TypeError("list_page_max must be an int")
        if list_page_max < 1:
            raise ValueError(f"list_page_max must be >= 1, got {list_page_max}")
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
        self.corrupted_requests = check_corrupted_requests(corrupted_requests)
        self.wall_clock = wall_clock
        self.list_order: ListOrder = list_order
        self.list_page_max = list_page_max
        super().__init__(seed=seed, request_log_limit=request_log_limit)
        self.telemetry_batches = 0
        self.list_requests = 0
        self._list_rng = random.Random(f"list:{seed}")
        self._epoch = epoch
        self._clock = Clock(epoch)
        self._runs: dict[str, StoredRun] = {}
        self._index = RunIndex()
        self._ids = Ids()
        self._sessions = Sessions(self._ids)
        self._futures = Futures(self._ids)
        self._model_log = ModelLog()
        self._restores: list[Restore] = []

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} runs={len(self._runs)} "
            f"sessions={len(self._sessions)} requests={self.requests_received}>"
        )

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
        project_id: str | None = None,
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
            project_id: Its project: listing with a ``project_id`` shows only
                the runs of that project.

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
        self._runs[run_id] = StoredRun(
            run_id=run_id,
            base_model=base_model,
            lora_rank=lora_rank,
            model_owner=model_owner or self.model_owner,
            user_metadata=None if user_metadata is None else dict(user_metadata),
            last_request_time=self._stamp(),
            corrupted=corrupted,
            project_id=project_id,
        )
        self._index.add(self._runs[run_id])
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
        if checkpoint_type not in KIND_SEGMENT:
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
        ckpt = StoredCheckpoint(
            name=name,
            kind=checkpoint_type,
            time=self._stamp(),
            metadata=None if metadata is None else dict(metadata),
            expires_at=expires_at,
            size_bytes=size_bytes,
        )
        run.checkpoints.pop(key, None)
        run.checkpoints[key] = ckpt
        self._index.touch(run, ckpt.time)
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
        return WeightsInfo.from_json(run.weights_info_json())

    @property
    def run_ids(self) -> tuple[str, ...]:
        """The ids of every run, restored models included, in creation order."""
        return tuple(self._runs)

    @property
    def sessions(self) -> dict[str, SessionInfo]:
        """A snapshot of every session, by id."""
        return self._sessions.snapshot()

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

    def restore_of(self, model_id: str) -> Restore | None:
        """How ``model_id`` was restored (``optimizer``: with optimizer state).

        ``None`` for a run added with `add_run`, or a model never restored.
        """
        return next((r for r in self._restores if r.model_id == model_id), None)

    def training_steps(self, model_id: str) -> list[TrainingStep]:
        """The training steps and saves ``model_id`` received, in arrival order.

        Each names its ``seq_id``, and whether the model had been superseded
        (a restore from its checkpoints) or its session had finished.

        Raises:
            KeyError: No such run or model.
        """
        self._run(model_id)
        return self._model_log.steps(model_id)

    # ------------------------------------------------------------------
    # Operations the endpoints perform

    def find_run(self, run_id: str) -> StoredRun | None:
        """A run or restored model by id, or ``None``."""
        return self._runs.get(run_id)

    def find_future(self, request_id: str) -> PendingFuture | None:
        """A future by its request id, or ``None``."""
        return self._futures.find(request_id)

    def create_session(
        self,
        tags: Iterable[str],
        user_metadata: Mapping[str, Any],
        project_id: str | None = None,
    ) -> str:
        """Open a session (its models belong to ``project_id``); its id."""
        return self._sessions.create(
            tags=tuple(map(str, tags)),
            user_metadata=dict(user_metadata),
            project_id=project_id,
        )

    def live_session(self, session_id: str) -> StoredSession:
        """A session that has not finished.

        Raises:
            Refused: No such session, or it has finished.
        """
        return self._sessions.live(session_id)

    def finish_session(self, session_id: str, reason: str | None) -> None:
        """Finish a session; the first reason given wins.

        Raises:
            Refused: No such session.
        """
        self._sessions.finish(session_id, reason)

    def unrestorable(self, path: str, *, allow_sampler: bool = False) -> str | None:
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

    def load_weights(
        self,
        session_id: str,
        seq: int,
        path: str,
        *,
        optimizer: bool,
        user_metadata: dict[str, Any] | None = None,
    ) -> tuple[str, str]:
        """Restore ``path`` as model ``{session_id}:train:{seq}``.

        A checkpoint that cannot be restored makes the future fail as a user
        error; asking again for the same ``seq`` with the same path and
        ``optimizer`` answers the first request's future.

        Returns:
            ``(request_id, model_id)``: the future and the model's id.

        Raises:
            Refused: The session is unknown or finished, or ``seq`` was used
                for another request.
        """
        session = self.live_session(session_id)
        identity = (path, optimizer)
        model_id = f"{session_id}:train:{seq}"
        previous = session.loads.get(seq)
        if previous is not None:
            if previous.identity != identity:
                raise Refused(
                    "conflict", f"model_seq_id {seq} of this session is already used"
                )
            return previous.request_id, model_id
        if model_id in self._runs:
            raise Refused("conflict", f"model {model_id!r} exists already")
        problem = self.unrestorable(path)
        if problem is not None:
            result: dict[str, Any] = {"error": problem, "category": "user"}
        else:
            source, ckpt = self._checkpoint(path)
            self._runs[model_id] = StoredRun(
                run_id=model_id,
                base_model=source.base_model,
                lora_rank=source.lora_rank,
                model_owner=source.model_owner,
                user_metadata=user_metadata,
                last_request_time=self._stamp(),
                restored_from=Checkpoint.from_json(source.checkpoint_json(ckpt)),
                project_id=session.project_id,
                session_id=session_id,
            )
            self._index.add(self._runs[model_id])
            self._model_log.supersede(source.run_id, model_id)
            self._restores.append(
                Restore(
                    model_id=model_id,
                    source_run_id=source.run_id,
                    tinker_path=path,
                    optimizer=optimizer,
                    session_id=session_id,
                )
            )
            result = {"type": "load_weights", "path": path, "model_id": model_id}
        request_id = self._new_future(result)
        session.loads[seq] = StoredLoad(
            identity=identity,
            request_id=request_id,
            model_id=model_id,
            restored=problem is None,
        )
        return request_id, model_id

    def create_model(
        self,
        session_id: str,
        seq: int,
        *,
        base_model: str,
        lora_rank: int | None,
        user_metadata: dict[str, Any] | None = None,
    ) -> tuple[str, str]:
        """Create model ``{session_id}:train:{seq}``; see `new_model`."""
        created = new_model(
            self._runs,
            self.live_session(session_id),
            seq,
            StoredRun(
                run_id=f"{session_id}:train:{seq}",
                base_model=base_model,
                lora_rank=lora_rank,
                model_owner=self.model_owner,
                user_metadata=user_metadata,
                last_request_time=self._stamp(),
                session_id=session_id,
            ),
            self._new_future,
        )
        self._index.add(self._runs[created[1]])
        return created

    def save(
        self,
        model_id: str,
        kind: Literal["training", "sampler"],
        *,
        name: str | None,
        seq: int | None = None,
        ttl: int | None = None,
        overwrite: bool = False,
        user_metadata: dict[str, Any] | None = None,
    ) -> str:
        """Save a model's weights as checkpoint ``name``; the future's id.

        The future fails when the model is corrupted, or the name is missing
        or taken (unless ``overwrite``).

        Raises:
            Refused: No such model, or ``seq`` was used for another request.
        """

        def act(run: StoredRun) -> dict[str, Any]:
            existing = None if name is None else run.checkpoints.get((kind, name))
            if name is None:
                return {
                    "error": "the simulator needs a checkpoint name",
                    "category": "user",
                }
            if existing is not None and not overwrite and not existing.deleted:
                return {
                    "error": f"checkpoint {name!r} exists; pass overwrite=true",
                    "category": "user",
                }
            expires_at = None
            if ttl is not None:
                expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl)
            run.checkpoints.pop((kind, name), None)
            ckpt = self.add_checkpoint(
                model_id,
                name,
                metadata=user_metadata,
                expires_at=expires_at,
                checkpoint_type=kind,
            )
            return {"type": endpoint, "path": ckpt.tinker_path}

        endpoint = "save_weights" if kind == "training" else "save_weights_for_sampler"
        return self._model_request(
            TrainingStep(model_id, endpoint, seq, "", 0.0, name=name),
            (ttl, overwrite, repr(user_metadata)),
            act,
        )

    def forward_backward(
        self,
        model_id: str,
        seq: int | None,
        *,
        examples: int,
        loss_fn: str,
        forward_only: bool = False,
    ) -> str:
        """A forward (and backward) pass over ``examples`` examples; the future's id.

        The result is a ``ForwardBackwardOutput``: no per-example outputs, and
        a ``loss:sum`` metric of ``examples / (1 + optimizer steps so far)``,
        so the loss falls as the model trains.

        Raises:
            Refused: No such model, or ``seq`` was used for another request.
        """

        def act(run: StoredRun) -> dict[str, Any]:
            done = sum(s.kind == "optim_step" for s in self._model_log.steps(model_id))
            return {
                "loss_fn_output_type": "ArrayRecord",
                "loss_fn_outputs": [{} for _ in range(examples)],
                "metrics": {"loss:sum": examples / (1 + done)},
            }

        kind = "forward" if forward_only else "forward_backward"
        step = TrainingStep(model_id, kind, seq, "", 0.0, examples, loss_fn)
        return self._model_request(step, (), act)

    def optim_step(
        self, model_id: str, seq: int | None, *, learning_rate: float | None
    ) -> str:
        """An optimizer step; the future's id.

        Raises:
            Refused: No such model, or ``seq`` was used for another request.
        """
        step = TrainingStep(
            model_id, "optim_step", seq, "", 0.0, learning_rate=learning_rate
        )
        return self._model_request(step, (), lambda run: {"metrics": {}})

    def _model_request(
        self,
        step: TrainingStep,
        identity: tuple[Any, ...],
        act: Callable[[StoredRun], dict[str, Any]],
    ) -> str:
        """Act on a model for ``step`` once per ``seq_id``; record it; the future."""
        model_id = step.model_id
        run = self._runs.get(model_id)
        if run is None:
            raise Refused("not_found", f"model {model_id!r} not found")
        # What the request asked: a retry with its seq_id must ask the same.
        identity = (
            step.kind,
            step.examples,
            step.loss_fn,
            step.learning_rate,
            step.name,
            *identity,
        )
        earlier = self._model_log.earlier(model_id, step.seq_id, identity)
        if earlier is not None:
            return earlier
        mode = self.corrupted_requests if run.corrupted else "succeed"
        if mode == "fail":
            result = {"error": f"model {model_id!r} is corrupted", "category": "server"}
        else:
            result = act(run)
        hang = float("inf") if mode == "hang" else None  # polls answer try_again
        request_id = self._new_future(result, delay=hang)
        session = self._sessions.get(run.session_id or "")
        self._model_log.add(
            attrs.evolve(
                step,
                request_id=request_id,
                time=trio.current_time(),
                superseded_by=self._model_log.successor(model_id),
                session_finished=session is not None and session.finished is not None,
            ),
            identity,
        )
        self._index.touch(run, self._stamp())
        return request_id

    # ------------------------------------------------------------------
    # Internals

    def _stamp(self) -> dt.datetime:
        return self._clock.stamp(wall=self.wall_clock)

    def _run(self, run_id: str) -> StoredRun:
        try:
            return self._runs[run_id]
        except KeyError:
            raise KeyError(f"no run {run_id!r}") from None

    def _checkpoint(self, path: str) -> tuple[StoredRun, StoredCheckpoint]:
        run_id, segment, name = parse_tinker_path(path)
        kind = "sampler" if segment == "sampler_weights" else "training"
        run = self._run(run_id)
        ckpt = run.checkpoints.get((kind, name))
        if ckpt is None or ckpt.deleted:
            raise KeyError(f"no checkpoint {path!r}")
        return run, ckpt

    def _new_future(self, result: dict[str, Any], *, delay: float | None = None) -> str:
        delay = self.future_delay if delay is None else delay
        return self._futures.new(result, try_again=self.future_try_again, delay=delay)
