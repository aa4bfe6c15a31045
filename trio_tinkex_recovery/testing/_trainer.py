"""A tiny training script on the native client, run under the supervisor.

``python -m trio_tinkex_recovery.testing._trainer BASE_MODEL STEPS EVERY
[LOG]`` (the tests and the demo run it): trains STEPS steps
(forward_backward then optim_step) against ``$TINKER_BASE_URL``, saving a
training checkpoint with ``user_metadata {"step": N}`` after every EVERY-th
step, and writes ``step STEP MODEL_ID`` on its stdout (its own log, which
the supervisor leaves untouched), or appends it to LOG, once each step
completed.  A
first start creates a LoRA model of BASE_MODEL; a supervised restart
resumes from the supervisor's resume point and goes on from the step
after its checkpoint's.  Any
failure of the service ends it with a non-zero status.

``TRAINER_STEP_DELAY`` (seconds, default 0) paces the steps;
``TRAINER_BROKEN_RESUME=NAME`` makes a start resumed from checkpoint NAME
fail (exit 1) before it announces a run; ``TRAINER_ANNOUNCE=0`` makes it
announce nothing (the supervisor must find its run otherwise);
``TRAINER_TIMES=1`` adds ``time.monotonic()`` to each step's line;
``TRAINER_STALL_AFTER=N`` makes a first start hang after step N (its run
stalls).  A resumed start writes ``resumed REASON PATH`` first.
"""

from __future__ import annotations

import os
import sys
import time

import trio

from trio_tinkex_recovery import (
    Config,
    TinkexRecoveryError,
    open_service_client,
    supervised,
)

DATUM = {
    "model_input": {"chunks": [{"type": "encoded_text", "tokens": [1, 2, 3]}]},
    "loss_fn_inputs": {
        "target_tokens": {"data": [2, 3, 4], "dtype": "int64", "shape": [3]}
    },
}


async def main(base_model: str, steps: int, every: int, log: str | None = None) -> None:
    """Train; see the module's docstring."""
    delay = float(os.environ.get("TRAINER_STEP_DELAY", "0"))
    resume = supervised.resume_point()
    broken = os.environ.get("TRAINER_BROKEN_RESUME")
    if resume is not None and broken and resume.path.endswith(f"/{broken}"):
        sys.exit(1)
    async with open_service_client(Config.from_env()) as service:
        if resume is None:
            client = await service.create_lora_training_client(
                base_model, rank=8, user_metadata={"script": "trainer"}
            )
            first = 0
        else:
            if resume.optimizer:
                restore = service.create_training_client_from_state_with_optimizer
            else:
                restore = service.create_training_client_from_state
            client = await restore(resume.path)
            first = (resume.step or 0) + 1
        if os.environ.get("TRAINER_ANNOUNCE") != "0":
            supervised.announce(client)
        if resume is not None:
            print(f"resumed {resume.reason} {resume.path}", flush=True)
        # A first start that hangs after this step (for stall tests).
        stall_after = os.environ.get("TRAINER_STALL_AFTER")
        for step in range(first, steps):
            if resume is None and stall_after is not None and step > int(stall_after):
                await trio.sleep_forever()
            await client.forward_backward([DATUM], "cross_entropy")
            await client.optim_step(learning_rate=1e-4)
            line = f"step {step} {client.model_id}"
            if os.environ.get("TRAINER_TIMES") == "1":
                line += f" {time.monotonic():.6f}"
            if log is None:
                print(line, flush=True)
            else:
                async with await trio.open_file(log, "a", encoding="utf-8") as file:
                    await file.write(line + "\n")
            if (step + 1) % every == 0:
                await client.save_state(
                    f"step-{step:04d}", user_metadata={"step": str(step)}
                )
            if delay:
                await trio.sleep(delay)


if __name__ == "__main__":
    base_model, steps, every = sys.argv[1:4]
    log = sys.argv[4] if len(sys.argv) > 4 else None
    try:
        trio.run(main, base_model, int(steps), int(every), log)
    except* TinkexRecoveryError as group:
        # One line, not a traceback: the supervisor decides what follows.
        print(f"trainer: {group.exceptions[0]}", file=sys.stderr)
        sys.exit(1)
