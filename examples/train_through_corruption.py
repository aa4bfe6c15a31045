"""A Trio training loop that keeps going when its Tinker run is corrupted.

The loop and the monitor run in one program.  ``monitor.training(client)``
watches the run and carries the loop through each recovery:

- ``step.client`` is the client to use; a recovery replaces it;
- a detection cancels the step in flight (no request reaches the corrupted
  model after it), and the next step waits for the restored model;
- the loop resumes at the restored checkpoint's step + 1 (its
  ``user_metadata["step"]``): the steps after that checkpoint are done once
  more on the new model, and no step is skipped.

With no arguments it trains 20 steps on the embedded simulator (on a
simulated clock: no time, no network) and corrupts the run once, when
``--seed`` says; ``--start tinker://RUN/weights/NAME`` trains on Tinker
(``TINKER_API_KEY``) from one of your checkpoints.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from typing import TYPE_CHECKING, Any

import attrs
import trio
import trio.testing

from trio_tinkex_recovery import Config, Policy, open_monitor, open_service_client
from trio_tinkex_recovery.testing import FakeTinker

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from trio_tinkex_recovery import ServiceClient

#: The checkpoint the simulated training starts from (it holds step 0).
SIMULATED_START = "tinker://pretrained/weights/step-000000"


def learning_rate(step: int, steps: int) -> float:
    """A linear decay: every step has its own rate, so a step is recognisable."""
    return 1e-4 * (1 - (step - 1) / steps)


def batch(step: int) -> list[dict[str, Any]]:
    """Step ``step``'s examples, in the SDK's JSON ``Datum`` form."""
    examples = []
    for row in range(4):
        tokens = [1 + (step * 7 + row * 3 + i) % 1000 for i in range(9)]
        target = {"data": tokens[1:], "dtype": "int64", "shape": [len(tokens) - 1]}
        examples.append(
            {
                "model_input": {
                    "chunks": [{"type": "encoded_text", "tokens": tokens[:-1]}]
                },
                "loss_fn_inputs": {"target_tokens": target},
            }
        )
    return examples


@attrs.frozen
class Result:
    """How the training went: the last step, and each model's share."""

    last_step: int
    #: (model id, first step, last step) for each model trained, in order.
    models: tuple[tuple[str, int, int], ...]
    #: The step each recovery resumed at.
    resumed_at: tuple[int, ...]


async def train(
    service: ServiceClient,
    *,
    start: str,
    steps: int,
    save_every: int,
    poll_interval: float = 30.0,
    report: Callable[[str], None] = print,
) -> Result:
    """Train steps 1..``steps`` from checkpoint ``start``, through corruption."""
    client = await service.create_training_client_from_state_with_optimizer(start)
    policy = Policy(enabled=True, poll_interval=poll_interval)
    models: list[list[Any]] = [[client.model_id, 1, 0]]
    async with (
        open_monitor(policy=policy, service=service) as monitor,
        monitor.training(client) as training,
    ):
        while training.next_step <= steps:
            async with training.step() as step:
                number, model = step.number, step.client
                await model.forward_backward(batch(number), "cross_entropy")
                await model.optim_step(learning_rate=learning_rate(number, steps))
                if number % save_every == 0 or number == steps:
                    await model.save_state(
                        f"step-{number:06d}", user_metadata={"step": str(number)}
                    )
            if len(training.history) == len(models):  # restored before this step
                record = training.history[-1]
                report(
                    f"{record.old_run_id} was corrupted; restored {record.checkpoint} "
                    f"with its optimizer state; resumed at step {record.resumed_at}"
                )
                models.append([record.new_run_id, record.resumed_at, 0])
            if training.next_step == number + 1:  # the step completed
                models[-1][2] = number
                report(
                    f"[{trio.current_time():6.1f}s] step {number} on {model.model_id}"
                )
    return Result(
        last_step=models[-1][2],
        models=tuple((m, first, last) for m, first, last in models),
        resumed_at=tuple(r.resumed_at for r in training.history),
    )


def simulator(seed: int) -> FakeTinker:
    """A Tinker simulator holding the checkpoint the demo starts from."""
    fake = FakeTinker(seed=seed, future_try_again=0, future_delay=1.0, long_poll=5.0)
    fake.add_run("pretrained", checkpoints=[])
    fake.add_checkpoint("pretrained", "step-000000", metadata={"step": "0"})
    return fake


async def run_on_simulator(
    *,
    seed: int = 0,
    steps: int = 20,
    save_every: int = 5,
    fake: FakeTinker | None = None,
    report: Callable[[str], None] = print,
) -> Result:
    """`train` on the simulator (under a ``MockClock``), corrupted once."""
    fake = fake or simulator(seed)
    corrupt_at = random.Random(seed).uniform(1.0, 1.5 * steps)

    async def corrupt_later() -> None:
        await trio.sleep(corrupt_at)
        model_id = next(
            r.model_id for r in fake.restore_log if r.tinker_path == SIMULATED_START
        )
        fake.corrupt(model_id)
        report(f"[{corrupt_at:6.1f}s] (the simulator corrupts {model_id})")

    config = Config(api_key="tml-simulated-key", base_url="https://tinker.simulated")
    async with (
        open_service_client(config, transport=fake.transport()) as service,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(corrupt_later)
        result = await train(
            service,
            start=SIMULATED_START,
            steps=steps,
            save_every=save_every,
            poll_interval=2.0,
            report=report,
        )
        nursery.cancel_scope.cancel()
    return result


def account(result: Result) -> str:
    """A summary of the training, for the end of the report."""
    lines = [f"done: step {result.last_step} reached on {len(result.models)} model(s)"]
    lines += [f"  {m}: steps {first}-{last}" for m, first, last in result.models]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo on the simulator, or train on Tinker with ``--start``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="steps to train")
    parser.add_argument("--save-every", type=int, default=5, help="steps per save")
    parser.add_argument("--seed", type=int, default=0, help="simulator: when to break")
    parser.add_argument("--start", help="Tinker: the checkpoint to start from")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.save_every < 1:
        parser.error("--steps and --save-every must be at least 1")
    logging.basicConfig(level=logging.ERROR)  # the account tells what happens
    if args.start is None:
        result = trio.run(
            lambda: run_on_simulator(
                seed=args.seed, steps=args.steps, save_every=args.save_every
            ),
            clock=trio.testing.MockClock(autojump_threshold=0),
        )
    else:
        try:
            config = Config.from_env()
        except ValueError as exc:
            parser.error(str(exc))

        async def on_tinker() -> Result:
            async with open_service_client(config) as service:
                return await train(
                    service,
                    start=args.start,
                    steps=args.steps,
                    save_every=args.save_every,
                )

        result = trio.run(on_tinker)
    print(account(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
