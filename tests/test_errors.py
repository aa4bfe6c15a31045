"""The error tree: one status mapping for the native client and the SDK adapter."""

from __future__ import annotations

import pytest

from trio_tinkex_recovery import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
)
from trio_tinkex_recovery._errors import error_for_status


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (400, BadRequestError, False),
        (401, AuthenticationError, False),
        (402, APIStatusError, False),
        (403, PermissionDeniedError, False),
        (404, NotFoundError, False),
        (408, APIStatusError, True),
        (409, ConflictError, True),
        (410, APIStatusError, False),
        (422, UnprocessableEntityError, False),
        (429, RateLimitError, True),
        (500, InternalServerError, True),
        (503, InternalServerError, True),
        (599, InternalServerError, True),
    ],
)
def test_each_status_has_its_class_and_retry_rule(status, kind, retryable):
    """Each status maps to its class; 408, 409, 429 and 5xx are retryable."""
    error = error_for_status(status, f"HTTP {status}")
    assert type(error) is kind
    assert error.status == status
    assert error.retryable is retryable
    assert str(error) == f"HTTP {status}"


def test_the_server_may_overrule_the_retry_rule():
    """An explicit retryable (the x-should-retry header) wins over the status."""
    assert error_for_status(503, "m", retryable=False).retryable is False
    assert error_for_status(400, "m", retryable=True).retryable is True
