"""Tinker's data, as it travels on the wire.

``TrainingRun``, ``Checkpoint``, ``WeightsInfo`` and
``ForwardBackwardOutput`` keep the wire's field names.  ``from_json`` is
lenient about what it does not know (extra fields are ignored) but never
silent about what it needs: a missing or mistyped field raises
`ResponseValidationError` naming the field by its JSON path.  All
conversion goes through one private cattrs converter built here.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Self, TypeVar, cast

import attrs
import cattrs
from cattrs.preconf.json import make_converter

from ._errors import ResponseValidationError

__all__ = [
    "Checkpoint",
    "ForwardBackwardOutput",
    "TrainingRun",
    "TrainingRunPage",
    "WeightsInfo",
]

_T = TypeVar("_T")


def parse_each(
    items: Iterable[Any], parse: Callable[[Any], _T], where: str
) -> list[_T]:
    """``parse`` of every item; a malformed one's error names ``where[index]``.

    Raises:
        ResponseValidationError: An item is malformed.
    """
    parsed = []
    for index, item in enumerate(items):
        try:
            parsed.append(parse(item))
        except ResponseValidationError as exc:
            raise ResponseValidationError(f"{where}[{index}]: {exc}") from exc
    return parsed


_TINKER_PATH = re.compile(
    r"^tinker://(?P<run>[^/]+)/(?P<kind>weights|sampler_weights)/(?P<name>[^/]+)$"
)


def _strict(kind: type[_T]) -> Callable[[Any, type[_T]], _T]:
    """A structure hook that accepts only values already of ``kind``.

    cattrs' default for primitives calls ``kind(value)``, which would turn
    ``"false"`` into ``True`` and ``12`` into ``"12"``: silent, so not ours.
    """

    def structure(value: Any, _: type[_T]) -> _T:
        # bool is an int subclass: never accept it where a number is meant.
        if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
            return value
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return cast("_T", float(value))
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")

    return structure


def _structure_datetime(value: Any, _: type[dt.datetime]) -> dt.datetime:
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO 8601 string, got {type(value).__name__}")
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed


def _make_converter() -> cattrs.Converter:
    converter = make_converter()
    for kind in (str, int, float, bool):
        converter.register_structure_hook(kind, _strict(kind))
    converter.register_structure_hook(dt.datetime, _structure_datetime)
    converter.register_unstructure_hook(dt.datetime, lambda value: value.isoformat())
    return converter


_converter = _make_converter()


def _structure(obj: object, cls: type[_T]) -> _T:
    if not isinstance(obj, Mapping):
        raise ResponseValidationError(
            f"{cls.__name__}: expected a JSON object, got {type(obj).__name__}"
        )
    try:
        return _converter.structure(obj, cls)
    except Exception as exc:  # cattrs raises ExceptionGroups; flatten them.
        problems = cattrs.transform_error(exc, path=cls.__name__)
        raise ResponseValidationError(
            f"malformed {cls.__name__}: " + "; ".join(problems)
        ) from exc


class _WireData:
    """``from_json`` / ``to_json`` for the wire's value objects."""

    __slots__ = ()

    @classmethod
    def from_json(cls, obj: object) -> Self:
        """Build one from its wire JSON (a decoded object); extras are ignored.

        Raises:
            ResponseValidationError: A required field is missing or mistyped;
                the message names it by its JSON path.
        """
        return _structure(obj, cls)

    def to_json(self) -> dict[str, Any]:
        """The wire JSON object."""
        return cast("dict[str, Any]", _converter.unstructure(self))


@attrs.frozen
class Checkpoint(_WireData):
    """A saved checkpoint of a training run."""

    #: The checkpoint's id within its run, e.g. ``"weights/ckpt-0005"``.
    checkpoint_id: str
    #: ``"training"`` (weights and optimizer state) or ``"sampler"``.
    checkpoint_type: str
    #: When it was saved; ``None`` when only the path is known.
    time: dt.datetime | None
    #: Where it lives: ``tinker://{run}/weights/{name}``.
    tinker_path: str
    #: Its size, when the service reports it.
    size_bytes: int | None = None
    #: Whether it is public.
    public: bool = False
    #: When the service will delete it, if it ever will.
    expires_at: dt.datetime | None = None
    #: Free-form metadata, e.g. ``{"loss": "0.12"}`` for `Best`.
    user_metadata: dict[str, Any] | None = None

    @classmethod
    def from_path(cls, tinker_path: str) -> Checkpoint:
        """A checkpoint known only by its ``tinker://`` path.

        Raises:
            ValueError: ``tinker_path`` is not ``tinker://{run}/weights/{name}``.
        """
        _, kind, name = parse_tinker_path(tinker_path)
        return cls(
            checkpoint_id=f"{kind}/{name}",
            checkpoint_type="sampler" if kind == "sampler_weights" else "training",
            time=None,
            tinker_path=tinker_path,
        )

    @property
    def run_id(self) -> str:
        """The id of the run this checkpoint belongs to."""
        return parse_tinker_path(self.tinker_path)[0]

    def is_expired(self, now: dt.datetime | None = None) -> bool:
        """Whether ``expires_at`` has passed (wall clock, as the service's)."""
        if self.expires_at is None:
            return False
        return self.expires_at <= (now or dt.datetime.now(dt.UTC))


@attrs.frozen
class TrainingRun(_WireData):
    """A training run as ``GET /api/v1/training_runs/{id}`` reports it."""

    #: The run's id.
    training_run_id: str
    #: The base model being fine-tuned, e.g. ``"Qwen/Qwen3-8B"``.
    base_model: str
    #: Who owns the run.
    model_owner: str
    #: Whether it trains a LoRA adapter.
    is_lora: bool
    #: When the run last handled a request.
    last_request_time: dt.datetime
    #: ``True`` once the backend flagged the run as broken.
    corrupted: bool = False
    #: The LoRA rank, for LoRA runs.
    lora_rank: int | None = None
    #: The newest training checkpoint, if any.
    last_checkpoint: Checkpoint | None = None
    #: The newest sampler checkpoint, if any.
    last_sampler_checkpoint: Checkpoint | None = None
    #: Free-form metadata attached by the user.
    user_metadata: dict[str, Any] | None = None


@attrs.frozen
class WeightsInfo(_WireData):
    """What ``POST /api/v1/weights_info`` reports about a checkpoint."""

    #: The base model the weights belong to.
    base_model: str
    #: Whether the weights are a LoRA adapter.
    is_lora: bool
    #: The LoRA rank, for LoRA weights.
    lora_rank: int | None = None
    #: Whether the unembedding is trained.
    train_unembed: bool | None = None
    #: Whether MLP layers are trained.
    train_mlp: bool | None = None
    #: Whether attention layers are trained.
    train_attn: bool | None = None


@attrs.frozen
class ForwardBackwardOutput(_WireData):
    """The result of a forward and backward pass (the SDK's type of that name)."""

    #: The class name of the per-example records, e.g. ``"ArrayRecord"``.
    loss_fn_output_type: str
    #: One record per example: field name to tensor, in the wire's
    #: ``TensorData`` form (``{"data", "dtype", "shape"}``).
    loss_fn_outputs: list[dict[str, Any]]
    #: Training metrics, e.g. ``{"loss:sum": 3.2}``.
    metrics: dict[str, float] = attrs.field(factory=dict)


def parse_tinker_path(path: str) -> tuple[str, str, str]:
    """Split ``tinker://{run}/{weights|sampler_weights}/{name}``.

    Returns:
        ``(run_id, kind, name)``.

    Raises:
        ValueError: ``path`` is not a checkpoint path.
    """
    if not isinstance(path, str):
        raise TypeError(f"tinker path must be a str, got {type(path).__name__}")
    match = _TINKER_PATH.match(path)
    try:
        if match is None:
            raise ValueError("wrong shape")
        # Both parts follow the run-id rules: nothing that escapes the path.
        validate_run_id(match["run"])
        validate_run_id(match["name"])
    except ValueError:
        raise ValueError(
            f"not a checkpoint path: {path[:300]!r}; "
            "expected 'tinker://{run}/weights/{name}'"
        ) from None
    return match["run"], match["kind"], match["name"]


_RUN_ID_FORBIDDEN = frozenset("/\\?#%")
MAX_RUN_ID_LENGTH = 256


def validate_run_id(run_id: object) -> str:
    """Check that ``run_id`` can be put in a URL path as it is.

    A run id is 1 to 256 printable ASCII characters without whitespace, ``/``,
    ``\\``, ``?``, ``#`` or ``%``, and is not ``.`` or ``..``: anything else
    could address another resource than the run.

    Returns:
        The run id, unchanged.

    Raises:
        TypeError: ``run_id`` is not a str.
        ValueError: ``run_id`` breaks a rule; the message says which.
    """
    if not isinstance(run_id, str):
        raise TypeError(f"run_id must be a str, got {type(run_id).__name__}")
    if not run_id:
        raise ValueError("run_id must not be empty")
    if len(run_id) > MAX_RUN_ID_LENGTH:
        raise ValueError(
            f"run_id is {len(run_id)} characters long; at most "
            f"{MAX_RUN_ID_LENGTH} are allowed"
        )
    if run_id in (".", ".."):
        raise ValueError(f"run_id must not be {run_id!r}")
    for index, char in enumerate(run_id):
        if char in _RUN_ID_FORBIDDEN:
            raise ValueError(
                f"run_id {run_id!r} contains {char!r} at position {index}; "
                "'/', '\\', '?', '#' and '%' are not allowed"
            )
        if not ("!" <= char <= "~"):
            raise ValueError(
                f"run_id {run_id!r} contains {char!r} at position {index}; "
                "only printable ASCII without whitespace is allowed"
            )
    return run_id


def _expect(value: object, kind: type, what: str, endpoint: str, where: str) -> None:
    """Raise `ResponseValidationError` unless ``value`` is a ``kind``.

    The message names the endpoint, what was expected and where
    (``where`` empty: the body itself).
    """
    if not isinstance(value, kind):
        at = f" at {where}" if where else ""
        raise ResponseValidationError(
            f"{endpoint}: expected {what}{at}, got {type(value).__name__}"
        )


def _cursor_int(cursor: Mapping[str, Any], field: str, endpoint: str) -> int:
    value = cursor.get(field)
    if type(value) is not int or value < 0:
        raise ResponseValidationError(
            f"{endpoint}: expected an int >= 0 at $.cursor.{field}, got {value!r}"[:300]
        )
    return value


@attrs.frozen
class TrainingRunPage:
    """One page of ``GET /api/v1/training_runs``: runs and the cursor.

    The runs stay as the wire's JSON objects: reading one run's
    ``corrupted`` flag from a page costs next to nothing, structuring it
    into a `TrainingRun` (`training_runs`) costs tens of microseconds.
    """

    #: The runs on the page, as decoded JSON objects, in the service's order.
    items: tuple[Mapping[str, Any], ...]
    #: Where the page starts in the whole list.
    offset: int
    #: The most runs the page could hold (the service may cap what was asked).
    limit: int
    #: How many runs the whole list holds now.
    total_count: int

    @classmethod
    def from_json(
        cls, obj: object, *, endpoint: str = "GET /api/v1/training_runs"
    ) -> TrainingRunPage:
        """Check the page's shape; the runs themselves are not structured.

        Raises:
            ResponseValidationError: ``training_runs`` is not a list of
                objects, or the cursor lacks an ``offset``, ``limit`` or
                ``total_count`` (ints >= 0).
        """
        _expect(obj, Mapping, "a JSON object", endpoint, "")
        assert isinstance(obj, Mapping)
        items = obj.get("training_runs")
        _expect(items, list, "a list", endpoint, "$.training_runs")
        assert isinstance(items, list)
        for index, item in enumerate(items):
            _expect(item, Mapping, "an object", endpoint, f"$.training_runs[{index}]")
        cursor = obj.get("cursor")
        _expect(cursor, Mapping, "an object", endpoint, "$.cursor")
        assert isinstance(cursor, Mapping)
        return cls(
            items=tuple(items),
            offset=_cursor_int(cursor, "offset", endpoint),
            limit=_cursor_int(cursor, "limit", endpoint),
            total_count=_cursor_int(cursor, "total_count", endpoint),
        )

    def training_runs(self) -> list[TrainingRun]:
        """Every run on the page, structured.

        Raises:
            ResponseValidationError: A run is malformed; the message names
                its index and field.
        """
        return parse_each(self.items, TrainingRun.from_json, "$.training_runs")


#: The scopes a list request may ask for.
ACCESS_SCOPES = ("owned", "accessible")


def list_params(
    *, limit: int, offset: int, access_scope: str, project_id: str | None
) -> dict[str, str]:
    """The query of one list request, its values checked.

    Raises:
        TypeError: A value of the wrong type.
        ValueError: ``limit`` < 1, ``offset`` < 0, an unknown
            ``access_scope`` or an empty ``project_id``.
    """
    for name, value, least in (("limit", limit, 1), ("offset", offset, 0)):
        if type(value) is not int:
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    if access_scope not in ACCESS_SCOPES:
        raise ValueError(
            f"access_scope must be 'owned' or 'accessible', got {access_scope!r}"
        )
    params = {"limit": str(limit), "offset": str(offset), "access_scope": access_scope}
    if project_id is not None:
        if not isinstance(project_id, str):
            raise TypeError(
                f"project_id must be a str, got {type(project_id).__name__}"
            )
        if not project_id:
            raise ValueError("project_id must not be empty")
        params["project_id"] = project_id
    return params
