"""The CLI's state file: watch again after a stop, status, unwatch, refusals.

Each test runs the CLI as a user does (subprocesses against the simulator
on loopback) with its own state file.
"""

from __future__ import annotations

import hashlib
import json
import signal

import trio

from trio_tinkex_recovery.testing import FakeTinker, serve_fake_tinker

from .test_cli import KEY, TIMEOUT, cli, environ, spawn, watch_argv


async def run_cli(*args: str) -> tuple[int, str, str]:
    """Run a short CLI command to its end: exit code, stdout, stderr."""
    async with spawn(cli(*args), environ(TINKER_API_KEY=KEY)) as command:
        code = await command.wait()
    return code, command.out.text, command.err.text


async def test_a_second_watch_resumes_the_stored_runs_without_a_second_restore(
    tmp_path,
):
    """watch RUN --state F recovers; stopped and started with no run ids, it
    watches the stored runs (the successor, not the old run) and restores
    nothing again; status shows the recovery and its history."""
    state = str(tmp_path / "state.db")
    fake = FakeTinker(api_key=KEY)
    fake.add_run("run-1", checkpoints=["ckpt-0001"])
    fake.add_run("run-2")
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            argv = watch_argv(url, "run-1", "run-2", "--json", "--state", state)
            async with spawn(argv, environ(TINKER_API_KEY=KEY)) as first:
                await first.out.wait_for(r'"name": "polled".*"run-1"')
                fake.corrupt("run-1")
                await first.out.wait_for(r'"name": "completed"')
                (restore,) = fake.restore_log
                await first.out.wait_for(rf'"name": "polled".*"{restore.model_id}"')
                first.process.send_signal(signal.SIGINT)
                assert await first.wait() == 0, first.err.text

            # Still corrupted on the server: only the journal prevents a re-restore.
            argv = watch_argv(url, "--json", "--state", state)
            async with spawn(argv, environ(TINKER_API_KEY=KEY)) as second:
                await second.out.wait_for(rf'"name": "polled".*"{restore.model_id}"')
                await second.out.wait_for(r'"name": "polled".*"run-2"')
                second.process.send_signal(signal.SIGINT)
                assert await second.wait() == 0, second.err.text
            assert f"3 run(s) came from {state}" in second.err.text
            nursery.cancel_scope.cancel()
    assert fake.restores == {"run-1": 1}
    polled = [
        json.loads(line)["run_id"]
        for line in second.out.lines
        if '"name": "polled"' in line
    ]
    assert "run-1" not in polled

    code, out, _ = await run_cli("status", "--state", state, "--json")
    assert code == 0
    report = json.loads(out)
    runs = {r["run_id"]: r for r in report["runs"]}
    assert runs["run-1"]["recovery"]["phase"] == "done"
    assert runs["run-1"]["recovery"]["new_run_id"] == restore.model_id
    assert [h["phase"] for h in runs["run-1"]["history"]] == ["attempting", "done"]
    assert runs[restore.model_id]["watched"]
    assert report["restores_in_doubt"] == []

    code, out, _ = await run_cli("status", "--state", state)
    assert code == 0
    assert "run-1" in out
    assert f"-> {restore.model_id}" in out

    code, out, err = await run_cli("unwatch", "run-2", "nope", "--state", state)
    assert code == 0
    assert "unwatched 1 run(s)" in out
    assert "nope" in err
    code, out, _ = await run_cli("status", "--state", state, "--json")
    assert "run-2" not in {r["run_id"] for r in json.loads(out)["runs"]}


async def test_a_second_watcher_on_one_state_file_is_refused(tmp_path):
    """Two watchers never act on the same runs: the second exits 2 naming the file."""
    state = str(tmp_path / "state.db")
    fake = FakeTinker(api_key=KEY)
    fake.add_run("run-1")
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            argv = watch_argv(url, "run-1", "--json", "--state", state)
            async with spawn(argv, environ(TINKER_API_KEY=KEY)) as first:
                await first.out.wait_for(r'"name": "polled"')
                async with spawn(argv, environ(TINKER_API_KEY=KEY)) as second:
                    assert await second.wait() == 2
                first.process.send_signal(signal.SIGINT)
                assert await first.wait() == 0
            nursery.cancel_scope.cancel()
    assert f"state file {state} is in use by another watcher" in second.err.text
    assert "Traceback" not in second.err.text


async def test_a_corrupt_state_file_is_refused_untouched(tmp_path):
    """watch and status on a file that is not a state file: exit 2, file unchanged."""
    path = tmp_path / "state.db"
    path.write_bytes(b"\x00garbage" * 500)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with trio.fail_after(TIMEOUT):
        code, _, err = await run_cli(
            "watch", "run-1", "--state", str(path), "--base-url", "http://127.0.0.1:9"
        )
        status_code, _, status_err = await run_cli("status", "--state", str(path))
    assert (code, status_code) == (2, 2)
    for text in (err, status_err):
        assert f"state file {path} is not a trio-tinkex-recovery state file" in text
        assert "Traceback" not in text
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


async def test_watch_with_nothing_stored_says_so(tmp_path):
    """watch with no run id and an empty state file: exit 2, a clear message."""
    state = str(tmp_path / "empty.db")
    with trio.fail_after(TIMEOUT):
        code, _, err = await run_cli(
            "watch", "--state", state, "--base-url", "http://127.0.0.1:9"
        )
    assert code == 2
    assert f"the state file {state} holds no run" in err
