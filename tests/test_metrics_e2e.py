"""End to end over loopback: a monitor on the served simulator, scraped with httpx."""

from __future__ import annotations

from functools import partial

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from trio_tinkex_recovery import Config, Policy, open_monitor
from trio_tinkex_recovery.metrics import serve_metrics
from trio_tinkex_recovery.testing import FakeTinker, Fault, serve_fake_tinker

from .reliability._support import KEY, Recorder, is_poll

INTERVAL = 0.2
POLICY = Policy(enabled=True, poll_interval=INTERVAL, jitter=0, backoff=0.05)
POLLS = "/api/v1/training_runs/"
#: How long hanging polls hang: well past the three intervals /healthz allows.
HANG = 2.0


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float:
    return samples[(f"tinkex_recovery_{name}", tuple(sorted(labels.items())))]


async def test_scrape_matches_simulator_and_probes_follow_polls(nursery):
    """/metrics agrees with the simulator and statistics(); /healthz and /readyz
    follow the polls."""
    fake = FakeTinker()
    fake.add_run("run-1")
    fake.add_run("run-2")
    # run-2's first poll answers late: until then the watcher is not ready.
    fake.script(Fault.latency(0.5, path=f"{POLLS}run-2"))
    base_url = await nursery.start(serve_fake_tinker, fake)
    config = Config(api_key=KEY, base_url=base_url, max_retries=0)
    recorder = Recorder(polls=True)
    with trio.fail_after(30):
        async with (
            # One GET per poll: the faults here target each run's GET.
            open_monitor(policy=POLICY, config=config, polling="each") as monitor,
            httpx.AsyncClient() as http,
            trio.open_nursery() as inner,
        ):
            await inner.start(recorder.run, monitor)
            url = await inner.start(partial(serve_metrics, monitor, port=0))

            async def get(path: str) -> httpx.Response:
                return await http.get(url + path)

            assert (await get("/readyz")).status_code == 200
            await monitor.monitor_run("run-1")
            await monitor.monitor_run("run-2")
            await recorder.wait_for(lambda events: "run-1" in polled_runs(events))
            ready = await get("/readyz")
            assert ready.status_code == 503
            assert ready.text == "1 of 2 watched runs not polled yet\n"
            await recorder.wait_for(lambda events: "run-2" in polled_runs(events))
            assert (await get("/readyz")).status_code == 200

            fake.corrupt("run-1")
            await recorder.wait_for(lambda events: "completed" in names(events))
            [completed] = [e for e in recorder.events if e.name == "completed"]
            successor = completed.metadata["new_run_id"]
            await recorder.wait_for(lambda events: successor in polled_runs(events))
            assert (await get("/healthz")).status_code == 200

            # Every poll from now on hangs: once three intervals pass with no
            # answer the watcher is unhealthy, and nothing moves until HANG.
            fake.add_fault_rate(Fault.latency(HANG, method="GET", path=POLLS), 1.0)
            hung_at = trio.current_time()
            await trio.sleep_until(hung_at + INTERVAL + 3 * INTERVAL + 0.1)
            scraped_at = trio.current_time()
            health = await get("/healthz")
            response = await get("/metrics")
            stats = monitor.statistics()
            sent = sum(map(is_poll, fake.requests))
            assert trio.current_time() < hung_at + HANG
            assert health.status_code == 503
            assert health.text.startswith("no poll answered for ")

            fake.clear_faults()
            await recorder.wait_for(
                lambda events: any(
                    e.name == "polled" and e.time > scraped_at for e in events
                )
            )
            assert (await get("/healthz")).status_code == 200
            inner.cancel_scope.cancel()

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert KEY not in response.text
    samples = parse(response.text)
    polled = [e for e in recorder.events if e.name == "polled" and e.time < scraped_at]
    # run-2 and run-1's successor watched, each with one poll hanging.
    assert value(samples, "watched_runs") == stats.monitored == 2
    assert value(samples, "polls_total", outcome="ok") == len(polled)
    assert value(samples, "polls_total", outcome="error") == stats.poll_errors == 0
    assert stats.polls == len(polled) + 2 == sent
    assert value(samples, "api_requests_total", kind="get") == stats.get_requests
    assert value(samples, "detected_total") == stats.detected == 1
    assert value(samples, "recovery_attempts_total") == stats.attempts == 1
    assert value(samples, "recoveries_total", outcome="completed") == 1
    assert fake.restore_count("run-1") == 1
    assert value(samples, "recoveries_in_progress") == stats.in_progress == 0
    assert value(samples, "poll_duration_seconds_count") == len(polled)
    assert value(samples, "recovery_duration_seconds_count") == 1


def names(events) -> list[str]:
    return [e.name for e in events]


def polled_runs(events) -> set[str]:
    return {e.run_id for e in events if e.name == "polled"}


async def test_routes(nursery):
    """Unknown paths answer 404, other methods 405, HEAD no body."""
    fake = FakeTinker()
    base_url = await nursery.start(serve_fake_tinker, fake)
    async with (
        open_monitor(
            policy=POLICY, config=Config(api_key=KEY, base_url=base_url)
        ) as monitor,
        httpx.AsyncClient() as http,
        trio.open_nursery() as inner,
    ):
        url = await inner.start(partial(serve_metrics, monitor, port=0))
        assert url.startswith("http://127.0.0.1:")
        assert (await http.get(url + "/")).status_code == 404
        refused = await http.post(url + "/metrics")
        assert refused.status_code == 405
        assert refused.headers["allow"] == "GET, HEAD"
        head = await http.head(url + "/healthz")
        assert head.status_code == 200
        assert head.content == b""
        assert (await http.get(url + "/healthz")).text == "no runs watched\n"
        inner.cancel_scope.cancel()
