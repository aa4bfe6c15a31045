"""A replica that can no longer renew a run's lease stops restoring it.

Real PostgreSQL, the real clock and the in-process simulator.  Fencing
stops a replica's journal writes once its lease is gone, but not a restore
call already in flight: the replica must cancel it itself, before its lease
can expire for the others, or the new owner's restore is a second one.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import trio

from trio_tinkex_recovery import (
    Config,
    Policy,
    open_monitor,
    open_service_client,
    set_testing,
)
from trio_tinkex_recovery._store._postgres import open_postgres_store
from trio_tinkex_recovery.testing import FakeTinker

from .reliability._support import BASE, KEY

if TYPE_CHECKING:
    from collections.abc import Callable

LEASE = 2.0
POLICY = Policy(enabled=True, jitter=0, poll_interval=0.2)
STALL_AT = "TRIO_TINKEX_RECOVERY_STALL_AT"


class WithoutLedger:
    """A service that restores in one call, as the official SDK's does.

    ``on_call`` runs as a restore call begins; the call then waits ``hang``
    seconds (a slow network) before it reaches the simulator.
    """

    def __init__(self, service: Any, *, hang: float = 0.0) -> None:
        self._service = service
        self.hang = hang
        self.on_call: Callable[[], None] | None = None

    def create_rest_client(self) -> Any:
        return self._service.create_rest_client()

    async def _slowly(self) -> None:
        if self.on_call is not None:
            self.on_call()
        await trio.sleep(self.hang)

    async def create_training_client_from_state(self, path: str) -> Any:
        await self._slowly()
        return await self._service.create_training_client_from_state(path)

    async def create_training_client_from_state_with_optimizer(self, path: str) -> Any:
        await self._slowly()
        return await self._service.create_training_client_from_state_with_optimizer(
            path
        )


async def replica(dsn, fake, hang=0.0, *, task_status=trio.TASK_STATUS_IGNORED):
    store = await open_postgres_store(dsn, lease=LEASE, connect_timeout=5)
    try:
        async with open_service_client(
            Config(api_key=KEY, base_url=BASE), transport=fake.transport()
        ) as native:
            service = WithoutLedger(native, hang=hang)
            async with open_monitor(
                policy=POLICY, service=service, store=store
            ) as monitor:
                task_status.started(
                    SimpleNamespace(monitor=monitor, store=store, service=service)
                )
                await trio.sleep_forever()
    finally:
        await store.aclose()


async def until(condition: Callable[[], bool]) -> None:
    """Return once ``condition()`` holds (looked at every 20 ms).

    What it looks at (statistics, phases) changes in several replicas'
    tasks and in the database: no one event says so.
    """
    while not condition():  # noqa: ASYNC110
        await trio.sleep(0.02)


def phase(node, run_id: str) -> str | None:
    state = node.monitor.executor.recovery_state(run_id)
    return None if state is None else state.phase


async def test_a_replica_that_cannot_renew_cancels_its_restore(
    postgres_dsn, monkeypatch
):
    """A's renewals stall while its restore is in flight (3 leases long): A
    cancels it before its lease expires, B takes the run over and restores
    it, and the simulator counts one restore."""
    fake = FakeTinker()
    fake.add_run("run-1", checkpoints=["ckpt-0001"])
    # Test mode once for both replicas (each entering it would restore the
    # other's setting on the way out).
    with set_testing(True), trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            a = await nursery.start(replica, postgres_dsn, fake, 3 * LEASE)
            await a.monitor.monitor_run("run-1")
            await until(lambda: a.monitor.monitored_runs == {"run-1"})
            b = await nursery.start(replica, postgres_dsn, fake)
            await until(lambda: b.monitor.statistics().replicas == 2)
            assert b.monitor.monitored_runs == frozenset()

            stalled = []

            def stall_a() -> None:
                stalled.append(trio.current_time())
                monkeypatch.setenv(STALL_AT, f"renew@{a.store.replica_id}")

            a.service.on_call = stall_a
            fake.corrupt("run-1")
            await until(lambda: phase(b, "run-1") == "done")
            await until(lambda: phase(a, "run-1") not in ("attempting", "waiting"))
            nursery.cancel_scope.cancel()
    assert len(stalled) == 1
    assert fake.restore_count("run-1") == 1
    assert phase(a, "run-1") == "interrupted"
