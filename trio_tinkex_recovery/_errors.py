"""The error tree of trio-tinkex-recovery.

Every error the library raises on purpose derives from one root::

    TinkexRecoveryError
    ├── RecoveryError                  the recovery machinery refused or gave up
    │   ├── RecoveryDisabledError      the policy is not enabled (opt-in)
    │   ├── AlreadyPendingError        the run is queued, attempting or waiting
    │   ├── UnsupportedStrategyError   the checkpoint strategy cannot be applied
    │   ├── NoCheckpointError          the run has no checkpoint to restore from
    │   └── RecoveryFailedError        a training cannot go on past a recovery
    ├── StoreError                     the journal cannot be opened, read or written
    │   └── LeaseLostError             another replica holds the run now
    ├── ResponseValidationError        (also a ValueError) malformed wire data
    └── TinkerAPIError                 the Tinker service failed a request
        ├── APIConnectionError         no answer: connection refused/dropped
        │   └── APITimeoutError        no answer in time
        ├── APIStatusError             an HTTP error status (``status``)
        │   ├── BadRequestError              400
        │   ├── AuthenticationError          401
        │   ├── PermissionDeniedError        403
        │   ├── NotFoundError                404
        │   ├── ConflictError                409
        │   ├── UnprocessableEntityError     422
        │   ├── RateLimitError               429
        │   └── InternalServerError          5xx
        ├── ResponseTooLargeError      the answer exceeds Config.max_response_bytes
        ├── RequestFailedError         an accepted request failed server-side
        └── CheckpointUnavailableError the checkpoint is gone, expired or unusable

Each error carries ``retryable``: whether trying the same thing again later
can succeed.  The executor retries retryable failures with backoff and ends a
recovery at once on the others.  Exceptions that are not ours (raised by a
user-supplied service) count as retryable.

No message built here contains an API key: the key never reaches this module.
Errors pickle (and unpickle) with their attributes, so they can cross a
thread or process boundary.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AlreadyPendingError",
    "AuthenticationError",
    "BadRequestError",
    "CheckpointUnavailableError",
    "ConflictError",
    "InternalServerError",
    "NoCheckpointError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RecoveryDisabledError",
    "RecoveryError",
    "RecoveryFailedError",
    "RequestFailedError",
    "ResponseTooLargeError",
    "ResponseValidationError",
    "TinkerAPIError",
    "TinkexRecoveryError",
    "UnprocessableEntityError",
    "UnsupportedStrategyError",
    "error_for_status",
    "is_retryable",
]


def _rebuild(
    cls: type[TinkexRecoveryError], args: tuple[Any, ...], state: dict[str, Any]
) -> TinkexRecoveryError:
    """Unpickle an error without calling its (keyword-only) constructor."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class TinkexRecoveryError(Exception):
    """Root of every error this library raises on purpose."""

    #: Whether the same operation may succeed if tried again later.
    retryable: bool = False

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self.args, self.__dict__)


class RecoveryError(TinkexRecoveryError):
    """The recovery machinery refused a request or cannot go on."""


class RecoveryDisabledError(RecoveryError):
    """Recovery was asked for but the policy is not enabled.

    Recovery is opt-in: pass ``Policy(enabled=True)``.
    """


class AlreadyPendingError(RecoveryError):
    """The run already has a recovery queued, attempting or waiting to retry."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"a recovery of run {run_id!r} is already pending")
        self.run_id = run_id


class UnsupportedStrategyError(RecoveryError):
    """The checkpoint strategy cannot be applied to this run."""


class NoCheckpointError(RecoveryError):
    """The run has no checkpoint the strategy could restore from."""


class RecoveryFailedError(RecoveryError):
    """A training cannot go on: its run's recovery was exhausted or interrupted,
    or the restored checkpoint does not say which step it holds."""


class ResponseValidationError(TinkexRecoveryError, ValueError):
    """Data from the wire (or given as wire data) is malformed.

    The message names the offending field, e.g. ``$.last_checkpoint.time``.
    A malformed answer from a live server may be a transient fault (a
    truncated body), so it counts as retryable.
    """

    retryable = True


class TinkerAPIError(TinkexRecoveryError):
    """The Tinker service failed a request.

    Attributes:
        status: The HTTP status code, or ``None`` when there was no response.
        retryable: Whether trying again later may succeed.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        if retryable is not None:
            self.retryable = retryable


class APIConnectionError(TinkerAPIError):
    """The request got no answer: the connection failed or was dropped."""

    retryable = True


class APITimeoutError(APIConnectionError):
    """The request got no answer in time."""


class APIStatusError(TinkerAPIError):
    """The service answered with an HTTP error status."""

    status: int

    def __init__(
        self, message: str, *, status: int, retryable: bool | None = None
    ) -> None:
        super().__init__(message, status=status, retryable=retryable)


class BadRequestError(APIStatusError):
    """400: the request is malformed; retrying cannot help."""


class AuthenticationError(APIStatusError):
    """401: the API key was missing or refused."""


class PermissionDeniedError(APIStatusError):
    """403: the key may not do this."""


class NotFoundError(APIStatusError):
    """404: no such run, checkpoint or resource."""


class ConflictError(APIStatusError):
    """409: a conflicting operation is in progress; retryable."""

    retryable = True


class UnprocessableEntityError(APIStatusError):
    """422: the request was understood but refused."""


class RateLimitError(APIStatusError):
    """429: too many requests; retryable after a delay."""

    retryable = True


class InternalServerError(APIStatusError):
    """5xx: the service failed; retryable."""

    retryable = True


class ResponseTooLargeError(TinkerAPIError):
    """The answer is larger than ``Config.max_response_bytes``.

    The rest of it was not read: the connection was closed.  Not retryable:
    the same request would bring the same answer.
    """


class RequestFailedError(TinkerAPIError):
    """A request the service accepted failed while it ran.

    Attributes:
        category: The failure category the service reported: ``"user"``,
            ``"server"`` or ``"unknown"``.  Server-side failures are retryable.
    """

    def __init__(
        self, message: str, *, category: str, retryable: bool | None = None
    ) -> None:
        if retryable is None:
            retryable = category != "user"
        super().__init__(message, retryable=retryable)
        self.category = category


class CheckpointUnavailableError(TinkerAPIError):
    """The checkpoint cannot be restored: it is gone, expired or incompatible.

    With ``Policy(fallback=True)`` the executor then tries the next older
    candidate; without one the recovery ends as exhausted.

    Attributes:
        path: The ``tinker://`` path that could not be restored.
    """

    def __init__(self, message: str, *, path: str, status: int | None = None) -> None:
        super().__init__(message, status=status, retryable=False)
        self.path = path


#: The error class of each HTTP status that has one of its own.
_STATUS_ERRORS: Final[dict[int, type[APIStatusError]]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}

#: Statuses worth trying again (the official SDK's list), besides every 5xx.
_RETRYABLE_STATUSES: Final = frozenset({408, 409, 429})


def error_for_status(
    status: int, message: str, *, retryable: bool | None = None
) -> APIStatusError:
    """The error for an HTTP error status, as the native client and SDK adapter map it.

    Args:
        status: The HTTP status code.
        message: The error's message.
        retryable: Overrides the default: 408, 409, 429 and 5xx are
            retryable, other statuses are not (the SDK's rule).

    Returns:
        An instance of the status's class (`NotFoundError` for 404, …,
        `InternalServerError` for any 5xx), else `APIStatusError`.
    """
    kind = _STATUS_ERRORS.get(status)
    if kind is None:
        kind = InternalServerError if status >= 500 else APIStatusError
    if retryable is None:
        retryable = status in _RETRYABLE_STATUSES or status >= 500
    return kind(message, status=status, retryable=retryable)


def is_retryable(exc: BaseException) -> bool:
    """Tell whether a failed attempt may succeed when tried again.

    Our errors say so themselves; anything else (a user-supplied service's
    own exception) is assumed transient.
    """
    if isinstance(exc, TinkexRecoveryError):
        return exc.retryable
    return True
