"""Run the official ``tinker`` SDK, unchanged, against the simulator.

Not collected by pytest (no ``test_`` prefix): run it with a Python where both
``tinker`` and this package (with the ``testing`` extra) are installed::

    TINKER_TELEMETRY=0 HOME=/tmp/tinker-home \\
        python tests/compat/sdk_against_simulator.py

The simulator is served by hypercorn on 127.0.0.1 (a free port) in a
background thread running Trio; the SDK runs in the main thread with its own
background asyncio loop, exactly as in an application.  Every check prints
one line; the exit status is non-zero when any check fails.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import traceback
import warnings
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from trio_tinkex_recovery.testing import FakeTinker, Fault, serve_fake_tinker

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")

API_KEY = "tml-compat-check-0000000000"
RUN = "run-compat"
PATHS = [f"tinker://{RUN}/weights/ckpt-000{i}" for i in (1, 2, 3)]


class Simulator:
    """A `FakeTinker` served on loopback from a Trio thread."""

    def __init__(self, fake: FakeTinker) -> None:
        self.fake = fake
        self.url = ""
        self._ready: queue.Queue[str | BaseException] = queue.Queue()
        self._thread = threading.Thread(target=self._thread_main, daemon=True)
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # report a crash to the main thread
            self._ready.put(exc)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            url: str = await nursery.start(serve_fake_tinker, self.fake)
            self._ready.put(url)

    def __enter__(self) -> Simulator:
        self._thread.start()
        ready = self._ready.get(timeout=30)
        if isinstance(ready, BaseException):
            raise RuntimeError("the simulator failed to start") from ready
        self.url = ready
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._scope is not None
        trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(timeout=10)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the simulator's Trio thread (state access)."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)


class Checks:
    """Collects check results and prints them as they come."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.count = 0

    def check(self, name: str, condition: bool, detail: object = "") -> None:
        self.count += 1
        if condition:
            print(f"  ok    {name}")
        else:
            self.failures.append(name)
            print(f"  FAIL  {name}: {detail}")

    def run(self, name: str, fn: Callable[[], None]) -> None:
        """Run a group of checks; an exception fails the group."""
        print(f"{name}")
        try:
            fn()
        except Exception as exc:
            self.count += 1
            self.failures.append(f"{name}: {type(exc).__name__}")
            print(f"  FAIL  {name} raised {type(exc).__name__}: {exc}")
            traceback.print_exc(limit=8)


def main() -> int:
    import tinker
    from tinker import types

    fake = FakeTinker()
    fake.add_run(
        RUN,
        checkpoints=["ckpt-0001", "ckpt-0002", "ckpt-0003"],
        user_metadata={"team": "compat"},
        project_id="compat",
    )
    fake.corrupt(RUN)
    checks = Checks()
    print(f"tinker SDK {tinker.__version__}")

    with Simulator(fake) as sim:
        print(f"simulator at {sim.url}")
        service = tinker.ServiceClient(base_url=sim.url, api_key=API_KEY)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # create_rest_client
            rest = service.create_rest_client()

        def rest_reads() -> None:
            run = rest.get_training_run(RUN).result()
            checks.check("get_training_run: corrupted", run.corrupted is True, run)
            checks.check("get_training_run: id", run.training_run_id == RUN, run)
            checks.check(
                "get_training_run: lora",
                run.is_lora
                and run.lora_rank == 32
                and run.base_model == "Qwen/Qwen3-8B",
                run,
            )
            last = run.last_checkpoint
            checks.check(
                "get_training_run: last_checkpoint is the newest",
                last is not None and last.tinker_path == PATHS[-1],
                last,
            )
            checks.check(
                "get_training_run: user_metadata",
                run.user_metadata == {"team": "compat"},
                run.user_metadata,
            )
            listing = rest.list_checkpoints(RUN).result()
            checks.check(
                "list_checkpoints: paths in order",
                [c.tinker_path for c in listing.checkpoints] == PATHS,
                listing,
            )
            checks.check(
                "list_checkpoints: times increase",
                [c.time for c in listing.checkpoints]
                == sorted(c.time for c in listing.checkpoints),
                listing,
            )
            info = rest.get_weights_info_by_tinker_path(PATHS[0]).result()
            checks.check(
                "weights_info",
                info.base_model == "Qwen/Qwen3-8B"
                and info.is_lora
                and info.lora_rank == 32,
                info,
            )
            try:
                rest.get_training_run("no-such-run").result()
            except tinker.NotFoundError as exc:
                checks.check(
                    "unknown run: NotFoundError 404", exc.status_code == 404, exc
                )
            else:
                checks.check("unknown run: NotFoundError 404", False, "no error")
            page = rest.list_training_runs(limit=1).result()
            checks.check(
                "list_training_runs: a page and its cursor",
                [r.training_run_id for r in page.training_runs] == [RUN]
                and (page.cursor.offset, page.cursor.limit, page.cursor.total_count)
                == (0, 1, 1),
                page,
            )
            scoped = rest.list_training_runs(
                limit=5, offset=1, access_scope="accessible", project_id="compat"
            ).result()
            checks.check(
                "list_training_runs: offset, scope and project",
                scoped.training_runs == [] and scoped.cursor.total_count == 1,
                scoped,
            )
            direct = tinker.RestClient(base_url=sim.url, api_key=API_KEY)
            checks.check(
                "RestClient() direct",
                direct.get_training_run(RUN).result().corrupted is True,
            )

        def rest_faults() -> None:
            sim.call(
                fake.script,
                Fault.server_error(503, path=f"/api/v1/training_runs/{RUN}"),
                Fault.rate_limit(0.3, path=f"/api/v1/training_runs/{RUN}"),
            )
            before = sim.call(
                lambda: fake.request_count(
                    method="GET", path=f"/api/v1/training_runs/{RUN}"
                )
            )
            started = time.monotonic()
            run = rest.get_training_run(RUN).result()
            elapsed = time.monotonic() - started
            after = sim.call(
                lambda: fake.request_count(
                    method="GET", path=f"/api/v1/training_runs/{RUN}"
                )
            )
            checks.check("503 then 429: SDK retries to success", run.corrupted, run)
            checks.check(
                "503 then 429: three requests", after - before == 3, after - before
            )
            checks.check("429: Retry-After honoured", elapsed >= 0.3, elapsed)

        def restores() -> None:
            tc = service.create_training_client_from_state(PATHS[1]).result()
            sessions = sim.call(lambda: fake.sessions)
            checks.check("one session created", len(sessions) == 1, sessions)
            (session_id,) = sessions
            checks.check(
                "from_state: model_id",
                tc.model_id == f"{session_id}:train:0",
                tc.model_id,
            )
            log = sim.call(lambda: fake.restore_log)
            checks.check(
                "from_state: simulator restored it without optimizer",
                len(log) == 1
                and log[0].model_id == tc.model_id
                and log[0].tinker_path == PATHS[1]
                and log[0].optimizer is False,
                log,
            )
            info = tc.get_info()
            checks.check(
                "get_info",
                info.model_id == tc.model_id and info.lora_rank == 32 and info.is_lora,
                info,
            )
            # A dropped response to load_weights: the SDK retries with the same
            # idempotency key, the simulator replays instead of restoring twice.
            sim.call(
                fake.script, Fault.drop(after_action=True, path="/api/v1/load_weights")
            )
            tc2 = service.create_training_client_from_state_with_optimizer(
                PATHS[-1]
            ).result()
            checks.check(
                "with_optimizer: model_id",
                tc2.model_id == f"{session_id}:train:1",
                tc2.model_id,
            )
            log = sim.call(lambda: fake.restore_log)
            checks.check(
                "with_optimizer: restored with optimizer, once despite the drop",
                len(log) == 2
                and log[1].optimizer is True
                and log[1].tinker_path == PATHS[-1],
                log,
            )
            checks.check(
                "restores counted per source run",
                sim.call(lambda: fake.restores) == {RUN: 2},
                sim.call(lambda: fake.restores),
            )
            loads = [
                r
                for r in sim.call(lambda: fake.requests)
                if r.path == "/api/v1/load_weights"
            ]
            checks.check(
                "dropped load_weights retried with the same key and body",
                len(loads) == 3
                and loads[1].idempotency_key == loads[2].idempotency_key
                and loads[1].json == loads[2].json,
                [(r.idempotency_key, r.fault) for r in loads],
            )
            checks.check(
                "the retry was answered from the idempotency cache",
                sim.call(lambda: fake.idempotent_replays) == 1,
                sim.call(lambda: fake.idempotent_replays),
            )
            new_run = rest.get_training_run(tc2.model_id).result()
            checks.check(
                "restored model is a training run of its own",
                new_run.training_run_id == tc2.model_id
                and not new_run.corrupted
                and new_run.last_checkpoint is not None
                and new_run.last_checkpoint.tinker_path == PATHS[-1],
                new_run,
            )

            saved = tc2.save_state("resumed-0001").result()
            expected = f"tinker://{tc2.model_id}/weights/resumed-0001"
            checks.check("save_state: path", saved.path == expected, saved)
            after = rest.get_training_run(tc2.model_id).result()
            checks.check(
                "save_state: becomes last_checkpoint",
                after.last_checkpoint is not None
                and after.last_checkpoint.tinker_path == expected,
                after.last_checkpoint,
            )
            listing = rest.list_checkpoints(tc2.model_id).result()
            checks.check(
                "save_state: listed",
                [c.tinker_path for c in listing.checkpoints] == [expected],
                listing,
            )
            sampler = tc2.save_weights_for_sampler("sampler-0001").result()
            checks.check(
                "save_weights_for_sampler: path",
                sampler.path == f"tinker://{tc2.model_id}/sampler_weights/sampler-0001",
                sampler,
            )

            sim.call(fake.expire_checkpoint, PATHS[0])
            try:
                service.create_training_client_from_state(PATHS[0]).result()
            except tinker.RequestFailedError as exc:
                checks.check(
                    "expired checkpoint: RequestFailedError category user",
                    exc.category == types.RequestErrorCategory.User,
                    exc,
                )
            else:
                checks.check(
                    "expired checkpoint: RequestFailedError", False, "no error"
                )
            checks.check(
                "expired checkpoint: nothing restored",
                sim.call(lambda: fake.restores) == {RUN: 2},
                sim.call(lambda: fake.restores),
            )

        def training() -> None:
            tc = service.create_training_client_from_state_with_optimizer(
                PATHS[1]
            ).result()
            datum = types.Datum(
                model_input=types.ModelInput.from_ints([1, 2, 3]),
                loss_fn_inputs={
                    "target_tokens": types.TensorData(
                        data=[2, 3, 4], dtype="int64", shape=[3]
                    )
                },
            )
            step = tc.forward_backward([datum, datum], "cross_entropy")
            optim = tc.optim_step(types.AdamParams(learning_rate=1e-4))
            output = step.result()
            optim.result()
            checks.check(
                "forward_backward: protobuf both ways, loss metric",
                output.metrics == {"loss:sum": 2.0}
                and len(output.loss_fn_outputs) == 2,
                output,
            )
            tc.save_state("trained", user_metadata={"step": "1"}).result()
            steps = sim.call(fake.training_steps, tc.model_id)
            checks.check(
                "training_steps: forward_backward, optim_step, save in seq order",
                [(s.kind, s.seq_id) for s in steps]
                == [("forward_backward", 1), ("optim_step", 2), ("save_weights", 3)],
                steps,
            )

        def wire() -> None:
            requests = sim.call(lambda: fake.requests)
            checks.check(
                "every request carried X-API-Key (masked in the log)",
                all(r.headers.get("x-api-key") == "***" for r in requests),
                {r.headers.get("x-api-key") for r in requests},
            )
            checks.check(
                "every non-GET request carried X-Idempotency-Key",
                all(r.idempotency_key for r in requests if r.method != "GET"),
                [
                    r.path
                    for r in requests
                    if r.method != "GET" and not r.idempotency_key
                ],
            )
            paths = [r.path for r in requests if r.fault is None]
            first_load = paths.index("/api/v1/load_weights")
            checks.check(
                "session set-up precedes the first load",
                "/api/v1/client/config" in paths[:first_load]
                and "/api/v1/create_session" in paths[:first_load],
                paths[:first_load],
            )
            checks.check(
                "load_weights -> retrieve_future -> get_info",
                paths[first_load + 1 : first_load + 2] == ["/api/v1/retrieve_future"]
                and "/api/v1/get_info" in paths[first_load:],
                paths[first_load:],
            )
            print("  endpoints used: " + ", ".join(sorted(set(paths))))

        def close() -> None:
            service.close("success").result()
            sessions = sim.call(lambda: fake.sessions)
            checks.check(
                "close(): session finished",
                [s.finished for s in sessions.values()] == ["success"],
                sessions,
            )

        checks.run("RestClient reads", rest_reads)
        checks.run("RestClient under faults", rest_faults)
        checks.run("restores and saves", restores)
        checks.run("training steps", training)
        checks.run("wire details", wire)
        checks.run("close", close)
        total = sim.call(fake.request_count)

    failed = len(checks.failures)
    print(
        f"\n{checks.count - failed}/{checks.count} checks passed, "
        f"{total} requests served"
    )
    if failed:
        print("FAILED: " + "; ".join(checks.failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
