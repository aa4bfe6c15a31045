"""The training-loop example goes on through corruption, by the simulator's records.

``examples/`` is not a package: the example is loaded from its path.  Every
assertion reads what the simulator recorded (the requests each model got,
the restores it performed), never the example's own account.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLE = (
    pathlib.Path(__file__).parent.parent / "examples" / "train_through_corruption.py"
)
STEPS = 24
EVERY = 5


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("train_through_corruption", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def failed(fake, step):
    """Whether the simulator failed a recorded request (its future's result)."""
    return "error" in fake.find_future(step.request_id).result


def steps_done(example, fake, model_id):
    """The steps a model completed: its optimizer steps that succeeded.

    The schedule gives every step its own learning rate, so an optimizer
    step's rate tells which step it was.
    """
    step_of = {example.learning_rate(s, STEPS): s for s in range(1, STEPS + 1)}
    return [
        step_of[s.learning_rate]
        for s in fake.training_steps(model_id)
        if s.kind == "optim_step" and not failed(fake, s)
    ]


@pytest.mark.parametrize("seed", range(8))
async def test_training_resumes_at_the_checkpoint_step(example, seed, autojump_clock):
    """After a corruption, the new model goes on from the checkpoint's step + 1."""
    fake = example.simulator(seed)
    lines: list[str] = []
    result = await example.run_on_simulator(
        seed=seed, steps=STEPS, save_every=EVERY, fake=fake, report=lines.append
    )
    first, recovery = fake.restore_log
    old, new = first.model_id, recovery.model_id
    (start,) = fake.checkpoints("pretrained")
    assert recovery.optimizer is True
    # The newest checkpoint the old model could be restored from: its own
    # newest save, or the one it started from when it saved none yet.
    own = fake.checkpoints(old)
    newest = own[-1] if own else start
    assert recovery.tinker_path == newest.tinker_path
    saved = int(newest.user_metadata["step"])
    # The new model: every step from saved + 1 to the end, in order, with
    # its checkpoints.
    got = [(s.kind, s.name) for s in fake.training_steps(new)]
    expected = []
    for step in range(saved + 1, STEPS + 1):
        expected += [("forward_backward", None), ("optim_step", None)]
        if step % EVERY == 0 or step == STEPS:
            expected.append(("save_weights", f"step-{step:06d}"))
    assert got == expected
    on_new = steps_done(example, fake, new)
    assert on_new == list(range(saved + 1, STEPS + 1))
    # The old model did steps 1..n once each; the steps after its last
    # checkpoint are the only ones done twice, each exactly once more.
    on_old = steps_done(example, fake, old)
    assert on_old == list(range(1, len(on_old) + 1))
    assert saved <= len(on_old)
    counts = collections.Counter(on_old + on_new)
    assert set(counts) == set(range(1, STEPS + 1))
    twice = {s for s, n in counts.items() if n > 1}
    assert twice == set(range(saved + 1, len(on_old) + 1))
    assert max(counts.values()) <= 2
    # Nothing reached the old model once the new one existed.
    assert [s for s in fake.training_steps(old) if s.superseded_by] == []
    # The example's result agrees with the records.
    assert result.resumed_at == (saved + 1,)
    assert result.last_step == STEPS
    assert [m for m, _, _ in result.models] == [old, new]


def test_the_example_runs_with_no_arguments():
    """As a script it trains on the simulator and prints a readable account."""
    root = EXAMPLE.parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("TINKER_API_KEY", None)
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert any("(the simulator corrupts" in line for line in lines)
    assert "done: step 20 reached on 2 model(s)" in lines
    assert any("with its optimizer state; resumed at step" in line for line in lines)
