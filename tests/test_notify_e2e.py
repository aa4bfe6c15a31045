"""Notifications over real loopback HTTP, and through the CLI as a user runs it.

The receiver is a small ASGI app served by hypercorn on 127.0.0.1; each
request is checked with the reference packages: the signature with
``standardwebhooks``, the body with the ``cloudevents`` SDK.
"""

from __future__ import annotations

import logging
from functools import partial

import pytest
import trio
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from standardwebhooks.webhooks import Webhook

from trio_tinkex_recovery import Policy, notify, open_monitor, set_testing
from trio_tinkex_recovery._asgi import bind_socket, lifespan, serve_asgi
from trio_tinkex_recovery.cli._runtime import UsageError
from trio_tinkex_recovery.cli._watch import parse
from trio_tinkex_recovery.testing import FakeTinker, serve_fake_tinker

from .test_cli import KEY, TIMEOUT, cli, environ, spawn, watch_argv

SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"


class Hook:
    """A webhook receiver: answers each POST with the next status (then 200)."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.accepted = trio.Event()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append((headers, body))
        status = self.statuses.pop(0) if self.statuses else 200
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", b"0")],
            }
        )
        await send({"type": "http.response.body", "body": b""})
        if status < 300:
            self.accepted.set()

    def events(self) -> list[dict]:
        """Every request verified and parsed: its CloudEvent as a dict."""
        got = []
        for headers, body in self.requests:
            Webhook(SECRET).verify(body, headers)
            event = from_http_event(HTTPMessage(headers=headers, body=body))
            got.append(
                {
                    "id": event.get_id(),
                    "webhook-id": headers["webhook-id"],
                    "type": event.get_type(),
                    "data": event.get_data(),
                }
            )
        return got


async def serve_hook(nursery: trio.Nursery, hook: Hook) -> str:
    """Serve ``hook`` on loopback; its URL."""
    sock = await bind_socket("127.0.0.1", 0)
    base = await nursery.start(
        partial(serve_asgi, hook, sock, logger=logging.getLogger("test.hook"))
    )
    return f"{base}/hooks/tinker"


@pytest.mark.parametrize(
    ("notify_on", "told"),
    [
        (None, ["exhausted"]),
        ("completed, exhausted", ["completed", "exhausted"]),
    ],
    ids=["default", "completed-too"],
)
async def test_watch_notifies_the_events_asked_for(notify_on, told):
    """watch --notify: one signed CloudEvent per chosen event, to each receiver."""
    fake = FakeTinker(api_key=KEY)
    fake.add_run("run-1", checkpoints=["ckpt-0001"])
    fake.add_run("run-2", checkpoints=[], corrupted=True)  # nothing to restore
    fake.corrupt("run-1")
    hooks = [Hook(), Hook()]
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            hook_urls = [await serve_hook(nursery, hook) for hook in hooks]
            argv = watch_argv(url, "run-1", "run-2", "--no-follow", "--plain")
            for hook_url in hook_urls:
                argv += ["--notify", hook_url]
            if notify_on is not None:
                argv += ["--notify-on", notify_on]
            env = environ(TINKER_API_KEY=KEY, TTR_NOTIFY_SECRET=SECRET)
            async with spawn(argv, env) as watch:
                code = await watch.wait()
            nursery.cancel_scope.cancel()

    assert code == 1, watch.out.text + watch.err.text  # run-2 was exhausted
    for hook in hooks:
        events = sorted(hook.events(), key=lambda e: e["type"])
        assert [e["type"] for e in events] == [
            f"io.trio-tinkex-recovery.{name}" for name in told
        ]
        for event in events:
            assert event["id"] == event["webhook-id"]
        exhausted = events[-1]["data"]
        assert exhausted["run_id"] == "run-2"
        assert exhausted["attempt"] == 1
        assert "NoCheckpointError" in exhausted["error"]
        if "completed" in told:
            completed = events[0]["data"]
            assert completed["run_id"] == "run-1"
            assert completed["checkpoint"] == "tinker://run-1/weights/ckpt-0001"
        for headers, body in hook.requests:
            assert KEY not in body.decode() + str(headers)
    port = hook_urls[0].split(":")[2].split("/")[0]
    assert (
        f"notifications to http://127.0.0.1:{port}/…: {len(told)} sent, 0 failed, "
        "0 dropped" in watch.out.text
    )
    assert "hooks/tinker" not in watch.out.text + watch.err.text
    assert KEY not in watch.out.text + watch.err.text


async def test_a_receiver_failing_twice_gets_one_event_under_one_id(service, rest):
    """503, 503, then 200 over real HTTP: three tries, one id, one body."""
    hook = Hook(503, 503)
    rest.add("run-1", "ckpt-0001", corrupted=True)
    service.failures.append(RuntimeError("no capacity"))
    policy = Policy(enabled=True, jitter=0, poll_interval=0.1, max_attempts=1)
    with set_testing(True, max_delay=0.05), trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            url = await serve_hook(nursery, hook)
            async with open_monitor(policy=policy, service=service) as monitor:
                async with trio.open_nursery() as inner:
                    notifier = await inner.start(
                        notify(url, secret=SECRET).run, monitor
                    )
                    await monitor.monitor_run("run-1")
                    await hook.accepted.wait()
                    inner.cancel_scope.cancel()
            nursery.cancel_scope.cancel()

    events = hook.events()
    assert len(events) == 3
    assert len({e["id"] for e in events}) == 1
    assert len({body for _, body in hook.requests}) == 1
    assert events[0]["type"] == "io.trio-tinkex-recovery.exhausted"
    assert events[0]["data"]["error"] == "RuntimeError: no capacity"
    stats = notifier.statistics()
    assert (stats.sent, stats.retries, stats.failed) == (1, 2, 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--notify", "http://example.com/hook"],
            "argument --notify: http://example.com/… is plain http to another machine",
        ),
        (
            ["--notify", "https://example.com/h", "--notify-on", "exhausted,nope"],
            "argument --notify-on: unknown event name(s) nope",
        ),
        (["--notify-on", "exhausted"], "argument --notify-on: needs --notify URL"),
        (
            ["--notify", "https://example.com/h", "--notify-secret", "s3cret"],
            "argument --notify-secret: the secret must be 'whsec_'",
        ),
    ],
    ids=["plain-http", "unknown-event", "on-alone", "bad-secret"],
)
def test_bad_notify_options_are_usage_errors(monkeypatch, args, message):
    monkeypatch.setenv("TINKER_API_KEY", KEY)
    with pytest.raises(UsageError) as info:
        parse(["run-1", *args])
    assert str(info.value).startswith(message)
    assert "s3cret" not in str(info.value)


def test_the_secret_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("TINKER_API_KEY", KEY)
    monkeypatch.setenv("TTR_NOTIFY_SECRET", "whsec_!!")
    with pytest.raises(UsageError, match=r"^TTR_NOTIFY_SECRET: .*not valid base64"):
        parse(["run-1", "--notify", "https://example.com/h"])
    monkeypatch.setenv("TTR_NOTIFY_SECRET", SECRET)
    options = parse(
        ["run-1", "--notify", "https://a.example/h", "--notify", "https://b.example/h"]
    )
    assert [n.receiver for n in options.notifiers] == [
        "https://a.example/…",
        "https://b.example/…",
    ]
    assert all(n.events == {"exhausted", "stalled"} for n in options.notifiers)


def test_watch_help_lists_the_notify_options():
    import subprocess

    result = subprocess.run(
        cli("watch", "--help"), capture_output=True, text=True, check=True,
        env=environ(), timeout=TIMEOUT,
    )  # fmt: skip
    for flag in ("--notify URL", "--notify-on NAME,...", "--notify-secret"):
        assert flag in result.stdout


async def test_run_notifies_a_stall_and_the_restart_that_ends_it(tmp_path):
    """run --notify: a supervised child that stalls is told as ``stalled``, and
    the restart that carries it on as ``completed``, signed, to the receiver."""
    from .supervise.test_run import new_fake, run_argv, trainer, trainer_env

    fake = new_fake()
    hook = Hook()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            hook_url = await serve_hook(nursery, hook)
            options = ("--stall-timeout", "1", "--restart-on-stall", "--grace", "1")
            notify = ("--notify", hook_url, "--notify-on", "stalled,completed")
            command = trainer(12, 5)
            argv = run_argv(
                url, tmp_path / "job.json", *options, *notify, command=command
            )
            env = trainer_env(url, TRAINER_STALL_AFTER="6", TTR_NOTIFY_SECRET=SECRET)
            async with spawn(argv, env) as job:
                code = await job.wait()
            nursery.cancel_scope.cancel()

    assert code == 0, job.err.text
    told = [e["type"].rsplit(".", 1)[1] for e in hook.events()]
    assert told == ["stalled", "completed"]
    stalled = hook.events()[0]["data"]
    assert stalled["run_id"] == fake.restore_log[0].source_run_id
    for headers, body in hook.requests:
        assert KEY not in body.decode() + str(headers)
