"""Watch Tinker training runs from Trio and restart corrupted ones.

Start with `open_monitor` and a `Policy` (recovery is opt-in)::

    async with open_monitor(policy=Policy(enabled=True), service=service) as monitor:
        await monitor.monitor_run("run-1")
"""

from ._config import Config as Config
from ._engine._backends import plug_in as _plug_in
from ._engine._executor import Executor as Executor
from ._engine._executor import RecoveryOutcome as RecoveryOutcome
from ._engine._executors import open_executor as open_executor
from ._engine._monitor import Monitor as Monitor
from ._engine._monitor import open_monitor as open_monitor
from ._engine._telemetry import EVENT_NAMES as EVENT_NAMES
from ._engine._telemetry import Statistics as Statistics
from ._engine._telemetry import TelemetryEvent as TelemetryEvent
from ._engine._training import Recovered as Recovered
from ._engine._training import Step as Step
from ._engine._training import Training as Training
from ._errors import AlreadyPendingError as AlreadyPendingError
from ._errors import APIConnectionError as APIConnectionError
from ._errors import APIStatusError as APIStatusError
from ._errors import APITimeoutError as APITimeoutError
from ._errors import AuthenticationError as AuthenticationError
from ._errors import BadRequestError as BadRequestError
from ._errors import CheckpointUnavailableError as CheckpointUnavailableError
from ._errors import ConflictError as ConflictError
from ._errors import InternalServerError as InternalServerError
from ._errors import NoCheckpointError as NoCheckpointError
from ._errors import NotFoundError as NotFoundError
from ._errors import PermissionDeniedError as PermissionDeniedError
from ._errors import RateLimitError as RateLimitError
from ._errors import RecoveryDisabledError as RecoveryDisabledError
from ._errors import RecoveryError as RecoveryError
from ._errors import RecoveryFailedError as RecoveryFailedError
from ._errors import RequestFailedError as RequestFailedError
from ._errors import ResponseTooLargeError as ResponseTooLargeError
from ._errors import ResponseValidationError as ResponseValidationError
from ._errors import TinkerAPIError as TinkerAPIError
from ._errors import TinkexRecoveryError as TinkexRecoveryError
from ._errors import UnprocessableEntityError as UnprocessableEntityError
from ._errors import UnsupportedStrategyError as UnsupportedStrategyError
from ._notify import Notifier as Notifier
from ._notify import NotifierStatistics as NotifierStatistics
from ._notify import notify as notify
from ._policy import Best as Best
from ._policy import CheckpointStrategy as CheckpointStrategy
from ._policy import Latest as Latest
from ._policy import Policy as Policy
from ._policy import Specific as Specific
from ._protocols import ListingRestClientProtocol as ListingRestClientProtocol
from ._protocols import RestClientProtocol as RestClientProtocol
from ._protocols import ServiceProtocol as ServiceProtocol
from ._state import RecoveryPhase as RecoveryPhase
from ._state import RecoveryState as RecoveryState
from ._store import LeaseLostError as LeaseLostError
from ._store import Store as Store
from ._store import StoreError as StoreError
from ._store import open_store as open_store
from ._supervise import EXIT_EXHAUSTED as EXIT_EXHAUSTED
from ._supervise import JobLockedError as JobLockedError
from ._supervise import JobState as JobState
from ._supervise import SuperviseResult as SuperviseResult
from ._supervise import SupervisorEvent as SupervisorEvent
from ._supervise import supervise as supervise
from ._test_mode import is_testing as is_testing
from ._test_mode import set_testing as set_testing
from ._types import Checkpoint as Checkpoint
from ._types import ForwardBackwardOutput as ForwardBackwardOutput
from ._types import TrainingRun as TrainingRun
from ._types import TrainingRunPage as TrainingRunPage
from ._types import WeightsInfo as WeightsInfo
from ._util import publish as _publish
from ._wire import RestClient as RestClient
from ._wire import ServiceClient as ServiceClient
from ._wire import TrainingClient as TrainingClient
from ._wire import open_service_client as open_service_client

__version__ = "0.1.0.dev0"

__all__ = [
    "EVENT_NAMES",
    "EXIT_EXHAUSTED",
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
    "JobLockedError",
    "JobState",
    "Latest",
    "LeaseLostError",
    "ListingRestClientProtocol",
    "Monitor",
    "NoCheckpointError",
    "NotFoundError",
    "Notifier",
    "NotifierStatistics",
    "PermissionDeniedError",
    "Policy",
    "RateLimitError",
    "Recovered",
    "RecoveryDisabledError",
    "RecoveryError",
    "RecoveryFailedError",
    "RecoveryOutcome",
    "RecoveryPhase",
    "RecoveryState",
    "RequestFailedError",
    "ResponseTooLargeError",
    "ResponseValidationError",
    "RestClient",
    "RestClientProtocol",
    "ServiceClient",
    "ServiceProtocol",
    "Specific",
    "Statistics",
    "Step",
    "Store",
    "StoreError",
    "SuperviseResult",
    "SupervisorEvent",
    "TelemetryEvent",
    "TinkerAPIError",
    "TinkexRecoveryError",
    "Training",
    "TrainingClient",
    "TrainingRun",
    "TrainingRunPage",
    "UnprocessableEntityError",
    "UnsupportedStrategyError",
    "WeightsInfo",
    "is_testing",
    "notify",
    "open_executor",
    "open_monitor",
    "open_service_client",
    "open_store",
    "set_testing",
    "supervise",
]


_publish(globals())
# The composition root: the engine opens clients and stores through these.
_plug_in(open_service=open_service_client, open_store=open_store)
