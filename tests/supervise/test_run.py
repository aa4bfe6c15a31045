"""``run -- COMMAND``: the supervisor and its child as real processes.

The simulator is served on loopback in the test's process; the
supervisor is the CLI in a subprocess, and its child a real training
script (``testing/_trainer.py``, on the native client).  The verdicts come from
the child's own log (its stdout, which the supervisor leaves untouched)
and from the simulator's records, never from the supervisor's report.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import TYPE_CHECKING

import pytest
import trio

from trio_tinkex_recovery.testing import FakeTinker, serve_fake_tinker

from ..test_cli import KEY, cli, environ, spawn

if TYPE_CHECKING:
    from pathlib import Path

BASE = "Qwen/Qwen3-8B"
#: One test's guard.
TIMEOUT = 40
#: Options that keep a test short: quick polls, quick retries.
FAST = ("--poll-interval", "0.1", "--backoff", "0.05", "--jitter", "0", "--json")


def new_fake() -> FakeTinker:
    """A simulator with no run (the child creates its own), answering
    futures at once (a step takes milliseconds, paced by the tests)."""
    return FakeTinker(api_key=KEY, future_try_again=0)


def run_argv(url: str, state: Path, *options: str, command: list[str]) -> list[str]:
    """``run`` with a state file, the options, then the command.

    The simulator's ``url`` goes in ``TINKER_BASE_URL`` (`trainer_env`), for
    the supervisor and its child alike.
    """
    return cli(
        "run",
        "--state",
        str(state),
        *FAST,
        *options,
        "--",
        *command,
    )


def trainer(steps: int, every: int) -> list[str]:
    """The training script's command line."""
    module = "trio_tinkex_recovery.testing._trainer"
    return [sys.executable, "-m", module, BASE, str(steps), str(every)]


def steps_of(lines: list[str]) -> list[tuple[int, str]]:
    """``(step, model_id)`` of each step the child logged, in order."""
    steps = []
    for line in lines:
        if line.startswith("step "):
            _, step, model_id = line.split()
            steps.append((int(step), model_id))
    return steps


def reports(lines: list[str]) -> list[dict]:
    """The supervisor's JSON lines (stderr)."""
    return [json.loads(line) for line in lines if line.startswith("{")]


def trainer_env(url: str, **values: str) -> dict[str, str]:
    """The environment of a supervisor whose child trains on the simulator."""
    return environ(TINKER_API_KEY=KEY, TINKER_BASE_URL=url, **values)


async def test_a_corrupted_child_resumes_from_its_newest_checkpoint(tmp_path):
    """Corrupted mid-training: restarted once, from the newest training
    checkpoint (its step in TTR_RESUME_STEP), every later step run once on
    the new run; the simulator saw one restore of that checkpoint."""
    fake = new_fake()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            argv = run_argv(url, tmp_path / "job.json", command=trainer(30, 5))
            env = trainer_env(url, TRAINER_STEP_DELAY="0.03", TINKER_TAGS="mine")
            async with spawn(argv, env) as job:
                await job.out.wait_until(lambda: len(steps_of(job.out.lines)) >= 12)
                first_run = steps_of(job.out.lines)[-1][1]
                fake.corrupt(first_run)
                code = await job.wait()
            nursery.cancel_scope.cancel()

    assert code == 0, job.err.text
    steps = steps_of(job.out.lines)
    runs = list(dict.fromkeys(model for _, model in steps))
    assert len(runs) == 2, steps
    assert runs[0] == first_run
    old = [step for step, model in steps if model == runs[0]]
    new = [step for step, model in steps if model == runs[1]]
    assert old == list(range(len(old)))
    # Resumed from the newest checkpoint saved before the corruption.
    saved = {c.tinker_path for c in fake.checkpoints(first_run)}
    newest = max(int(p.rsplit("-", 1)[1]) for p in saved if "/weights/step-" in p)
    assert new == list(range(newest + 1, 30))
    restores = [r for r in fake.restore_log if r.source_run_id == first_run]
    assert [(r.model_id, r.tinker_path) for r in restores] == [
        (runs[1], f"tinker://{first_run}/weights/step-{newest:04d}")
    ]
    events = reports(job.err.lines)
    restarting = [e for e in events if e["event"] == "restarting"]
    assert len(restarting) == 1
    assert restarting[0]["step"] == newest


async def test_a_new_run_corrupted_before_its_first_save_restarts_again(tmp_path):
    """The restarted run is corrupted before it saved anything: it is
    restarted from the checkpoint it was itself resumed from."""
    fake = new_fake()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            argv = run_argv(url, tmp_path / "job.json", command=trainer(14, 5))
            env = trainer_env(url, TRAINER_STEP_DELAY="0.05")
            async with spawn(argv, env) as job:

                def models() -> list[str]:
                    steps = steps_of(job.out.lines)
                    return list(dict.fromkeys(model for _, model in steps))

                await job.out.wait_until(lambda: len(steps_of(job.out.lines)) >= 7)
                fake.corrupt(models()[0])
                await job.out.wait_until(lambda: len(models()) == 2)
                fake.corrupt(models()[1])  # at step 5: it saves after step 9
                code = await job.wait()
            nursery.cancel_scope.cancel()
    assert code == 0, job.err.text
    first, second, third = models()
    resumed = f"tinker://{first}/weights/step-0004"
    by_model = {r.model_id: r.tinker_path for r in fake.restore_log}
    assert by_model == {second: resumed, third: resumed}
    steps = steps_of(job.out.lines)
    assert [s for s, m in steps if m == third] == list(range(5, 14))


async def test_a_start_that_dies_before_announcing_falls_back_older(tmp_path):
    """The restart from the newest checkpoint dies before announcing a run:
    that is attempt 1; attempt 2 resumes from the next older checkpoint."""
    fake = new_fake()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            argv = run_argv(url, tmp_path / "job.json", command=trainer(12, 3))
            # Paced so that the corruption lands before step-0011 is saved.
            env = trainer_env(
                url, TRAINER_STEP_DELAY="0.15", TRAINER_BROKEN_RESUME="step-0008"
            )
            async with spawn(argv, env) as job:
                await job.out.wait_until(lambda: len(steps_of(job.out.lines)) >= 10)
                fake.corrupt(steps_of(job.out.lines)[-1][1])
                code = await job.wait()
            nursery.cancel_scope.cancel()
    assert code == 0, job.err.text
    steps = steps_of(job.out.lines)
    runs = list(dict.fromkeys(model for _, model in steps))
    assert len(runs) == 2
    assert [s for s, m in steps if m == runs[1]] == list(range(6, 12))
    events = reports(job.err.lines)
    failed = [e for e in events if e["event"] == "failed"]
    assert [e["attempt"] for e in failed] == [1]
    restarting = [e["resume_path"] for e in events if e["event"] == "restarting"]
    assert [p.rsplit("/", 1)[1] for p in restarting] == ["step-0008", "step-0005"]


async def test_discover_finds_a_run_nobody_announced(tmp_path):
    """--discover: the child announces nothing; its run (new since it
    started) is found by listing runs, and resumed when corrupted."""
    fake = new_fake()
    fake.add_run("someone-elses")  # there before the child: not its run
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            argv = run_argv(
                url, tmp_path / "job.json", "--discover", command=trainer(14, 3)
            )
            env = trainer_env(url, TRAINER_STEP_DELAY="0.05", TRAINER_ANNOUNCE="0")
            async with spawn(argv, env) as job:
                await job.err.wait_for(r'"event": "announced"')
                await job.out.wait_until(lambda: len(steps_of(job.out.lines)) >= 7)
                first = steps_of(job.out.lines)[-1][1]
                fake.corrupt(first)
                code = await job.wait()
            nursery.cancel_scope.cancel()
    assert code == 0, job.err.text
    runs = list(dict.fromkeys(model for _, model in steps_of(job.out.lines)))
    assert len(runs) == 2
    assert [r.source_run_id for r in fake.restore_log] == [first]
    assert fake.restore_count("someone-elses") == 0


async def test_signal_is_forwarded_and_nothing_restarts(tmp_path):
    """SIGTERM to the supervisor reaches the child; the supervisor exits
    with the child's status (128 + 15), and no restart follows."""
    fake = new_fake()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            argv = run_argv(url, tmp_path / "job.json", command=trainer(10_000, 5))
            env = trainer_env(url, TRAINER_STEP_DELAY="0.02")
            async with spawn(argv, env) as job:
                await job.out.wait_until(lambda: len(steps_of(job.out.lines)) >= 3)
                job.process.send_signal(signal.SIGTERM)
                code = await job.wait()
            nursery.cancel_scope.cancel()
    assert code == 128 + signal.SIGTERM, job.err.text
    runs = {model for _, model in steps_of(job.out.lines)}
    assert len(runs) == 1
    assert fake.restore_log == []
    assert not [e for e in reports(job.err.lines) if e["event"] == "started"][1:]


async def test_error_exit_ends_the_job_with_the_childs_status(tmp_path):
    """A healthy run's child exiting 3: no restart by default, exit 3; with
    --restart-on-error 1 it is restarted once (TTR_RESTART_REASON=error)."""
    script = (
        "import os, sys\n"
        "print('start', os.environ['TTR_RESTART_COUNT'],"
        " os.environ.get('TTR_RESTART_REASON'), flush=True)\n"
        "sys.exit(3)\n"
    )
    command = [sys.executable, "-c", script]
    fake = new_fake()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            argv = run_argv(url, tmp_path / "a.json", command=command)
            async with spawn(
                argv,
                trainer_env(
                    url,
                ),
            ) as plain:
                assert await plain.wait() == 3, plain.err.text
            argv = run_argv(
                url, tmp_path / "b.json", "--restart-on-error", "1", command=command
            )
            async with spawn(
                argv,
                trainer_env(
                    url,
                ),
            ) as again:
                assert await again.wait() == 3, again.err.text
            nursery.cancel_scope.cancel()
    assert plain.out.lines == ["start 0 None"]
    assert again.out.lines == ["start 0 None", "start 1 error"]


async def test_restarts_used_up_leave_the_child_stopped(tmp_path):
    """A child whose every run is corrupted at once: --max-restarts 2, then
    exhausted (exit 75); three starts in all, and no fourth."""
    fake = new_fake()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            argv = run_argv(
                url,
                tmp_path / "job.json",
                "--max-restarts",
                "2",
                command=trainer(10_000, 2),
            )
            env = trainer_env(url, TRAINER_STEP_DELAY="0.02")
            async with spawn(argv, env) as job:

                async def corrupt_each_run() -> None:
                    # A run is corrupted at an even step whose previous step
                    # (a save) it ran too: it has a checkpoint by then.
                    seen: set[str] = set()

                    def ready() -> list[str]:
                        by_model: dict[str, list[int]] = {}
                        for step, model in steps_of(job.out.lines):
                            by_model.setdefault(model, []).append(step)
                        return [
                            model
                            for model, steps in by_model.items()
                            if model not in seen
                            and len(steps) >= 2
                            and steps[-1] % 2 == 0
                        ]

                    while True:
                        try:
                            await job.out.wait_until(lambda: bool(ready()))
                        except AssertionError:
                            return  # the supervisor ended
                        for model in ready():
                            seen.add(model)
                            fake.corrupt(model)

                nursery.start_soon(corrupt_each_run)
                code = await job.wait()
            nursery.cancel_scope.cancel()
    assert code == 75, job.err.text
    runs = list(dict.fromkeys(model for _, model in steps_of(job.out.lines)))
    assert len(runs) == 3
    started = [e for e in reports(job.err.lines) if e["event"] == "started"]
    assert len(started) == 3


COOKBOOK_CHILD = """
import json, os, sys, time
log = os.path.join(sys.argv[1], "checkpoints.jsonl")
count = os.environ["TTR_RESTART_COUNT"]
print("start", count, os.environ.get("TTR_RESUME_PATH"),
      os.environ.get("TTR_RESUME_STEP"), os.environ.get("TTR_RESTART_REASON"),
      flush=True)
run, batch = ("cook-1", 10) if count == "0" else ("cook-2", 20)
with open(log, "a") as file:
    record = {"name": f"{batch:06d}", "batch": batch,
              "state_path": f"tinker://{run}/weights/{batch:06d}",
              "sampler_path": f"tinker://{run}/sampler_weights/{batch:06d}"}
    file.write(json.dumps(record) + "\\n")
if count == "0":
    time.sleep(60)
"""


async def test_a_cookbook_script_is_found_by_its_log_and_resumed(tmp_path):
    """--log-path: the run comes from checkpoints.jsonl; corrupted, the script
    is restarted with the record's state_path and its batch as the step."""
    fake = new_fake()
    fake.add_run("cook-1", checkpoints=["000010"])
    fake.add_run("cook-2", checkpoints=["000020"])
    logs = tmp_path / "logs"
    logs.mkdir()
    command = [sys.executable, "-c", COOKBOOK_CHILD, str(logs)]
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            argv = run_argv(
                url, tmp_path / "job.json", "--log-path", str(logs), command=command
            )
            async with spawn(argv, trainer_env(url)) as job:
                await job.err.wait_for(r'"event": "announced"')
                fake.corrupt("cook-1")
                code = await job.wait()
            nursery.cancel_scope.cancel()
    assert code == 0, job.err.text
    assert job.out.lines == [
        "start 0 None None None",
        "start 1 tinker://cook-1/weights/000010 10 corrupted",
    ]
    warnings = [e for e in reports(job.err.lines) if e["event"] == "warning"]
    assert "behavior_if_log_dir_exists=resume" in warnings[0]["message"]


async def test_a_supervisor_killed_and_started_again_keeps_its_job(tmp_path):
    """SIGKILL of the supervisor after a restart: its child dies with it; a
    supervisor started again on the same state starts the command from the
    last resume point, with the restart count kept, never two at once."""
    fake = new_fake()
    state = tmp_path / "job.json"
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            argv = run_argv(url, state, command=trainer(10_000, 3))
            env = trainer_env(url, TRAINER_STEP_DELAY="0.02")

            def models() -> list[str]:
                steps = steps_of(first.out.lines + second.out.lines)
                return list(dict.fromkeys(model for _, model in steps))

            async with spawn(argv, env) as first:
                second = first  # until it exists
                await first.out.wait_until(lambda: len(steps_of(first.out.lines)) >= 5)
                fake.corrupt(models()[0])
                await first.out.wait_until(lambda: len(models()) == 2)
                await first.out.wait_until(
                    lambda: len(fake.training_steps(models()[1])) >= 4
                )
                first.process.kill()
                assert await first.wait() == -signal.SIGKILL
            record = json.loads(state.read_text())
            assert record["restart_count"] == 1
            resume = record["resume"]["path"]

            async with spawn(argv, env) as second:
                await second.out.wait_until(
                    lambda: len(steps_of(second.out.lines)) >= 2
                )
                second.process.send_signal(signal.SIGTERM)
                assert await second.wait() == 128 + signal.SIGTERM, second.err.text
            nursery.cancel_scope.cancel()

    first_run, restarted, again = models()
    # The third start restored the same resume point: no second restart.
    by_model = {r.model_id: r for r in fake.restore_log}
    assert by_model[restarted].tinker_path == resume
    assert by_model[again].tinker_path == resume
    assert json.loads(state.read_text())["restart_count"] == 1
    started = [e for e in reports(second.err.lines) if e["event"] == "started"]
    assert [e["restarts"] for e in started] == [1]
    # Never two children training: the killed one's last step came before
    # the next one's first.
    assert max(s.time for s in fake.training_steps(restarted)) < min(
        s.time for s in fake.training_steps(again)
    )
    assert not [s for s in fake.training_steps(first_run) if s.time is None]


STUBBORN = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""


async def test_a_second_ctrl_c_kills_a_child_that_ignores_the_first(tmp_path):
    """SIGINT is forwarded; a child that ignores it is killed by the second
    one (SIGKILL to its group): exit 128 + 9."""
    fake = new_fake()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            command = [sys.executable, "-c", STUBBORN]
            argv = run_argv(url, tmp_path / "job.json", command=command)
            async with spawn(argv, trainer_env(url)) as job:
                await job.out.wait_for("^ready$")
                job.process.send_signal(signal.SIGINT)
                await job.err.wait_for('"signal": "SIGINT"')
                job.process.send_signal(signal.SIGINT)
                code = await job.wait()
            nursery.cancel_scope.cancel()
    assert code == 128 + signal.SIGKILL, job.err.text
    forwarded = [
        e["signal"] for e in reports(job.err.lines) if e["event"] == "forwarded"
    ]
    assert forwarded == ["SIGINT", "SIGKILL"]


async def test_a_stalled_child_is_restarted_the_corruption_way(tmp_path):
    """--stall-timeout with --restart-on-stall: a child that hangs after step 7
    is stopped and started again from its newest checkpoint, told why
    (TTR_RESTART_REASON=stalled), and trains to the end on its new run."""
    fake = new_fake()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            options = ("--stall-timeout", "1", "--restart-on-stall", "--grace", "1")
            argv = run_argv(
                url, tmp_path / "job.json", *options, command=trainer(20, 5)
            )
            env = trainer_env(url, TRAINER_STALL_AFTER="7", TRAINER_STEP_DELAY="0.02")
            async with spawn(argv, env) as job:
                code = await job.wait()
            nursery.cancel_scope.cancel()

    assert code == 0, job.err.text
    steps = steps_of(job.out.lines)
    runs = list(dict.fromkeys(model for _, model in steps))
    assert len(runs) == 2, steps
    assert [s for s, m in steps if m == runs[0]] == list(range(8))
    assert [s for s, m in steps if m == runs[1]] == list(range(5, 20))
    resumed = [line for line in job.out.lines if line.startswith("resumed ")]
    assert resumed == [f"resumed stalled tinker://{runs[0]}/weights/step-0004"]
    restores = [r for r in fake.restore_log if r.source_run_id == runs[0]]
    assert len(restores) == 1


def test_restart_on_stall_needs_a_stall_timeout():
    """--restart-on-stall alone is a usage error that names what it needs."""
    from trio_tinkex_recovery.cli import _run
    from trio_tinkex_recovery.cli._runtime import UsageError

    with pytest.raises(UsageError, match="needs --stall-timeout"):
        _run.parse(["--restart-on-stall", "--", "true"])
