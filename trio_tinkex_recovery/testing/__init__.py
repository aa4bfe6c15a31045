"""A Tinker simulator for tests, demos and benchmarks.

`FakeTinker` keeps runs, checkpoints, sessions and restored models in
memory and speaks the Tinker wire protocol as an ASGI app: in process
through ``fake.transport()`` (works with Trio's ``MockClock``), or on
loopback through `serve_fake_tinker` (hypercorn, the ``testing`` extra).
The official ``tinker`` SDK works against it unchanged.

Faults (`Fault`) are injected by script or by rate; every request is
recorded (`RecordedRequest`, the API key masked).  Pytest fixtures live in
``trio_tinkex_recovery.testing.pytest_plugin``.  `send_json` answers an
ASGI request with JSON, for middleware wrapped around ``fake.app``.
"""

from __future__ import annotations

from .._util import publish as _publish
from ._app import send_json as send_json
from ._fake import FakeTinker as FakeTinker
from ._faults import Fault as Fault
from ._faults import FaultKind as FaultKind
from ._records import RecordedRequest as RecordedRequest
from ._records import Restore as Restore
from ._records import SessionInfo as SessionInfo
from ._records import TrainingStep as TrainingStep
from ._server import serve_fake_tinker as serve_fake_tinker

__all__ = [
    "FakeTinker",
    "Fault",
    "FaultKind",
    "RecordedRequest",
    "Restore",
    "SessionInfo",
    "TrainingStep",
    "send_json",
    "serve_fake_tinker",
]

_publish(globals())
