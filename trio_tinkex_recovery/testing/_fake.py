"""`FakeTinker`: the simulator's state, served over HTTP by its ASGI app.

The layers point one way: the state (``_state.py``: runs, checkpoints,
sessions, faults, the request log) knows nothing of HTTP; the endpoints
(``_endpoints.py``) map a request to an answer through the state's methods;
the ASGI app (``_app.py``) does the HTTP plumbing and calls the endpoints.
`FakeTinker` is the state with its app.
"""

from __future__ import annotations

import functools

import httpx

from ._app import FakeTinkerApp
from ._state import TinkerState

__all__ = ["FakeTinker"]


class FakeTinker(TinkerState):
    """An in-memory Tinker service, for tests, demos and benchmarks.

    Serve it in process with `transport` (an ``httpx.ASGITransport``; works
    with Trio's ``MockClock``) or on loopback with `serve_fake_tinker`.

    Args:
        seed: Seeds the ``random.Random`` that decides rate-based faults.
        api_key: When set, the only API key accepted; otherwise any
            non-empty ``X-API-Key`` is.
        model_owner: The default owner of the runs added.
        future_try_again: How many ``try_again`` answers each future gives
            before its result.
        future_delay: Seconds (Trio time) after submission before a future is
            ready; until then polls answer ``try_again``.
        long_poll: The longest a ``retrieve_future`` poll waits (Trio time)
            before answering ``try_again``.
        base_latency: Seconds (Trio time) added to every request, e.g. to
            model a network for benchmarks.
        client_config: The ``/api/v1/client/config`` answer (default ``{}``).
        dynamic_config: The ``/api/v1/client/dynamic_config`` answer;
            ``None`` (the default) answers 404, as older servers do.
        epoch: The start of the logical clock behind wire timestamps.
        request_log_limit: Keep only the latest this many requests in
            `requests`: 10,000 by default, so that a long benchmark or a
            long-running ``simulate`` does not grow by about 1.7 KB a
            request; ``None`` keeps all (a test that counts more requests
            than that asks for it).  `requests_received` still counts every
            one.
        list_order: The order ``GET /api/v1/training_runs`` lists runs in:
            ``"recent"`` (by ``last_request_time``, newest first), ``"id"``
            (by run id) or ``"shuffled"`` (a new order, drawn from ``seed``,
            on every request).
        list_page_max: The largest page it answers: a larger ``limit`` is
            clamped, and the cursor's ``limit`` says so.
        corrupted_requests: What training requests and saves sent to a
            corrupted model get: ``"fail"`` (a failed future, category
            ``server``, as the service does), ``"hang"`` (a future never
            ready) or ``"succeed"``.
        wall_clock: Stamp ``last_request_time`` and new checkpoints with the
            wall clock instead of the logical clock from ``epoch`` (what a
            simulator served for ``watch --all`` wants: its runs are active
            now).

    Attributes:
        faults: The scripted faults and fault rates (see `script` and
            `add_fault_rate`).
        idempotent_replays: How many requests were answered from the
            ``X-Idempotency-Key`` cache instead of acting again.
        list_requests: How many ``GET /api/v1/training_runs`` list requests
            reached the endpoint (faults that answer first are not counted).
        requests_received: How many requests arrived (admin ones excepted).
        telemetry_batches: How many ``/api/v1/telemetry`` batches arrived.

    The list shows restored models too, and filters by the caller's runs
    (``access_scope=owned``: owner ``model_owner``) and by ``project_id``
    (``add_run(project_id=...)``; a restored model joins the project of the
    session that created it).

    Models train: ``forward_backward`` (protobuf, as the official SDK sends
    it, or JSON) and ``optim_step`` answer through futures like saves and
    restores.  `training_steps` lists what each model received, in order,
    with ``seq_id`` and whether the model was superseded or its session had
    finished; `restore_of` tells whether a model got its optimizer state.

    The constructor's options but ``seed``, ``epoch`` and
    ``request_log_limit`` are attributes of the same name and may be
    changed between requests (e.g. ``fake.base_latency = 0.01``).  The state
    API (``add_run``, ``corrupt``, ``requests``, ...) and the operations the
    endpoints perform are inherited from the simulator's state class.
    """

    @functools.cached_property
    def app(self) -> FakeTinkerApp:
        """The ASGI application speaking the Tinker wire protocol."""
        return FakeTinkerApp(self)

    def transport(self) -> httpx.ASGITransport:
        """An ``httpx.ASGITransport`` over `app`, for in-process clients."""
        return httpx.ASGITransport(app=self.app)
