"""End to end over loopback HTTP: monitor + native client + simulator."""

from __future__ import annotations

import trio

from trio_tinkex_recovery import Config, Policy, open_monitor
from trio_tinkex_recovery.testing import FakeTinker, Fault, serve_fake_tinker

KEY = "tml-e2e-SECRET-0123456789"
POLICY = Policy(enabled=True, poll_interval=0.2, jitter=0.1, backoff=0.05)


async def wait_for(events, predicate):
    """Receive events until one satisfies ``predicate``; return them all."""
    seen = []
    async for event in events:
        seen.append(event)
        if predicate(event):
            return seen
    raise AssertionError(f"no matching event in {seen}")


async def test_config_alone_recovers_over_http(nursery):
    """open_monitor(config=...) opens its own client; one restore per corruption."""
    fake = FakeTinker()
    fake.add_run("run-1", checkpoints=["ckpt-0001", "ckpt-0002"])
    fake.add_run("healthy")
    base_url = await nursery.start(serve_fake_tinker, fake)
    config = Config(api_key=KEY, base_url=base_url)
    with trio.fail_after(20):
        async with open_monitor(policy=POLICY, config=config) as monitor:
            async with monitor.subscribe() as events:
                await monitor.monitor_run("run-1")
                await monitor.monitor_run("healthy")
                fake.corrupt("run-1")
                seen = await wait_for(events, lambda e: e.name == "completed")
                new_run = seen[-1].metadata["new_run_id"]
                # The recovered run is a run of its own and is now watched.
                await wait_for(
                    events, lambda e: e.name == "polled" and e.run_id == new_run
                )
            assert monitor.monitored_runs == {"healthy", new_run}
            assert fake.run(new_run).last_checkpoint.tinker_path == (
                "tinker://run-1/weights/ckpt-0002"
            )
    assert fake.restore_count("run-1") == 1
    assert fake.restore_count("healthy") == 0
    loads = [r for r in fake.requests if r.path == "/api/v1/load_weights"]
    assert len(loads) == 1
    assert loads[0].json["optimizer"] is True
    assert all(KEY not in str(r) for r in fake.requests)


async def test_poll_faults_are_poll_errors_not_recoveries(nursery):
    """Faults injected into polls give poll_error events and no recovery."""
    fake = FakeTinker()
    fake.add_run("run-1")
    base_url = await nursery.start(serve_fake_tinker, fake)
    config = Config(api_key=KEY, base_url=base_url, max_retries=0)
    fake.script(
        Fault.server_error(503, path="/api/v1/training_runs"),
        Fault.malformed(path="/api/v1/training_runs"),
        Fault.missing_fields("base_model", path="/api/v1/training_runs"),
    )
    with trio.fail_after(20):
        async with open_monitor(policy=POLICY, config=config) as monitor:
            async with monitor.subscribe() as events:
                await monitor.monitor_run("run-1")
                seen = []
                while len(seen) < 3:
                    event = await events.receive()
                    assert event.name == "poll_error"
                    seen.append(event)
            assert monitor.monitored_runs == {"run-1"}
            assert monitor.statistics().detected == 0
    errors = [type(e.metadata["error"]).__name__ for e in seen]
    assert errors == [
        "InternalServerError",
        "ResponseValidationError",
        "ResponseValidationError",
    ]
    assert "base_model" in str(seen[2].metadata["error"])
    assert fake.restore_count("run-1") == 0
