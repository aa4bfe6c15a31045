"""Type-checked only (mypy --strict), never run: the public API as users write it."""

from __future__ import annotations

from functools import partial
from typing import assert_type

import trio
from prometheus_client import CollectorRegistry

from trio_tinkex_recovery import (
    Best,
    Checkpoint,
    Executor,
    Monitor,
    Policy,
    RecoveryOutcome,
    RecoveryState,
    Statistics,
    Store,
    TelemetryEvent,
    TrainingRun,
    is_testing,
    open_executor,
    open_monitor,
    open_store,
    set_testing,
)
from trio_tinkex_recovery.metrics import (
    MonitorMetrics,
    Probe,
    attach_metrics,
    serve_metrics,
)


class Rest:
    async def get_training_run(self, run_id: str) -> TrainingRun:
        raise NotImplementedError

    async def list_checkpoints(self, run_id: str) -> list[Checkpoint]:
        raise NotImplementedError


class Service:
    async def create_training_client_from_state(self, path: str) -> object:
        raise NotImplementedError

    async def create_training_client_from_state_with_optimizer(
        self, path: str
    ) -> object:
        raise NotImplementedError

    def create_rest_client(self) -> Rest:
        return Rest()


def on_recovery(old: object, new: object, checkpoint: Checkpoint) -> None:
    pass


async def on_failure(run_id: str, error: BaseException) -> None:
    pass


async def main() -> None:
    policy = Policy(
        enabled=True,
        checkpoint_strategy=Best(metric="loss", mode="min"),
        on_recovery=on_recovery,
        on_failure=on_failure,
    )
    async with open_monitor(policy=policy, service=Service()) as monitor:
        assert_type(monitor, Monitor)
        await monitor.monitor_run("run-1", metadata={"team": "a"})
        monitor.stop_monitoring("run-1")
        assert_type(monitor.monitored_runs, frozenset[str])
        assert_type(monitor.statistics(), Statistics)
        async with monitor.subscribe() as events:
            async for event in events:
                assert_type(event, TelemetryEvent)
    async with open_executor(service=Service(), max_concurrent=2) as executor:
        assert_type(executor, Executor)
        await executor.recover(
            "run-1", None, policy, last_checkpoint="tinker://r/weights/a"
        )
        assert_type(executor.recovery_state("run-1"), RecoveryState | None)
        async with executor.outcomes() as outcomes:
            async for outcome in outcomes:
                assert_type(outcome, RecoveryOutcome)
                assert_type(outcome.state, RecoveryState)
        await executor.wait_idle()
    async with open_store("state.db") as store:
        assert_type(store, Store)
        async with open_monitor(policy=policy, service=Service(), store=store):
            pass
    async with open_monitor(policy=policy, service=Service(), store="state.db"):
        pass
    with set_testing(True, max_delay=0.01, heartbeat_interval=None):
        assert_type(is_testing(), bool)
    set_testing(False)


async def expose(monitor: Monitor) -> None:
    async with trio.open_nursery() as nursery:
        metrics: MonitorMetrics = await nursery.start(
            attach_metrics, monitor, CollectorRegistry()
        )
        assert_type(metrics.registry, CollectorRegistry)
        assert_type(metrics.health(), Probe)
        assert_type(metrics.readiness().ok, bool)
        url: str = await nursery.start(
            partial(serve_metrics, monitor, host="::1", port=9464)
        )
        print(url)


if __name__ == "__main__":
    trio.run(main)
