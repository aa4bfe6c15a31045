"""The native `TrainingClient`: a restored model that trains and saves.

Steps (``forward_backward``, ``optim_step``) and saves of one client go out
one at a time, in order, each with the client's next ``seq_id``; one that
failed without a clear answer is sent again, the same request, when it is
repeated.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .._errors import ResponseValidationError, TinkerAPIError
from .._types import Checkpoint, ForwardBackwardOutput, parse_tinker_path
from .._util import NoPublicConstructor
from .._validators import check_number
from ._futures import retrieve_future
from ._operations import Operation, is_definitive, required_str

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._http import HTTPClient

__all__ = ["TrainingClient", "check_checkpoint_name"]


def check_checkpoint_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"checkpoint name must be a str, got {type(name).__name__}")
    try:
        parse_tinker_path(f"tinker://run/weights/{name}")
    except ValueError:
        raise ValueError(
            f"checkpoint name {name[:100]!r} is not a valid path segment: use 1 or "
            "more printable characters without whitespace, '/', '\\', '?', '#' or '%'"
        ) from None
    return name


@attrs.define
class _SaveState:
    """A training client's save sequence (mutable, behind the frozen client)."""

    #: The SDK's ``seq_id`` for the model's requests: the load was 0.
    next_seq_id: int = 1
    lock: trio.Lock = attrs.field(factory=trio.Lock)
    #: Saves that failed ambiguously, by checkpoint name.
    pending: dict[str, Operation] = attrs.field(factory=dict)

    def take_seq_id(self) -> int:
        seq_id = self.next_seq_id
        self.next_seq_id += 1
        return seq_id


@attrs.frozen(eq=False)
class TrainingClient(metaclass=NoPublicConstructor):
    """A model restored from a checkpoint, training in the service's session.

    Made by `ServiceClient.create_training_client_from_state` (and
    ``..._with_optimizer``); it has no public constructor.  Usable while its
    service client is open: closing that finishes the session.
    """

    _factory_hint = "use ServiceClient.create_training_client_from_state()"

    #: The new model's id, ``f"{session_id}:train:{model_seq_id}"``; it is
    #: also the id of the training run the restore created.
    model_id: str
    #: The service client's session the model lives in.
    session_id: str
    #: The base model, as the checkpoint's weights info reports it.
    base_model: str
    #: The LoRA rank, for LoRA weights.
    lora_rank: int | None
    #: The checkpoint restored from (``None`` for a new LoRA model).
    checkpoint: Checkpoint | None
    #: Whether the optimizer state was restored too.
    optimizer_restored: bool
    _http: HTTPClient = attrs.field(repr=False, alias="http")
    _saves: _SaveState = attrs.field(factory=_SaveState, repr=False, init=False)

    async def save_state(
        self,
        name: str,
        *,
        user_metadata: Mapping[str, str] | None = None,
        ttl_seconds: int | None = None,
    ) -> Checkpoint:
        """Save the model's weights and optimizer state as a training checkpoint.

        ``POST /api/v1/save_weights {"model_id", "path": name, "seq_id",
        "overwrite": false, "user_metadata"?, "ttl_seconds"?, "type":
        "save_weights"}``, then
        the result from ``retrieve_future`` (as ``TrainingClient.save_state``
        in the SDK's ``training_client.py``).  Requests of one client (saves
        and training steps) run one at a time, in order.  A save that failed
        without a clear answer is repeated with the same request by the next
        ``save_state`` of the same name and metadata.

        Args:
            name: The checkpoint's name, e.g. ``"ckpt-0003"``.
            user_metadata: Stored with the checkpoint (strings to strings, as
                the SDK's), e.g. ``{"step": "12"}``; sent only when given.
            ttl_seconds: Seconds the service keeps the checkpoint before it
                expires (``None``: as long as the service keeps checkpoints).

        Returns:
            The checkpoint, ``tinker://{model_id}/weights/{name}``; its
            ``time`` is ``None`` (the service reports only the path).

        Raises:
            TypeError: ``name`` is not a str, ``user_metadata`` is not a
                mapping of strings to strings, or ``ttl_seconds`` not an int.
            ValueError: ``name`` cannot be a checkpoint name, or
                ``ttl_seconds`` is not > 0.
            RequestFailedError: The service failed the save.
            TinkerAPIError: A request failed (after retries if transient).
            ResponseValidationError: An answer is malformed.
        """
        check_checkpoint_name(name)
        request: dict[str, Any] = {
            "model_id": self.model_id,
            "path": name,
            "overwrite": False,
            "type": "save_weights",
        }
        if user_metadata is not None:
            request["user_metadata"] = _check_user_metadata(user_metadata)
        if ttl_seconds is not None:
            check_number("ttl_seconds", ttl_seconds, minimum=1, integer=True)
            request["ttl_seconds"] = ttl_seconds
        result = await self._in_order(
            "/api/v1/save_weights", request, request_type="SaveWeights"
        )
        path = required_str(result, "path", "save_weights result")
        try:
            return Checkpoint.from_path(path)
        except ValueError as exc:
            raise ResponseValidationError(
                f"save_weights result: $.path is not a checkpoint path: {path[:200]!r}"
            ) from exc

    async def forward_backward(
        self,
        data: Sequence[Mapping[str, Any]],
        loss_fn: str,
        *,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> ForwardBackwardOutput:
        """A forward and backward pass: gradients accumulate until `optim_step`.

        ``POST /api/v1/forward_backward {"forward_backward_input": {"data",
        "loss_fn", "loss_fn_config"?}, "model_id", "seq_id"}``, then the
        result from ``retrieve_future``.  This is the JSON form of the SDK's
        ``ForwardBackwardRequest`` (SDK 0.38 sends the same fields as
        protobuf, and splits a large batch into several requests; this
        sends one).  It takes its place in the client's request order like
        `save_state`, and a call that failed without a clear answer is
        repeated with the same request by the next call with the same
        arguments.

        Args:
            data: The batch: each example a ``Datum`` in the SDK's JSON form,
                e.g. ``{"model_input": {"chunks": [{"type": "encoded_text",
                "tokens": [...]}]}, "loss_fn_inputs": {"target_tokens":
                {"data": [...], "dtype": "int64", "shape": [n]}, ...}}``.
            loss_fn: The loss function, e.g. ``"cross_entropy"``.
            loss_fn_config: Its parameters, if any.

        Returns:
            The per-example outputs and the metrics (e.g. ``"loss:sum"``).

        Raises:
            TypeError: ``data`` is not a sequence of mappings, or is not JSON.
            ValueError: ``data`` is empty (nothing is sent).
            RequestFailedError: The service failed the pass (e.g. the model
                is corrupted: category ``server``).
            TinkerAPIError: A request failed (after retries if transient).
            ResponseValidationError: The answer is not a forward-backward output.
        """
        if isinstance(data, str | bytes | Mapping):
            raise TypeError("data must be a sequence of Datum mappings")
        examples = list(data)
        if not all(isinstance(datum, Mapping) for datum in examples):
            raise TypeError("data must be a sequence of Datum mappings")
        if not examples:
            raise ValueError("data is empty: a forward pass needs an example")
        if not isinstance(loss_fn, str):
            raise TypeError(f"loss_fn must be a str, got {type(loss_fn).__name__}")
        given: dict[str, Any] = {"data": [dict(datum) for datum in examples]}
        given["loss_fn"] = loss_fn
        if loss_fn_config is not None:
            given["loss_fn_config"] = dict(loss_fn_config)
        result = await self._in_order(
            "/api/v1/forward_backward",
            {"forward_backward_input": given, "model_id": self.model_id},
            request_type="ForwardBackward",
        )
        try:
            return ForwardBackwardOutput.from_json(result)
        except ResponseValidationError as exc:
            raise ResponseValidationError(f"forward_backward result: {exc}") from exc

    async def optim_step(
        self,
        *,
        learning_rate: float = 1e-4,
        beta1: float = 0.9,
        beta2: float = 0.95,
        eps: float = 1e-12,
        weight_decay: float = 0.0,
        grad_clip_norm: float = 0.0,
    ) -> dict[str, float]:
        """An Adam step with the gradients accumulated since the last one.

        ``POST /api/v1/optim_step {"model_id", "seq_id", "type": "optim_step",
        "adam_params": {...}}``, then the result from ``retrieve_future``: the
        SDK's ``OptimStepRequest`` with ``AdamParams`` (whose defaults these
        are, all sent).  Ordered and repeated like `forward_backward`.

        Returns:
            The step's metrics (often empty).

        Raises:
            TypeError: A parameter is not a number.
            ValueError: A parameter is not finite, or ``learning_rate`` < 0.
            RequestFailedError: The service failed the step.
            TinkerAPIError: A request failed (after retries if transient).
            ResponseValidationError: The answer has malformed metrics.
        """
        adam_params = {
            "learning_rate": learning_rate,
            "beta1": beta1,
            "beta2": beta2,
            "eps": eps,
            "weight_decay": weight_decay,
            "grad_clip_norm": grad_clip_norm,
        }
        for field, value in adam_params.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{field} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{field} must be finite, got {value!r}")
        if learning_rate < 0:
            raise ValueError(f"learning_rate must be >= 0, got {learning_rate!r}")
        result = await self._in_order(
            "/api/v1/optim_step",
            {
                "model_id": self.model_id,
                "type": "optim_step",
                "adam_params": {k: float(v) for k, v in adam_params.items()},
            },
            request_type="OptimStep",
        )
        metrics = result.get("metrics") or {}
        if not isinstance(metrics, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool)
            for v in metrics.values()
        ):
            raise ResponseValidationError(
                f"optim_step result: expected numbers at $.metrics, got {metrics!r}"[
                    :300
                ]
            )
        return {str(k): float(v) for k, v in metrics.items()}

    async def _in_order(
        self, path: str, request: dict[str, Any], *, request_type: str
    ) -> dict[str, Any]:
        """Send a training request with the client's next ``seq_id``; its result.

        One at a time, in order, with `save_state`.  A request that failed
        without a clear answer is kept, so the same request repeated (same
        body) is sent again with its first ``seq_id`` and idempotency key.
        """
        pending_key = f"{path} {_digest(request)}"
        saves = self._saves
        async with saves.lock:
            operation = saves.pending.pop(pending_key, None) or Operation(
                seq_id=saves.take_seq_id()
            )
            settled = False
            try:
                body = await self._http.request_object(
                    "POST",
                    path,
                    json={**request, "seq_id": operation.seq_id},
                    idempotency_key=operation.key,
                )
                request_id = required_str(body, "request_id", f"POST {path}")
                result = await retrieve_future(
                    self._http, request_id, request_type=request_type
                )
                settled = True
                return result
            except TinkerAPIError as exc:
                settled = settled or not exc.retryable or is_definitive(exc)
                raise
            finally:
                if not settled:
                    saves.pending[pending_key] = operation


def _check_user_metadata(metadata: object) -> dict[str, str]:
    if not isinstance(metadata, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise TypeError("user_metadata must be a mapping of str to str")
    return dict(metadata)


def _digest(value: object) -> str:
    """A short fingerprint of a JSON value, to recognise a repeated request.

    It is taken before a ``seq_id`` is: a body that cannot be sent fails here.

    Raises:
        TypeError: ``value`` is not JSON (NaN and infinities included).
    """
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:  # a NaN or a circular reference
        raise TypeError(f"not valid JSON: {exc}") from None
    return hashlib.sha256(text.encode()).hexdigest()
