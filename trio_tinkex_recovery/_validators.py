"""Checks for numbers and flags, shared by every settings class.

One wording everywhere: a message names the field as ``Owner.field`` (for
attrs validators, the class being built) and the bad value, e.g.
``Policy.jitter must be < 1, got 1.5``.  `check_number` is the plain
function; `number` makes an attrs validator from it, and `positive`,
`non_negative`, `fraction`, `positive_int`, `non_negative_int` and
`boolean` are the common ones.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    import attrs

__all__ = [
    "boolean",
    "check_number",
    "fraction",
    "non_negative",
    "non_negative_int",
    "number",
    "positive",
    "positive_int",
]


class Validator(Protocol):
    """The signature attrs calls a validator with."""

    def __call__(
        self, instance: Any, attribute: attrs.Attribute[Any], value: Any, /
    ) -> None: ...


def _format(bound: float) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def check_number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    strict: bool = False,
    below: float | None = None,
    integer: bool = False,
) -> None:
    """Check that ``value`` is a finite number (an int if ``integer``) in range.

    Args:
        name: How the message names the value, e.g. ``"Policy.backoff"``.
        value: The value to check; ``bool`` is not a number here.
        minimum: The lowest allowed value, if any.
        strict: Whether ``minimum`` itself is refused (``> minimum``).
        below: A value must be less than this, if given.
        integer: Whether only an ``int`` will do.

    Raises:
        TypeError: ``value`` is not a number (or not an int).
        ValueError: It is infinite, NaN, too large for a float, or out of range.
    """
    wanted = int if integer else int | float
    if isinstance(value, bool) or not isinstance(value, wanted):
        kind = "an int" if integer else "a number"
        raise TypeError(f"{name} must be {kind}, got {value!r}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int beyond the range of a float
        raise ValueError(f"{name} is too large") from None
    if not finite:
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        relation = ">" if strict else "≥"
        raise ValueError(f"{name} must be {relation} {_format(minimum)}, got {value!r}")
    if below is not None and value >= below:
        raise ValueError(f"{name} must be < {_format(below)}, got {value!r}")


def number(
    *,
    minimum: float | None = None,
    strict: bool = False,
    below: float | None = None,
    integer: bool = False,
) -> Validator:
    """An attrs validator running `check_number` with these bounds."""

    def validate(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        check_number(
            f"{type(instance).__name__}.{attribute.name}",
            value,
            minimum=minimum,
            strict=strict,
            below=below,
            integer=integer,
        )

    return validate


#: A finite number > 0.
positive: Final = number(minimum=0, strict=True)
#: A finite number ≥ 0.
non_negative: Final = number(minimum=0)
#: A number in [0, 1).
fraction: Final = number(minimum=0, below=1)
#: An int ≥ 1.
positive_int: Final = number(minimum=1, integer=True)
#: An int ≥ 0.
non_negative_int: Final = number(minimum=0, integer=True)


def boolean(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    """An attrs validator: ``value`` must be a real ``bool``, not 0 or 1."""
    if not isinstance(value, bool):
        raise TypeError(
            f"{type(instance).__name__}.{attribute.name} must be a bool, got {value!r}"
        )
