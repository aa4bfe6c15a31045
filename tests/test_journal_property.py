"""The journal's promise as a property: any sequence of crashes, one restore.

A watcher is cut short at arbitrary Trio times (hypothesis draws them) and
started again on the same journal and the same simulator, until one runs
to the end.  Whatever the cut points — while polling, after detection,
between the write-ahead record and the request, while the restore's future
is pending — each corrupted run ends restored exactly once, a healthy run
never, and attempts never exceed ``max_attempts``.  (The SIGKILL version,
with real processes, is ``test_crash.py``.)
"""

from __future__ import annotations

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_tinkex_recovery import Config, Policy, open_monitor, open_service_client
from trio_tinkex_recovery._store import MemoryStore
from trio_tinkex_recovery.testing import FakeTinker

KEY = "tml-journal-property"
BAD = ("bad-1", "bad-2")
GOOD = ("ok-1",)
POLICY = Policy(enabled=True, poll_interval=1.0, jitter=0, backoff=0.5, max_attempts=3)


async def life(fake: FakeTinker, store: MemoryStore, until: float | None) -> int:
    """One watcher's life on ``store``, cut short after ``until`` seconds."""
    config = Config(api_key=KEY, base_url="https://tinker.test")
    with trio.move_on_after(until if until is not None else 60):
        async with (
            open_service_client(config, transport=fake.transport()) as service,
            open_monitor(policy=POLICY, service=service, store=store) as monitor,
        ):
            if not (await store.load()).runs:
                for run_id in (*BAD, *GOOD):
                    await monitor.monitor_run(run_id)
            await trio.sleep_forever()
    return 0


@settings(max_examples=60)
@given(cuts=st.lists(st.floats(0.0, 3.0), max_size=4))
def test_any_sequence_of_crashes_restores_each_run_once(cuts):
    """Cut anywhere, any number of times, then run on: one restore per run."""

    async def main() -> None:
        fake = FakeTinker(api_key=KEY, future_delay=0.7)
        for run_id in (*BAD, *GOOD):
            fake.add_run(run_id, checkpoints=["ckpt-0001", "ckpt-0002"])
        for run_id in BAD:
            fake.corrupt(run_id)
        store = MemoryStore()
        for cut in cuts:
            await life(fake, store, cut)
        await life(fake, store, None)
        assert fake.restores == {run_id: 1 for run_id in BAD}
        snapshot = await store.load()
        for run_id in BAD:
            state = snapshot.recoveries[run_id].state
            assert state.phase == "done"
            assert state.attempt <= POLICY.max_attempts
        assert not snapshot.open_loads or all(
            snapshot.recoveries[load.run_id].state.phase == "done"
            for load in snapshot.open_loads
        )

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
