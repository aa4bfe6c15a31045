"""The recovery policy: whether, when and how a corrupted run is restarted."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

import attrs

from ._backoff import backoff_delay
from ._types import parse_tinker_path
from ._validators import (
    boolean,
    fraction,
    non_negative,
    number,
    positive,
    positive_int,
)

if TYPE_CHECKING:
    from ._types import Checkpoint

__all__ = [
    "Best",
    "CheckpointStrategy",
    "FailureCallback",
    "Latest",
    "Policy",
    "RecoveryCallback",
    "Specific",
]

#: ``on_recovery(old, new_client, checkpoint)``, sync or async.
RecoveryCallback: TypeAlias = Callable[[Any, Any, "Checkpoint"], Awaitable[None] | None]
#: ``on_failure(run_id, error)``, sync or async.
FailureCallback: TypeAlias = Callable[[str, BaseException], Awaitable[None] | None]


@attrs.frozen
class Latest:
    """Restore from the run's newest training checkpoint."""

    def __str__(self) -> str:
        return "latest"


def _check_path(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    try:
        parse_tinker_path(value)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"Specific.{attribute.name}: {exc}") from None


@attrs.frozen
class Specific:
    """Restore from one given checkpoint."""

    #: The checkpoint's ``tinker://{run}/weights/{name}`` path.
    path: str = attrs.field(validator=_check_path)

    def __str__(self) -> str:
        return self.path


def _check_mode(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("min", "max"):
        raise ValueError(f"Best.{attribute.name} must be 'min' or 'max', got {value!r}")


def _check_metric(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value:
        raise TypeError(f"Best.{attribute.name} must be a non-empty str, got {value!r}")


def _check_key(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"Best.{attribute.name} must be callable, got {value!r}")


@attrs.frozen
class Best:
    """Restore from the best checkpoint by a metric or a key.

    By default the metric is read from each checkpoint's ``user_metadata``
    (``Best(metric="loss", mode="min")``); checkpoints without it are not
    candidates.  ``key`` ranks checkpoints by any callable instead.
    """

    #: The ``user_metadata`` entry to rank by, parsed as a float.
    metric: str = attrs.field(default="loss", validator=_check_metric)
    #: ``"min"`` (lower is better) or ``"max"``.
    mode: Literal["min", "max"] = attrs.field(default="min", validator=_check_mode)
    #: Ranks a checkpoint instead of ``metric``; ``None`` for no candidate.
    key: Callable[[Checkpoint], float | None] | None = attrs.field(
        default=None, validator=_check_key, eq=False
    )

    def __str__(self) -> str:
        return f"best({'key' if self.key else self.metric}, {self.mode})"

    def score(self, checkpoint: Checkpoint) -> float | None:
        """The checkpoint's rank value, or ``None`` when it has none."""
        if self.key is not None:
            return self.key(checkpoint)
        raw = (checkpoint.user_metadata or {}).get(self.metric)
        if isinstance(raw, bool) or raw is None:
            return None
        try:
            value = float(raw)
        except (TypeError, ValueError, OverflowError):
            return None
        return value if math.isfinite(value) else None


CheckpointStrategy: TypeAlias = Latest | Specific | Best


def _check_max_backoff(
    policy: Policy, attribute: attrs.Attribute[float], value: float
) -> None:
    non_negative(policy, attribute, value)
    if value < policy.backoff:
        raise ValueError(
            f"Policy.{attribute.name} ({value!r}) must be ≥ "
            f"Policy.backoff ({policy.backoff!r})"
        )


def _check_strategy(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, Latest | Specific | Best):
        raise TypeError(
            f"Policy.{attribute.name} must be Latest(), Specific(path) or Best(...), "
            f"got {value!r}"
        )


def _check_callback(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not callable(value):
        raise TypeError(
            f"Policy.{attribute.name} must be callable or None, got {value!r}"
        )


#: The shortest ``poll_interval``, in seconds: ten polls a second is far
#: more often than a training run's state changes; polling faster only
#: loads the service (and a tiny interval polls back to back).
MIN_POLL_INTERVAL: Final = 0.1

_MS_FIELDS = {
    "poll_interval_ms": "poll_interval",
    "backoff_ms": "backoff",
    "max_backoff_ms": "max_backoff",
}


@attrs.frozen(kw_only=True)
class Policy:
    """How (and whether) corrupted runs are recovered.

    The defaults are conservative: recovery is off until ``enabled=True``.
    Times are in seconds.  Invalid values raise `TypeError` or `ValueError`
    naming the field.
    """

    #: Recovery is opt-in.
    enabled: bool = attrs.field(default=False, validator=boolean)
    #: Attempts per recovery before it is exhausted (≥ 1).
    max_attempts: int = attrs.field(default=3, validator=positive_int)
    #: The first retry delay; retry n waits ``min(backoff·2^(n-1), max_backoff)``.
    backoff: float = attrs.field(default=5.0, validator=non_negative)
    #: The longest retry delay (≥ ``backoff``).
    max_backoff: float = attrs.field(default=60.0, validator=_check_max_backoff)
    #: Seconds between two polls of a run (≥ 0.1, ``MIN_POLL_INTERVAL``).
    poll_interval: float = attrs.field(
        default=30.0, validator=number(minimum=MIN_POLL_INTERVAL)
    )
    #: Random spread applied to poll and backoff delays, a fraction in [0, 1).
    jitter: float = attrs.field(default=0.1, validator=fraction)
    #: Which checkpoint to restore from.
    checkpoint_strategy: CheckpointStrategy = attrs.field(
        factory=Latest, validator=_check_strategy
    )
    #: Try older, unexpired checkpoints when a restore fails for a checkpoint reason.
    fallback: bool = attrs.field(default=True, validator=boolean)
    #: Restore the optimizer state along with the weights.
    restore_optimizer: bool = attrs.field(default=True, validator=boolean)
    #: Keep watching the run a recovery creates.
    follow_recovered: bool = attrs.field(default=True, validator=boolean)
    #: Seconds a watched run's ``last_request_time`` may stay still before
    #: the run is reported ``stalled`` (``None``: stalls are not watched).
    #: A stall is reported, never restored.
    stall_timeout: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(positive)
    )
    #: Called as ``on_recovery(old, new_client, checkpoint)`` after a recovery.
    on_recovery: RecoveryCallback | None = attrs.field(
        default=None, validator=_check_callback, eq=False
    )
    #: Called as ``on_failure(run_id, error)`` when a recovery is exhausted.
    on_failure: FailureCallback | None = attrs.field(
        default=None, validator=_check_callback, eq=False
    )

    def backoff_delay(self, failures: int) -> float:
        """The nominal delay after the ``failures``-th failed attempt (no jitter)."""
        return backoff_delay(
            max(failures - 1, 0), initial=self.backoff, maximum=self.max_backoff
        )

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> Policy:
        """Build a policy from plain data, e.g. parsed configuration.

        Accepts the field names above, the tinkex millisecond names
        (``poll_interval_ms``, ``backoff_ms``, ``max_backoff_ms``), and
        ``checkpoint_strategy`` as ``"latest"``, ``"best"`` or a
        ``tinker://`` path.

        Raises:
            ValueError: Unknown keys (all named), a key given in both units,
                or a bad value.
            TypeError: A value of the wrong type.
        """
        if not isinstance(mapping, Mapping):
            raise TypeError(f"Policy.from_mapping expects a mapping, got {mapping!r}")
        fields = set(attrs.fields_dict(cls))
        kwargs: dict[str, Any] = {}
        unknown: list[str] = []
        for key, value in mapping.items():
            if not isinstance(key, str):
                raise TypeError(f"Policy keys must be str, got {key!r}")
            if key in _MS_FIELDS:
                name = _MS_FIELDS[key]
                if name in mapping:
                    raise ValueError(f"give either {key!r} or {name!r}, not both")
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise TypeError(f"Policy.{key} must be a number, got {value!r}")
                try:
                    kwargs[name] = value / 1000
                except OverflowError:  # an int beyond the range of a float
                    raise ValueError(f"Policy.{key} is too large") from None
            elif key == "checkpoint_strategy":
                kwargs[key] = _strategy_from_value(value)
            elif key in fields:
                kwargs[key] = value
            else:
                unknown.append(key)
        if unknown:
            raise ValueError(
                "unknown Policy keys: " + ", ".join(repr(k) for k in sorted(unknown))
            )
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            # Name the key the caller wrote, not only the converted field.
            field = str(exc).partition(" ")[0].removeprefix("Policy.")
            key = f"{field}_ms"
            if key in mapping:
                raise type(exc)(f"{exc} (from {key}={mapping[key]!r})") from None
            raise


def _strategy_from_value(value: object) -> CheckpointStrategy:
    if isinstance(value, Latest | Specific | Best):
        return value
    if value == "latest":
        return Latest()
    if value == "best":
        return Best()
    if isinstance(value, str) and value.startswith("tinker://"):
        try:
            return Specific(value)
        except ValueError as exc:
            raise ValueError(f"Policy.checkpoint_strategy: {exc}") from None
    raise ValueError(
        "Policy.checkpoint_strategy must be 'latest', 'best' or a "
        f"'tinker://' path, got {value!r}"
    )
