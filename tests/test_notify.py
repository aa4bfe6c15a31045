"""Notifications on the mock clock: the message, the queue, the retries.

The receiver here is an ``httpx.MockTransport``; the signature and the
CloudEvent are checked with the reference packages (``standardwebhooks``,
``cloudevents``), not with our own code.  Real loopback HTTP is in
``test_notify_e2e.py``.
"""

from __future__ import annotations

import itertools
import json
import logging
from functools import partial

import httpx
import pytest
import trio
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from standardwebhooks.webhooks import Webhook

from trio_tinkex_recovery import Policy, notify, open_monitor, set_testing

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
URL = "https://hooks.example.com/tinker/secret-path"
POLICY = Policy(enabled=True, jitter=0, poll_interval=1, max_attempts=1)


@pytest.fixture(autouse=True)
def _exact_delays():
    """Retry delays without their random jitter."""
    with set_testing(True):
        yield


class Receiver:
    """Answers each POST with the next status of ``answers`` (then 200)."""

    def __init__(self, *answers, hang: bool = False, headers=None) -> None:
        self.answers = list(answers)
        self.hang = hang
        self.headers = headers or {}
        self.requests: list[tuple[float, httpx.Request]] = []
        self.accepted = trio.Event()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((trio.current_time(), request))
        if self.hang:
            await trio.sleep_forever()
        status = self.answers.pop(0) if self.answers else 200
        if status < 300:
            self.accepted.set()
        else:
            await trio.lowlevel.checkpoint()
        return httpx.Response(status, headers=self.headers, text="busy\x1b[2J")


def notifier(receiver: Receiver, url: str = URL, **options):
    made = notify(url, **options)
    made._transport = httpx.MockTransport(receiver)
    return made


async def exhaust(service, rest, monitor, run_id="run-1", error="boom"):
    """Make ``run_id``'s recovery give up at its first attempt."""
    rest.add(run_id, "ckpt-0001", corrupted=True)
    service.failures.append(RuntimeError(error))
    await monitor.monitor_run(run_id)


async def test_an_exhausted_recovery_is_one_signed_cloudevent(
    service, rest, autojump_clock
):
    """The POST verifies with standardwebhooks and parses as a CloudEvent."""
    receiver = Receiver()
    async with open_monitor(policy=POLICY, service=service) as monitor:
        async with trio.open_nursery() as nursery:
            made = notifier(receiver, secret=SECRET)
            assert await nursery.start(made.run, monitor) is made
            await exhaust(service, rest, monitor, error="boom\x1b[31m\nline two")
            await receiver.accepted.wait()
            nursery.cancel_scope.cancel()

    ((_, request),) = receiver.requests
    assert request.url == URL
    assert request.headers["content-type"].startswith("application/cloudevents+json")
    body = Webhook(SECRET).verify(request.content, dict(request.headers))
    event = from_http_event(
        HTTPMessage(headers=dict(request.headers), body=request.content)
    )
    assert event.get_type() == "io.trio-tinkex-recovery.exhausted"
    assert event.get_id() == request.headers["webhook-id"] == body["id"]
    assert event.get_source().startswith("/trio-tinkex-recovery/")
    assert body["specversion"] == "1.0"
    assert body["datacontenttype"] == "application/json"
    assert body["subject"] == "run-1"
    data = event.get_data()
    assert data["run_id"] == "run-1"
    assert data["attempt"] == 1
    assert data["checkpoint"] == "tinker://run-1/weights/ckpt-0001"
    # Server text: no escape sequence, no newline.
    assert data["error"] == "RuntimeError: boom line two"
    assert made.statistics().sent == 1


async def test_only_the_events_asked_for_are_sent(service, rest, autojump_clock):
    """on=("completed",) sends the recovery, not the polls nor other events."""
    receiver = Receiver()
    rest.add("run-1", "ckpt-0001", corrupted=True)
    async with open_monitor(policy=POLICY, service=service) as monitor:
        async with trio.open_nursery() as nursery:
            await nursery.start(notifier(receiver, on=("completed",)).run, monitor)
            await monitor.monitor_run("run-1")
            await receiver.accepted.wait()
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
    ((_, request),) = receiver.requests
    body = json.loads(request.content)
    assert body["type"] == "io.trio-tinkex-recovery.completed"
    assert body["data"]["new_run_id"] == "session-1:train:1"
    assert "webhook-signature" not in request.headers  # no secret, no signature


async def test_a_stall_is_sent_like_the_others(service, rest, autojump_clock):
    """A run standing still: one signed ``stalled`` with the time it last moved."""
    receiver = Receiver()
    rest.add("run-1", "ckpt-0001")  # its last_request_time never moves
    policy = Policy(enabled=True, jitter=0, poll_interval=1, stall_timeout=30)
    async with open_monitor(policy=policy, service=service) as monitor:
        async with trio.open_nursery() as nursery:
            await nursery.start(notifier(receiver, secret=SECRET).run, monitor)
            await monitor.monitor_run("run-1")
            await receiver.accepted.wait()
            told_at = trio.current_time()
            await trio.sleep(100)
            nursery.cancel_scope.cancel()
    ((_, request),) = receiver.requests  # once per stall
    assert told_at == 30
    body = Webhook(SECRET).verify(request.content, dict(request.headers))
    assert body["type"] == "io.trio-tinkex-recovery.stalled"
    assert body["data"]["run_id"] == "run-1"
    assert body["data"]["last_request_time"] == "2026-11-01T00:00:00+00:00"
    assert body["data"]["attempt"] is None  # no recovery's leftovers


async def test_retries_back_off_and_keep_one_id(service, rest, autojump_clock):
    """503, then 429 asking 7 s, then 200: three tries of one message."""
    receiver = Receiver(503, 429, headers={"retry-after": "7"})
    async with open_monitor(policy=POLICY, service=service) as monitor:
        async with trio.open_nursery() as nursery:
            made = notifier(receiver, secret=SECRET)
            await nursery.start(made.run, monitor)
            await exhaust(service, rest, monitor)
            await receiver.accepted.wait()
            nursery.cancel_scope.cancel()

    times = [t for t, _ in receiver.requests]
    # 503 with Retry-After: 7 s asked; 429 also 7 s: the header wins both times.
    assert [b - a for a, b in itertools.pairwise(times)] == [7, 7]
    ids = {r.headers["webhook-id"] for _, r in receiver.requests}
    bodies = {r.content for _, r in receiver.requests}
    assert len(ids) == len(bodies) == 1
    for _, request in receiver.requests:
        Webhook(SECRET).verify(request.content, dict(request.headers))
    assert made.statistics() == made.statistics().__class__(sent=1, retries=2)


async def test_backoff_doubles_and_a_bad_retry_after_is_ignored(
    service, rest, autojump_clock
):
    """Without a sane Retry-After the waits are 1, 2, 4 s; then it gives up."""
    receiver = Receiver(500, 502, 503, 504, headers={"retry-after": "-3"})
    async with open_monitor(policy=POLICY, service=service) as monitor:
        async with trio.open_nursery() as nursery:
            made = notifier(receiver, max_retries=3)
            await nursery.start(made.run, monitor)
            await exhaust(service, rest, monitor)
            await trio.sleep(100)
            nursery.cancel_scope.cancel()
    times = [t for t, _ in receiver.requests]
    assert [b - a for a, b in itertools.pairwise(times)] == [1, 2, 4]
    assert made.statistics().failed == 1
    assert made.statistics().sent == 0


async def test_an_answer_not_worth_a_retry_fails_at_once_logged_once(
    service, rest, autojump_clock, caplog
):
    """404 twice: two failures, one request each, one warning without the path."""
    receiver = Receiver(404, 404)
    caplog.set_level(logging.DEBUG, "trio_tinkex_recovery.notify")
    async with open_monitor(policy=POLICY, service=service) as monitor:
        async with trio.open_nursery() as nursery:
            made = notifier(receiver)
            await nursery.start(made.run, monitor)
            await exhaust(service, rest, monitor, "run-1")
            await exhaust(service, rest, monitor, "run-2")
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
    assert len(receiver.requests) == 2
    assert made.statistics().failed == 2
    (warning,) = [
        r
        for r in caplog.records
        if r.name == "trio_tinkex_recovery.notify" and r.levelno == logging.WARNING
    ]
    text = warning.getMessage()
    assert "HTTP 404: busy" in text
    assert "https://hooks.example.com/…" in text
    assert "secret-path" not in caplog.text
    assert "\x1b" not in caplog.text


async def test_a_hanging_receiver_delays_no_poll(service, rest, autojump_clock):
    """Polls of another run keep their interval while the receiver hangs."""
    receiver = Receiver(hang=True)
    rest.add("run-2", "ckpt-0001")
    async with open_monitor(policy=POLICY, service=service) as monitor:
        async with trio.open_nursery() as nursery:
            made = notifier(receiver, timeout=5, max_retries=2)
            await nursery.start(made.run, monitor)
            await monitor.monitor_run("run-2")
            await exhaust(service, rest, monitor)
            await trio.sleep(99.5)
            nursery.cancel_scope.cancel()
    times = rest.poll_times("run-2")
    assert len(times) == 100
    assert [b - a for a, b in itertools.pairwise(times)] == [1] * 99
    # Three tries of 5 s each, 1 s and 2 s apart, then given up.
    assert [t for t, _ in receiver.requests] == [0, 6, 13]
    assert made.statistics().failed == 1


async def test_a_full_queue_drops_and_counts(service, rest, autojump_clock, caplog):
    """One in flight, one queued: three more events are dropped, logged once."""
    receiver = Receiver(hang=True)
    caplog.set_level(logging.WARNING, "trio_tinkex_recovery.notify")
    async with open_monitor(
        policy=POLICY, service=service, max_concurrent=5
    ) as monitor:
        async with trio.open_nursery() as nursery:
            made = notifier(receiver, max_queue=1, timeout=1000)
            await nursery.start(made.run, monitor)
            for i in range(5):
                await exhaust(service, rest, monitor, f"run-{i}")
            await trio.sleep(5)
            stats, sent = made.statistics(), len(receiver.requests)
            nursery.cancel_scope.cancel()
    assert (stats.dropped, stats.queued, sent) == (3, 1, 1)
    drops = [r for r in caplog.records if "full" in r.getMessage()]
    assert len(drops) == 1


async def test_what_is_queued_is_sent_when_the_monitor_stops(
    service, rest, autojump_clock
):
    """An exhausted event right before the block ends is still sent, once."""
    receiver = Receiver()
    async with open_monitor(policy=POLICY, service=service) as monitor:
        async with trio.open_nursery() as nursery:
            made = notifier(receiver)
            await nursery.start(made.run, monitor)
            async with monitor.subscribe() as events:
                await exhaust(service, rest, monitor)
                async for event in events:
                    if event.name == "exhausted":
                        break
            nursery.cancel_scope.cancel()
    assert len(receiver.requests) == 1
    assert made.statistics().sent == 1


async def test_slack_gets_text_without_controls_or_the_key(
    service, rest, autojump_clock, monkeypatch
):
    """hooks.slack.com: {"text": ...}; the API key in an error is masked."""
    key = "tml-NotifySecretKey123"
    monkeypatch.setenv("TINKER_API_KEY", key)
    receiver = Receiver()
    async with open_monitor(policy=POLICY, service=service) as monitor:
        async with trio.open_nursery() as nursery:
            made = notifier(receiver, "https://hooks.slack.com/services/T0/B0/XYZ")
            await nursery.start(made.run, monitor)
            await exhaust(service, rest, monitor, error=f"bad <key> {key}\r\x07")
            await receiver.accepted.wait()
            nursery.cancel_scope.cancel()
    ((_, request),) = receiver.requests
    assert json.loads(request.content) == {
        "text": "trio-tinkex-recovery: recovery of run run-1 EXHAUSTED after 1 "
        "attempt(s): RuntimeError: bad &lt;key&gt; **** "
    }
    assert key not in str(request.headers)
    assert "XYZ" not in repr(made)


def test_plain_http_goes_to_this_machine_only():
    """http only to localhost, 127.0.0.0/8 or [::1]; https anywhere."""
    for url in (
        "http://127.0.0.1:8080/hook",
        "http://127.3.4.5/hook",
        "http://localhost/hook",
        "http://[::1]:9/hook",
        "https://example.com/hook",
    ):
        notify(url)
    for url in ("http://example.com/hook", "http://evil.localhost/hook"):
        with pytest.raises(ValueError, match="plain http to another machine") as info:
            notify(url)
        assert url.removesuffix("/hook") in str(info.value)
    with pytest.raises(ValueError, match="https URL"):
        notify("ftp://example.com/x")


def test_bad_options_are_plain_errors_that_show_no_secret():
    with pytest.raises(ValueError, match="whsec_") as info:
        notify(URL, secret="hunter2-password")
    assert "hunter2" not in str(info.value)
    with pytest.raises(ValueError, match="not valid base64") as info:
        notify(URL, secret="whsec_not base64!")
    assert "not base64!" not in str(info.value)
    with pytest.raises(ValueError, match=r"unknown event name.*bogus"):
        notify(URL, on=("exhausted", "bogus"))
    with pytest.raises(TypeError, match="not a str"):
        notify(URL, on="exhausted")
    with pytest.raises(ValueError, match="timeout"):
        notify(URL, timeout=0)


async def test_a_notifier_runs_once_at_a_time(service, autojump_clock):
    made = notify(URL)
    async with open_monitor(policy=POLICY, service=service) as monitor:
        async with trio.open_nursery() as nursery:
            await nursery.start(made.run, monitor)
            with pytest.raises(RuntimeError, match="already running"):
                await made.run(monitor)
            nursery.cancel_scope.cancel()
    # Stopped, it can run again.
    async with open_monitor(policy=POLICY, service=service) as monitor:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(made.run, monitor))
            nursery.cancel_scope.cancel()


async def test_metrics_count_notifications_by_outcome(service, rest, autojump_clock):
    """notifications_total{outcome} and retries sum the notifiers' counters."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from trio_tinkex_recovery.metrics import attach_metrics

    ok, refused = Receiver(503), Receiver(404)
    async with open_monitor(policy=POLICY, service=service) as monitor:
        async with trio.open_nursery() as nursery:
            notifiers = [notifier(ok), notifier(refused, "https://other.example/x")]
            for one in notifiers:
                await nursery.start(one.run, monitor)
            metrics = await nursery.start(
                partial(attach_metrics, monitor, notifiers=notifiers)
            )
            await exhaust(service, rest, monitor)
            await trio.sleep(10)
            text = generate_latest(metrics.registry).decode()
            nursery.cancel_scope.cancel()
    samples = {
        (sample.name, tuple(sample.labels.values())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("tinkex_recovery_notification")
    }
    assert samples == {
        ("tinkex_recovery_notifications_total", ("sent",)): 1,
        ("tinkex_recovery_notifications_total", ("failed",)): 1,
        ("tinkex_recovery_notifications_total", ("dropped",)): 0,
        ("tinkex_recovery_notification_retries_total", ()): 1,
    }


async def test_the_guides_receiver_verifies_a_real_notification(
    service, rest, autojump_clock
):
    """The guide's standard-library verify() accepts ours, refuses a forgery."""
    import pathlib
    import re

    page = pathlib.Path(__file__).parent.parent / "docs" / "notify.rst"
    block = re.search(
        r"\.\. code-block:: python\n\n((?:    .*\n|\n)+?)\n(?=\S)",
        page.read_text(encoding="utf-8"),
    )
    assert block is not None
    namespace: dict = {}
    exec("\n".join(line[4:] for line in block.group(1).splitlines()), namespace)
    verify = namespace["verify"]

    receiver = Receiver()
    async with open_monitor(policy=POLICY, service=service) as monitor:
        async with trio.open_nursery() as nursery:
            await nursery.start(notifier(receiver, secret=SECRET).run, monitor)
            await exhaust(service, rest, monitor)
            await receiver.accepted.wait()
            nursery.cancel_scope.cancel()
    ((_, request),) = receiver.requests
    headers = dict(request.headers)
    assert verify(SECRET, headers, request.content)["data"]["run_id"] == "run-1"
    with pytest.raises(ValueError, match="bad signature"):
        verify(SECRET, headers, request.content.replace(b"run-1", b"run-2"))


async def test_the_runs_metadata_rides_along_but_cannot_spoof(
    service, rest, autojump_clock
):
    """JSON-able run metadata is in data; objects are left out; names kept."""
    receiver = Receiver()
    rest.add("run-1", "ckpt-0001", corrupted=True)
    service.failures.append(RuntimeError("boom"))
    metadata = {"team": "rl\x1b[1m", "event": "completed", "handle": object()}
    async with open_monitor(policy=POLICY, service=service) as monitor:
        async with trio.open_nursery() as nursery:
            await nursery.start(notifier(receiver).run, monitor)
            await monitor.monitor_run("run-1", metadata=metadata)
            await receiver.accepted.wait()
            nursery.cancel_scope.cancel()
    ((_, request),) = receiver.requests
    data = json.loads(request.content)["data"]
    assert data["team"] == "rl"
    assert data["event"] == "exhausted"
    assert "handle" not in data


async def test_a_garbled_answer_is_a_failure_not_a_crash(service, rest, autojump_clock):
    """An error answer whose gzip body does not decode: counted, polls go on."""

    async def garbled(request: httpx.Request) -> httpx.Response:
        await trio.lowlevel.checkpoint()
        return httpx.Response(
            500, headers={"content-encoding": "gzip"}, content=b"not gzip at all"
        )

    rest.add("run-2", "ckpt-0001")
    async with open_monitor(policy=POLICY, service=service) as monitor:
        async with trio.open_nursery() as nursery:
            made = notify(URL)
            made._transport = httpx.MockTransport(garbled)
            await nursery.start(made.run, monitor)
            await monitor.monitor_run("run-2")
            await exhaust(service, rest, monitor)
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
    assert made.statistics().failed == 1
    assert len(rest.poll_times("run-2")) == 11


async def test_stopping_cuts_a_retry_wait_short_for_one_last_try(
    service, rest, autojump_clock
):
    """Stopped while waiting to retry: one more try at once, then given up."""
    receiver = Receiver(*[503] * 10)
    async with open_monitor(policy=POLICY, service=service) as monitor:
        async with trio.open_nursery() as nursery:
            made = notifier(receiver)
            await nursery.start(made.run, monitor)
            await exhaust(service, rest, monitor)
            await trio.sleep(20.5)  # tries at 0, 1, 3, 7, 15; the next at 31
            nursery.cancel_scope.cancel()
        stopped = trio.current_time()
    assert [t for t, _ in receiver.requests] == [0, 1, 3, 7, 15, 20.5]
    assert stopped == 20.5
    assert made.statistics().failed == 1


async def test_the_exhausted_that_ends_a_watch_is_told_with_a_slow_journal(
    service, rest, autojump_clock
):
    """watch stops once nothing is left, after the outcome's event, not before."""
    import io

    from trio_tinkex_recovery._store._memory import MemoryStore
    from trio_tinkex_recovery.cli._board import Board
    from trio_tinkex_recovery.cli._runtime import Output, Stop
    from trio_tinkex_recovery.cli._view import LinesView
    from trio_tinkex_recovery.cli._watch import _nothing_left, monitor_runs

    class SlowStore(MemoryStore):
        async def put_recovery(self, recovery):
            await trio.sleep(1)  # a busy disk
            await super().put_recovery(recovery)

    receiver = Receiver()
    rest.add("run-1", corrupted=True)  # no checkpoint: exhausted at once
    board = Board(policy=POLICY, view=LinesView(Output(io.StringIO())))
    made = notifier(receiver)
    await monitor_runs(
        service=service,
        policy=POLICY,
        max_concurrent=1,
        run_ids=["run-1"],
        board=board,
        headline="watching",
        until=partial(_nothing_left, board, wait=False),
        duration=None,
        stop=Stop(),
        store=SlowStore(),
        notifiers=[made],
    )
    assert [json.loads(r.content)["type"] for _, r in receiver.requests] == [
        "io.trio-tinkex-recovery.exhausted"
    ]
