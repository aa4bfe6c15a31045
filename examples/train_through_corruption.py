"""A Trio training loop that keeps going when its Tinker run is corrupted.

The training loop and the monitor run side by side in one program.  The
loop trains step after step and saves a checkpoint every few steps, with the
step number in the checkpoint's metadata.  When the run is corrupted, the
monitor restores the newest checkpoint, optimizer state included, as a new
model; the loop stops using the old model, then goes on from the step after
the checkpoint's on the new one.  Three rules make that right:

1. **One place for the current client.**  The loop reads its client from a
   `CurrentClient` and nowhere else; ``on_recovery`` replaces the client and
   the next step together, in one synchronous call, so no task ever sees the
   new client with the old step, and the old client is never used again.
2. **Resume from the checkpoint's step.**  The next step is the restored
   checkpoint's ``user_metadata["step"]`` + 1, not the loop's own count:
   steps the old model did after that checkpoint are lost with it and are
   done again, once each; no step is skipped.
3. **Pause at a step boundary.**  A step runs on one client from start to
   end.  Before each request the loop asks `CurrentClient` whether its
   client is still good; once the monitor has detected corruption the step
   is abandoned (it will be redone from the checkpoint) and the loop waits
   for the new client before it starts the next one.

How the loop learns of corruption: from the monitor, whose ``detected``
event flags the client.  A failed request alone proves nothing (a transient
server error looks the same, and a corrupted model need not fail its
requests), so after a failure the loop waits for the monitor's verdict: a
poll of the run that began after the failure and found it healthy means
"try again"; a detection means "wait for the new client".

Run it with no arguments: it trains 20 steps against the embedded Tinker
simulator (in process, on a simulated clock, so it takes no time),
corrupts the run at a moment drawn from ``--seed`` and prints what happened::

    PYTHONPATH=. python examples/train_through_corruption.py [--seed 3]

Against Tinker, start from one of your training checkpoints (the native
client restores models; it does not create new ones)::

    TINKER_API_KEY=tml-... python examples/train_through_corruption.py \\
        --start tinker://RUN/weights/NAME [--base-url URL] [--steps 20]

To check the optimizer state came back: ``client.optimizer_restored`` on
the new `TrainingClient` (the result's ``optimizer_restored``), and on the
simulator ``fake.restore_of(model_id).optimizer``.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import sys
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import trio
import trio.testing

from trio_tinkex_recovery import (
    Checkpoint,
    Config,
    Policy,
    TelemetryEvent,
    TinkerAPIError,
    TrainingClient,
    open_monitor,
    open_service_client,
)
from trio_tinkex_recovery.testing import FakeTinker

if TYPE_CHECKING:
    from collections.abc import Awaitable, Sequence

    from trio_tinkex_recovery import Monitor, ServiceClient

#: The learning rate of the first step; it decays linearly to the last.
PEAK_LEARNING_RATE = 1e-4
#: How often one request may fail while the monitor finds the run healthy.
MAX_ATTEMPTS = 3

T = TypeVar("T")
Report = Callable[[str], None]


def learning_rate(step: int, steps: int) -> float:
    """The schedule: a different rate for every step, so a step is recognisable."""
    return PEAK_LEARNING_RATE * (1 - (step - 1) / steps)


def batch(step: int) -> list[dict[str, Any]]:
    """Step ``step``'s examples, in the SDK's JSON ``Datum`` form."""
    examples = []
    for row in range(4):
        tokens = [1 + (step * 7 + row * 3 + i) % 1000 for i in range(9)]
        examples.append(
            {
                "model_input": {
                    "chunks": [{"type": "encoded_text", "tokens": tokens[:-1]}]
                },
                "loss_fn_inputs": {
                    "target_tokens": {
                        "data": tokens[1:],
                        "dtype": "int64",
                        "shape": [len(tokens) - 1],
                    }
                },
            }
        )
    return examples


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


async def checkpoint_step(service: ServiceClient, checkpoint: Checkpoint) -> int | None:
    """The step a checkpoint holds, from its metadata (``None``: it does not say).

    The checkpoint a recovery hands over usually carries its metadata; a
    checkpoint known only by its path is looked up in its run's listing.
    """
    metadata = checkpoint.user_metadata
    if metadata is None:
        listed = await service.create_rest_client().list_checkpoints(checkpoint.run_id)
        found = [c for c in listed if c.tinker_path == checkpoint.tinker_path]
        metadata = found[0].user_metadata if found else None
    step = (metadata or {}).get("step")
    return int(step) if isinstance(step, str) and step.isdigit() else None


class Abandoned(Exception):
    """The step's client was replaced or found corrupted: drop the step."""


class CurrentClient:
    """The one place the training loop reads its training client from.

    Every change happens in a synchronous method (`replace`, `note`,
    `fail`), so it is atomic for the other tasks: whoever reads the client
    reads the step that goes with it.
    """

    def __init__(self, client: TrainingClient, *, next_step: int) -> None:
        self._client = client
        self._next_step = next_step
        #: The monitor detected that `_client` is corrupted.
        self._corrupted = False
        #: When the latest poll that found `_client` healthy began.
        self._healthy_since = -math.inf
        self._error: BaseException | None = None
        self._changed = trio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            await self._changed.wait()
        await trio.lowlevel.checkpoint()

    # -- the training loop's side ---------------------------------------------

    async def take(self) -> tuple[TrainingClient, int]:
        """At a step boundary: a client fit to train, and the step to do next.

        Raises:
            RuntimeError: The run could not be recovered.
        """
        await self._wait_until(lambda: self._error is not None or not self._corrupted)
        if self._error is not None:
            raise RuntimeError("the run could not be recovered") from self._error
        return self._client, self._next_step

    def check(self, client: TrainingClient) -> None:
        """Before each request: raise `Abandoned` unless ``client`` is still good."""
        if client is not self._client or self._corrupted:
            raise Abandoned(client.model_id)

    async def verdict(self, client: TrainingClient, *, failed_at: float) -> None:
        """After a failed request: return to try again, or raise `Abandoned`.

        Waits for a poll that began after the failure and found the run
        healthy, or for the client to be flagged or replaced.
        """
        await self._wait_until(
            lambda: (
                client is not self._client
                or self._corrupted
                or self._error is not None
                or self._healthy_since >= failed_at
            )
        )
        self.check(client)

    # -- the monitor's side -----------------------------------------------------

    def note(self, event: TelemetryEvent) -> None:
        """Take in a monitor event: a detection, or a healthy poll."""
        if event.run_id != self._client.model_id:
            return
        if event.name == "detected":
            self._corrupted = True
        elif event.name == "polled" and not event.metadata.get("corrupted"):
            began = event.time - event.measurements.get("duration", 0.0)
            self._healthy_since = max(self._healthy_since, began)
        else:
            return
        self._notify()

    def replace(self, old: object, new: TrainingClient, *, next_step: int) -> bool:
        """Swap in the recovered client and its next step, if ``old`` is current."""
        if old is not self._client:
            return False  # a recovery of a client the loop has left already
        self._client, self._next_step = new, next_step
        self._corrupted, self._healthy_since = False, -math.inf
        self._notify()
        return True

    def fail(self, error: BaseException) -> None:
        """The run cannot be recovered: `take` raises from now on."""
        self._error = error
        self._notify()


@attrs.frozen
class Segment:
    """The part of the training done on one model."""

    #: The model (training run) trained.
    model_id: str
    #: The checkpoint it was restored from.
    restored_from: str
    #: Whether its optimizer state was restored too.
    optimizer_restored: bool
    #: The first step done on it.
    first_step: int
    #: The last step completed on it (``first_step - 1``: none).
    last_step: int


@attrs.frozen
class TrainingResult:
    """What the training did, model by model."""

    #: One segment per model, in order.
    segments: tuple[Segment, ...]

    @property
    def last_step(self) -> int:
        """The last step completed."""
        return self.segments[-1].last_step

    @property
    def resumed_at(self) -> tuple[int, ...]:
        """The step each recovered model started at."""
        return tuple(s.first_step for s in self.segments[1:])


async def train(
    service: ServiceClient,
    *,
    start: str,
    steps: int,
    save_every: int,
    poll_interval: float = 30.0,
    report: Report = print,
) -> TrainingResult:
    """Train ``steps`` steps from checkpoint ``start``, through any corruption.

    Args:
        service: The connection to Tinker; recoveries restore through it too.
        start: The training checkpoint to start from; training goes on from
            the step in its metadata (0 if it has none).
        steps: The last step to do.
        save_every: Save a checkpoint after every this many steps.
        poll_interval: Seconds between two polls of the run by the monitor.
        report: Called with each line of the account.

    Returns:
        The segments trained.

    Raises:
        ExceptionGroup: The training stopped, with the reason inside (the
            loop runs in a nursery): a `RuntimeError` when a corruption could
            not be recovered, a `TinkerAPIError` when a request failed for
            good on a healthy run.
    """
    began = trio.current_time()

    def say(line: str) -> None:
        report(f"[{trio.current_time() - began:7.1f}s] {line}")

    first = await service.create_training_client_from_state_with_optimizer(start)
    current = CurrentClient(
        first, next_step=(await checkpoint_step(service, first.checkpoint) or 0) + 1
    )

    async def on_recovery(old: object, new: TrainingClient, ckpt: Checkpoint) -> None:
        try:
            step = await checkpoint_step(service, ckpt)
            if step is None:
                raise ValueError(f"{ckpt.tinker_path} has no step in its metadata")
        except Exception as exc:
            current.fail(exc)
            raise
        if current.replace(old, new, next_step=step + 1):
            say(
                f"restored {ckpt.tinker_path} (step {step}) as {new.model_id}; "
                f"optimizer state restored: {'yes' if new.optimizer_restored else 'no'}"
            )

    def on_failure(run_id: str, error: BaseException) -> None:
        current.fail(error)

    policy = Policy(
        enabled=True,
        poll_interval=poll_interval,
        jitter=0.0,  # one run: no polls to spread out
        restore_optimizer=True,
        on_recovery=on_recovery,
        on_failure=on_failure,
    )
    async with (
        open_monitor(policy=policy, service=service) as monitor,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(_follow_events, monitor, current, say)
        await monitor.monitor_run(first.model_id, metadata={"training_client": first})
        result = await _training_loop(
            current, steps=steps, save_every=save_every, say=say
        )
        nursery.cancel_scope.cancel()
    return result


async def _follow_events(
    monitor: Monitor,
    current: CurrentClient,
    say: Report,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Pass the monitor's events to `CurrentClient`; tell the account."""
    async with monitor.subscribe() as events:
        task_status.started()
        async for event in events:
            current.note(event)
            if event.name == "detected":
                say(f"the monitor found {event.run_id} corrupted; the loop pauses")


async def _training_loop(
    current: CurrentClient, *, steps: int, save_every: int, say: Report
) -> TrainingResult:
    segments: list[Segment] = []
    while True:
        client, first_step = await current.take()
        say(f"training on {client.model_id} from step {first_step}")
        done = first_step - 1
        try:
            # A model's run needs a checkpoint of its own to be restored from.
            await _save(current, client, done, say)
            for step in range(first_step, steps + 1):
                fb = partial(client.forward_backward, batch(step), "cross_entropy")
                await _request(current, client, fb, say)
                rate = learning_rate(step, steps)
                optim = partial(client.optim_step, learning_rate=rate)
                await _request(current, client, optim, say)
                done = step
                if step % save_every == 0 or step == steps:
                    await _save(current, client, step, say)
        except Abandoned:
            say(f"step {done + 1} abandoned on {client.model_id}")
        segments.append(
            Segment(
                model_id=client.model_id,
                restored_from=client.checkpoint.tinker_path,
                optimizer_restored=client.optimizer_restored,
                first_step=first_step,
                last_step=done,
            )
        )
        if done >= steps:
            return TrainingResult(tuple(segments))


async def _save(
    current: CurrentClient, client: TrainingClient, step: int, say: Report
) -> None:
    metadata = {"step": str(step)}
    save = partial(client.save_state, checkpoint_name(step), user_metadata=metadata)
    saved = await _request(current, client, save, say)
    say(f"step {step}: saved {saved.tinker_path}")


async def _request(
    current: CurrentClient,
    client: TrainingClient,
    send: Callable[[], Awaitable[T]],
    say: Report,
) -> T:
    """One request on ``client``, while it is still the current, healthy one."""
    attempt = 1
    while True:
        current.check(client)
        try:
            return await send()
        except TinkerAPIError as exc:
            if not exc.retryable or attempt == MAX_ATTEMPTS:
                raise
            say(
                f"a request to {client.model_id} failed ({type(exc).__name__}); "
                "asking the monitor"
            )
            await current.verdict(client, failed_at=trio.current_time())
        attempt += 1


# -- running it ---------------------------------------------------------------

#: The simulated run the demo starts from: a pretrained model's checkpoint.
SIMULATED_START = "tinker://pretrained/weights/step-000000"
#: Simulated seconds each request takes to complete on the simulator.
SIMULATED_LATENCY = 0.5


def simulator(seed: int) -> FakeTinker:
    """A Tinker simulator holding the checkpoint the demo starts from."""
    fake = FakeTinker(
        seed=seed, future_try_again=0, future_delay=SIMULATED_LATENCY, long_poll=5.0
    )
    fake.add_run("pretrained", checkpoints=[])
    fake.add_checkpoint("pretrained", "step-000000", metadata={"step": "0"})
    return fake


async def run_on_simulator(
    *,
    seed: int = 0,
    steps: int = 20,
    save_every: int = 5,
    fake: FakeTinker | None = None,
    report: Report = print,
) -> TrainingResult:
    """`train` against the simulator, corrupting the run once on the way.

    The moment of the corruption is drawn from ``seed``: somewhere in the
    first three quarters of the training, in any phase of a step.  Run it
    under a ``MockClock`` (``autojump_threshold=0``) to take no real time.

    Args:
        seed: Decides when the run is corrupted.
        steps: The last step to do.
        save_every: Save a checkpoint after every this many steps.
        fake: The simulator, made by `simulator` (a new one when ``None``).
        report: Called with each line of the account.
    """
    fake = fake or simulator(seed)
    # A step is two requests; a checkpoint one more every save_every steps.
    duration = steps * 2 * SIMULATED_LATENCY
    corrupt_at = random.Random(seed).uniform(1.0, 0.75 * duration)
    config = Config(api_key="tml-simulated-key", base_url="https://tinker.simulated")
    async with (
        open_service_client(config, transport=fake.transport()) as service,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(_corrupt_later, fake, corrupt_at, report)
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


async def _corrupt_later(fake: FakeTinker, delay: float, report: Report) -> None:
    """The simulated service breaks the first model trained, ``delay`` s from now."""
    await trio.sleep(delay)
    model_id = next(
        r.model_id for r in fake.restore_log if r.tinker_path == SIMULATED_START
    )
    fake.corrupt(model_id)
    report(f"[{delay:7.1f}s] (the simulator corrupts {model_id})")


def account(result: TrainingResult) -> str:
    """A summary of the training, for the end of the report."""
    models = len(result.segments)
    lines = [f"done: step {result.last_step} reached on {models} model(s)"]
    for before, segment in zip((None, *result.segments), result.segments, strict=False):
        lines.append(
            f"  {segment.model_id}: steps {segment.first_step}-{segment.last_step}"
        )
        if before is not None:
            redone = before.last_step - segment.first_step + 1
            restored = "with" if segment.optimizer_restored else "WITHOUT"
            lines += [
                f"    restored from {segment.restored_from}",
                f"    {restored} its optimizer state; resumed at step "
                f"{segment.first_step}, {redone} step(s) done again",
            ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo on the simulator, or train on Tinker with ``--start``."""
    parser = argparse.ArgumentParser(
        description="A Trio training loop that keeps going through corruption."
    )
    parser.add_argument("--steps", type=int, default=20, help="steps to train")
    parser.add_argument("--save-every", type=int, default=5, help="steps per save")
    parser.add_argument("--seed", type=int, default=0, help="simulator: when to break")
    parser.add_argument("--start", help="Tinker: the checkpoint to start from")
    parser.add_argument("--base-url", help="Tinker: the service (TINKER_BASE_URL)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.save_every < 1:
        parser.error("--steps and --save-every must be at least 1")
    # The account tells what happens; the library's own log lines (warnings
    # of a detection, say) would repeat it.
    logging.basicConfig(level=logging.ERROR)
    if args.start is None and args.base_url is None:
        result = trio.run(
            lambda: run_on_simulator(
                seed=args.seed, steps=args.steps, save_every=args.save_every
            ),
            clock=trio.testing.MockClock(autojump_threshold=0),
        )
    elif args.start is None:
        parser.error("--base-url needs --start: the checkpoint to train from")
    else:
        overrides = {} if args.base_url is None else {"base_url": args.base_url}
        try:
            config = Config.from_env(**overrides)
        except ValueError as exc:
            parser.error(str(exc))

        async def on_tinker() -> TrainingResult:
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
