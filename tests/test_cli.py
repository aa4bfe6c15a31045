"""The command line, run as a user runs it: a subprocess, its output, its exit code.

No test sleeps to wait for something: each reads the subprocess's output
until the line it expects, under a ``trio.fail_after`` guard.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest
import trio

from trio_tinkex_recovery.testing import FakeTinker, serve_fake_tinker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

#: Runs the CLI with rich made unimportable, as without the ``cli`` extra.
NO_RICH = (
    "import sys; sys.modules['rich'] = None; "
    "from trio_tinkex_recovery.cli import main; sys.exit(main(sys.argv[1:]))"
)
KEY = "tml-cli-test-key"
#: Guard for one test; a healthy one is done in a few seconds.
TIMEOUT = 40
#: ``--duration`` of commands that would otherwise run until Ctrl-C, so that
#: none outlives a test runner that was killed.
SAFETY = "30"


def cli(*args: str, no_rich: bool = False) -> list[str]:
    """The command line that runs the CLI with ``args``."""
    if no_rich:
        return [sys.executable, "-c", NO_RICH, *args]
    return [sys.executable, "-m", "trio_tinkex_recovery", *args]


def environ(**values: str | None) -> dict[str, str]:
    """This process's environment without Tinker settings, plus ``values``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TINKER_API_KEY", "TINKER_BASE_URL")
    }
    env.update({k: v for k, v in values.items() if v is not None})
    return env


class Output:
    """The lines a subprocess writes to one pipe, readable while it runs."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self.lines: list[str] = []
        self.closed = trio.Event()
        self._changed = trio.Event()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    async def pump(self) -> None:
        pending = b""
        async for chunk in self._stream:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            self.lines.extend(line.decode() for line in complete)
            self._changed.set()
            self._changed = trio.Event()
        if pending:
            self.lines.append(pending.decode())
        self.closed.set()
        self._changed.set()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds, checked at every new line."""
        while not condition():
            if self.closed.is_set():
                raise AssertionError(f"the output ended first:\n{self.text}")
            await self._changed.wait()

    async def wait_for(self, pattern: str) -> str:
        """The first line matching ``pattern`` (a regex), once it is written."""
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if re.search(pattern, line):
                    return line
            seen = len(self.lines)
            if self.closed.is_set():
                raise AssertionError(f"no line matches {pattern!r} in:\n{self.text}")
            await self._changed.wait()


class Running:
    """A CLI subprocess with its stdout and stderr being read."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        assert process.stdout is not None
        assert process.stderr is not None
        self.out = Output(process.stdout)
        self.err = Output(process.stderr)

    async def wait(self) -> int:
        """Wait for the exit and the end of its output; return the exit code."""
        code = await self.process.wait()
        await self.out.closed.wait()
        await self.err.closed.wait()
        return code


@asynccontextmanager
async def spawn(argv: list[str], env: dict[str, str]) -> AsyncIterator[Running]:
    """Run ``argv`` with both pipes read; it is killed if still alive at the end."""
    process = await trio.lowlevel.open_process(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    running = Running(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(running.out.pump)
            nursery.start_soon(running.err.pump)
            try:
                yield running
            finally:
                if process.returncode is None:
                    process.kill()
    finally:
        with trio.CancelScope(shield=True):
            await process.wait()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    await stream.aclose()


def events_of(lines: list[str]) -> list[dict]:
    """Parse JSON lines; fail if any line is not an event."""
    events = [json.loads(line) for line in lines if line]
    for event in events:
        assert event["event"] == ["tinkex", "recovery", event["name"]]
    return events


# -- demo ----------------------------------------------------------------------


async def test_demo_recovers_every_corrupted_run_exactly_once():
    """The demo ends by itself with exit 0: each corrupted run recovered once."""
    args = ["demo", "--runs", "4", "--seed", "3", "--duration", "2.5"]
    env = environ()
    with trio.fail_after(TIMEOUT):
        async with (
            spawn(cli(*args), env) as plain,
            # The same demo, as JSON lines, without rich installed.
            spawn(cli(*args, "--json", no_rich=True), env) as as_json,
        ):
            assert await plain.wait() == 0, plain.err.text
            assert await as_json.wait() == 0, as_json.err.text

    assert "Traceback" not in plain.err.text + as_json.err.text
    verdict = await plain.out.wait_for(r"^(OK|FAILED|NOT FINISHED):")
    assert verdict.startswith("OK: every corrupted run recovered exactly once")
    # Part 2: a training script under ``run``, resumed from its newest
    # checkpoint with every later step run once on the new run.
    assert plain.out.lines[-1].startswith("OK: resumed from tinker://"), plain.out.text
    rows = [line.split() for line in plain.out.lines if line.startswith("demo-")]
    recovered = {row[0] for row in rows if "recovered" in row}
    healthy = {row[0] for row in rows if "healthy" in row}
    assert recovered
    assert healthy
    assert len(recovered | healthy) == 4
    for row in rows:
        restores = row[-3]
        assert restores == ("1" if row[0] in recovered else "0"), row

    # The JSON run corrupted the same runs (the seed decides), and recovered each.
    events = events_of(as_json.out.lines)
    detected = {e["run_id"] for e in events if e["name"] == "detected"}
    completed = [e["run_id"] for e in events if e["name"] == "completed"]
    assert detected == recovered
    assert sorted(completed) == sorted(recovered)
    assert "OK: every corrupted run recovered exactly once" in as_json.err.text


# -- watch ---------------------------------------------------------------------


def watch_argv(url: str, *args: str) -> list[str]:
    """``watch`` against ``url``, polling fast, ending by itself if forgotten."""
    return cli(
        "watch", *args, "--base-url", url, "--poll-interval", "0.2",
        "--backoff", "0.1", "--duration", SAFETY,
    )  # fmt: skip


async def test_watch_json_reports_a_run_corrupted_midway():
    """watch --json prints a run's detection and recovery events, and only events."""
    fake = FakeTinker(api_key=KEY)
    fake.add_run("run-1", checkpoints=["ckpt-0001", "ckpt-0002"])
    fake.add_run("run-2")
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            argv = watch_argv(url, "run-1", "run-2", "--json", "-v", "--jitter", "0")
            async with spawn(argv, environ(TINKER_API_KEY=KEY)) as watch:
                await watch.err.wait_for(r"run-1: poll #2 ok")
                fake.corrupt("run-1")
                await watch.out.wait_for(r'"name": "completed"')
                (restore,) = fake.restore_log
                # The recovered run is followed: wait for its first poll.
                await watch.err.wait_for(rf"{re.escape(restore.model_id)}: poll #1 ok")
                watch.process.send_signal(signal.SIGINT)
                assert await watch.wait() == 0, watch.err.text
            nursery.cancel_scope.cancel()

    events = [e for e in events_of(watch.out.lines) if e["name"] != "polled"]
    assert [e["name"] for e in events] == [
        "detected",
        "started",
        "checkpoint_selected",
        "client_created",
        "completed",
    ]
    assert {e["run_id"] for e in events} == {"run-1"}
    path = "tinker://run-1/weights/ckpt-0002"
    assert events[0]["metadata"]["checkpoint"] == path
    assert events[2]["metadata"]["checkpoint"] == path
    assert events[-1]["metadata"]["new_run_id"] == restore.model_id
    assert events[-1]["measurements"] == {"attempt": 1}
    assert fake.restores == {"run-1": 1}
    assert restore.tinker_path == path
    assert restore.optimizer
    assert "Traceback" not in watch.err.text
    assert re.search(
        r"run-1 +recovered → " + re.escape(restore.model_id), watch.err.text
    )
    assert "interrupted (Ctrl-C)" in watch.err.text
    assert KEY not in watch.out.text + watch.err.text


@pytest.mark.parametrize(
    ("signum", "reason"),
    [(signal.SIGINT, "interrupted (Ctrl-C)"), (signal.SIGTERM, "terminated (SIGTERM)")],
    ids=["SIGINT", "SIGTERM"],
)
async def test_signal_during_a_restore_interrupts_it_cleanly(signum, reason):
    """Ctrl-C or SIGTERM mid-restore: the summary says interrupted, exit 0."""
    fake = FakeTinker(future_delay=600)  # the restore never finishes by itself
    fake.add_run("run-1", corrupted=True)
    fake.add_run("run-2")
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            argv = watch_argv(url, "run-1", "run-2", "--timeout", "600")
            async with spawn(argv, environ(TINKER_API_KEY=KEY)) as watch:
                await watch.out.wait_for(r"run-2: watching, checkpoint ckpt-0002")
                await watch.out.wait_for(r"run-1: restoring tinker://run-1/")
                watch.process.send_signal(signum)
                code = await watch.wait()
            nursery.cancel_scope.cancel()

    assert code == 0, watch.out.text + watch.err.text
    assert watch.err.text == ""
    assert "run-1: recovery INTERRUPTED at attempt 1" in watch.out.text
    assert re.search(r"^run-1 +interrupted +", watch.out.text, re.MULTILINE)
    assert re.search(r"^run-2 +watching +", watch.out.text, re.MULTILINE)
    assert "exhausted" not in watch.out.text.lower()
    assert watch.out.lines[-1].startswith("stopped after")
    assert watch.out.lines[-1].endswith(reason)


async def test_watch_exhausted_run_exits_1():
    """A run that cannot be recovered ends watch with exit 1 once nothing is left."""
    fake = FakeTinker()
    fake.add_run("run-1", checkpoints=[], corrupted=True)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            async with spawn(
                watch_argv(url, "run-1"), environ(TINKER_API_KEY=KEY)
            ) as watch:
                code = await watch.wait()
            nursery.cancel_scope.cancel()

    assert code == 1, watch.err.text
    assert "run-1: EXHAUSTED after 1 attempt(s): NoCheckpointError" in watch.out.text
    assert watch.out.lines[-1].endswith("nothing left to watch")


async def test_watch_rejected_key_exits_2_without_showing_it():
    """A key the service rejects (401) ends watch at once with exit 2."""
    fake = FakeTinker(api_key=KEY)
    fake.add_run("run-1")
    wrong = "tml-wrong-and-secret"
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            async with spawn(
                watch_argv(url, "run-1"), environ(TINKER_API_KEY=wrong)
            ) as watch:
                code = await watch.wait()
            nursery.cancel_scope.cancel()

    assert code == 2
    assert "error: Tinker rejected the API key (HTTP 401)" in watch.err.text
    assert "wrong-and-secret" not in watch.out.text + watch.err.text


def test_bad_usage_exits_2_without_showing_the_key():
    """A malformed key, as the program runs: exit 2, a message, the key unseen."""
    key = "sk-hush-hush-1234"
    result = subprocess.run(
        cli("watch", "run-1"),
        capture_output=True,
        text=True,
        env=environ(TINKER_API_KEY=key),
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(
        "python -m trio_tinkex_recovery watch: error: TINKER_API_KEY: "
    )
    assert "malformed" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert "hush" not in result.stderr


# -- simulate ------------------------------------------------------------------


async def test_simulate_serves_runs_that_break_for_watch():
    """simulate corrupts its run; watch, pointed at it, recovers it and stops."""
    argv = cli(
        "simulate", "--port", "0", "--runs", "1", "--corrupt-every", "0.3",
        "--duration", SAFETY,
    )  # fmt: skip
    with trio.fail_after(TIMEOUT):
        async with spawn(argv, environ()) as sim:
            line = await sim.out.wait_for(r"^Tinker simulator on http://")
            url = re.search(r"(http://\S+)", line)[1]
            argv = watch_argv(url, "run-1", "--no-follow")
            async with spawn(argv, environ(TINKER_API_KEY=KEY)) as watch:
                assert await watch.wait() == 0, watch.err.text
            await sim.out.wait_for(r"restored tinker://run-1/weights/ckpt-0002 as ")
            sim.process.send_signal(signal.SIGINT)
            assert await sim.wait() == 0, sim.err.text

    assert re.search(r"^run-1 +recovered → \S+", watch.out.text, re.MULTILINE)
    assert watch.out.lines[-1].endswith("nothing left to watch")
    assert "corrupted run-1" in sim.out.text
    assert "restores: run-1 x1" in sim.out.text
    assert sim.out.lines[-1].endswith("interrupted (Ctrl-C)")
    assert sim.err.text == ""


# -- closed output ---------------------------------------------------------------


async def shell(script: str, *argv: str, env: dict[str, str]) -> tuple[int, str]:
    """Run ``script`` in bash with ``argv`` as ``"$@"``; its status and stderr."""
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            ["bash", "-c", script, "bash", *argv],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    return result.returncode, result.stderr.decode()


@pytest.mark.parametrize("command", ["watch", "simulate"])
async def test_closed_stdout_ends_quietly(command):
    """Started with stdout closed (>&-): exit 0 at once, nothing on stderr."""
    args = {
        "watch": ["watch", "run-1", "--base-url", "http://127.0.0.1:9"],
        "simulate": ["simulate", "--port", "0", "--duration", SAFETY],
    }[command]
    code, err = await shell(
        'exec "$@" >&-', *cli(*args), env=environ(TINKER_API_KEY=KEY)
    )
    assert (code, err) == (0, "")


async def test_reader_going_away_ends_watch_and_simulate_quietly():
    """`| head -1` closes the pipe: both stop at their next line, no traceback."""
    fake = FakeTinker()
    fake.add_run("run-1")
    pipe = 'set -o pipefail; "$@" | head -1 >/dev/null'
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            # watch --json writes a line per poll; simulate one per corruption.
            watch = watch_argv(url, "run-1", "--json")
            simulate = cli("simulate", "--port", "0", "--corrupt-every", "0.2")
            watched = await shell(pipe, *watch, env=environ(TINKER_API_KEY=KEY))
            simulated = await shell(pipe, *simulate, env=environ())
            nursery.cancel_scope.cancel()

    for code, err in (watched, simulated):
        assert code == 0, err
        assert "Traceback" not in err
        assert "Broken" not in err
    assert watched[1].splitlines()[-1].endswith("the output was closed")
