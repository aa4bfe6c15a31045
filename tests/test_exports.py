"""The public surface is pinned: changing it is a deliberate act."""

import trio_tinkex_recovery

EXPECTED = [
    "EVENT_NAMES",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AlreadyPendingError",
    "AuthenticationError",
    "BadRequestError",
    "Best",
    "Checkpoint",
    "CheckpointStrategy",
    "CheckpointUnavailableError",
    "Config",
    "ConflictError",
    "Executor",
    "ForwardBackwardOutput",
    "InternalServerError",
    "Latest",
    "Monitor",
    "NoCheckpointError",
    "NotFoundError",
    "PermissionDeniedError",
    "Policy",
    "RateLimitError",
    "RecoveryDisabledError",
    "RecoveryError",
    "RecoveryOutcome",
    "RecoveryPhase",
    "RecoveryState",
    "RequestFailedError",
    "ResponseValidationError",
    "RestClient",
    "RestClientProtocol",
    "ServiceClient",
    "ServiceProtocol",
    "Specific",
    "Statistics",
    "TelemetryEvent",
    "TinkerAPIError",
    "TinkexRecoveryError",
    "TrainingClient",
    "TrainingRun",
    "UnprocessableEntityError",
    "UnsupportedStrategyError",
    "WeightsInfo",
    "open_executor",
    "open_monitor",
    "open_service_client",
]


def test_all_is_pinned_and_sorted():
    """__all__ is exactly the documented names, sorted (ruff's isort order)."""
    assert trio_tinkex_recovery.__all__ == EXPECTED


def test_every_export_exists_and_is_public():
    """Each name resolves; objects defined here claim the public module."""
    for name in trio_tinkex_recovery.__all__:
        obj = getattr(trio_tinkex_recovery, name)
        assert obj is not None


def test_error_tree():
    """Every error derives from the one root."""
    from trio_tinkex_recovery import TinkexRecoveryError

    for name in trio_tinkex_recovery.__all__:
        obj = getattr(trio_tinkex_recovery, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, TinkexRecoveryError), name
