"""``watch --metrics-port``: a real watch process, scraped over loopback."""

from __future__ import annotations

import re
import signal

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from trio_tinkex_recovery.testing import FakeTinker, Fault, serve_fake_tinker

from .reliability._support import is_poll
from .test_cli import KEY, TIMEOUT, environ, events_of, spawn, watch_argv

POLLS = "/api/v1/training_runs/"
#: How long every poll hangs once the simulator stalls.
HANG = 3.0
#: watch_argv's poll interval.
INTERVAL = 0.2


def value(text: str, name: str, **labels: str) -> float:
    """One sample of a scrape, parsed with prometheus-client's own parser."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"tinkex_recovery_{name}" and sample.labels == labels:
                return sample.value
    raise AssertionError(f"no sample {name}{labels} in:\n{text}")


async def test_watch_metrics_match_the_simulator_and_the_summary():
    """/metrics of watch agrees with the simulator and the final statistics;
    /healthz fails once polls stop being answered."""
    fake = FakeTinker(api_key=KEY)
    fake.add_run("run-1", checkpoints=["ckpt-0001", "ckpt-0002"])
    fake.add_run("run-2")
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery, httpx.AsyncClient() as http:
            url = await nursery.start(serve_fake_tinker, fake)
            argv = watch_argv(
                url, "run-1", "run-2", "--json", "-v", "--jitter", "0",
                "--max-retries", "0", "--metrics-port", "0",
                # One GET per poll: the hang below strikes each run's GET.
                "--polling", "each",
            )  # fmt: skip
            async with spawn(argv, environ(TINKER_API_KEY=KEY)) as watch:
                line = await watch.err.wait_for(r"Metrics on http://\S+/metrics\.")
                metrics_url = re.search(r"(http://\S+)/metrics\.", line)[1]
                assert metrics_url.startswith("http://127.0.0.1:")
                await watch.err.wait_for(r"run-1: poll #2 ok")
                fake.corrupt("run-1")
                await watch.out.wait_for(r'"name": "completed"')
                (restore,) = fake.restore_log
                await watch.err.wait_for(rf"{re.escape(restore.model_id)}: poll #1 ok")
                healthy = await http.get(metrics_url + "/healthz")
                ready = await http.get(metrics_url + "/readyz")

                # From now on every poll hangs: the counts hold still.
                fake.add_fault_rate(Fault.latency(HANG, method="GET", path=POLLS), 1.0)
                hung_at = trio.current_time()
                await trio.sleep_until(hung_at + 6 * INTERVAL)
                unhealthy = await http.get(metrics_url + "/healthz")
                scrape = (await http.get(metrics_url + "/metrics")).text
                sent = sum(map(is_poll, fake.requests))
                assert trio.current_time() < hung_at + HANG
                watch.process.send_signal(signal.SIGINT)
                assert await watch.wait() == 0, watch.err.text
            nursery.cancel_scope.cancel()

    assert (healthy.status_code, ready.status_code) == (200, 200)
    assert unhealthy.status_code == 503, unhealthy.text
    assert unhealthy.text.startswith("no poll answered for ")
    assert KEY not in scrape
    assert "run-" not in scrape
    # The summary's totals are the monitor's statistics() at the end.
    totals = re.search(r"(\d+) polls, (\d+) failed", watch.err.text)
    polls, failed = int(totals[1]), int(totals[2])
    polled = sum(e["name"] == "polled" for e in events_of(watch.out.lines))
    assert value(scrape, "polls_total", outcome="ok") == polled
    assert value(scrape, "polls_total", outcome="error") == failed == 0
    # run-2 and run-1's successor are watched, each with one poll hanging.
    assert value(scrape, "watched_runs") == 2
    assert value(scrape, "api_requests_total", kind="get") == polls == sent
    assert polled + 2 == sent
    assert value(scrape, "detected_total") == 1
    assert value(scrape, "recovery_attempts_total") == 1
    assert value(scrape, "recoveries_total", outcome="completed") == 1
    assert fake.restores == {"run-1": 1}
    assert value(scrape, "recovery_duration_seconds_count") == 1
    assert value(scrape, "poll_duration_seconds_count") == polled
