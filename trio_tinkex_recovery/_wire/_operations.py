"""What every non-GET operation of the native client shares.

An operation (a restore, a save, a training step) has one idempotency key
and one sequence number however often it is sent; these helpers read its
answers and tell when a failure is final.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from .._errors import RequestFailedError, ResponseValidationError, TinkerAPIError
from ._http import new_idempotency_key

__all__ = ["GONE", "Operation", "is_definitive", "required_str"]

#: Statuses meaning "no such checkpoint (any more)" for a checkpoint path.
GONE: Final = frozenset({404, 410})


def required_str(body: dict[str, Any], field: str, endpoint: str) -> str:
    """``body[field]``, a non-empty string, or a `ResponseValidationError`."""
    value = body.get(field)
    if not isinstance(value, str) or not value:
        raise ResponseValidationError(
            f"{endpoint}: expected a non-empty string at $.{field}, got {value!r}"[:300]
        )
    return value


@attrs.define
class Operation:
    """One logical non-GET operation: its idempotency key and sequence number.

    Kept when the operation failed without a clear answer, so that doing it
    again repeats the same request rather than starting another one.
    """

    seq_id: int
    key: str = attrs.field(factory=new_idempotency_key)


def is_definitive(exc: TinkerAPIError) -> bool:
    """Whether the service clearly answered, so repeating cannot find its work.

    A failed request (its future reported an error) is final for that
    request: sending it again would only fetch the same failure.
    """
    return isinstance(exc, RequestFailedError)
