"""The native Tinker client, for Trio: one module per concept.

- ``_http``: the HTTP layer (retries, timeouts, idempotency keys, errors);
- ``_session``: the service client's session and its heartbeat;
- ``_restore``: restoring a checkpoint into a new model, plain or journaled;
- ``_rest``: reading runs, checkpoints and weights info;
- ``_service``: the service client and how to open one;
- ``_training_client``, ``_futures``, ``_operations``: the models made, the
  futures they wait on, the requests that must not be duplicated.

The rest of the package imports the names below, never the modules.
"""

from ._http import HTTPClient, HTTPSettings
from ._rest import RestClient
from ._service import ServiceClient, open_service_client, open_tuned_service_client
from ._training_client import TrainingClient

__all__ = [
    "HTTPClient",
    "HTTPSettings",
    "RestClient",
    "ServiceClient",
    "TrainingClient",
    "open_service_client",
    "open_tuned_service_client",
]
