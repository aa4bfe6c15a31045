"""A training script on the official SDK, for ``test_supervise_sdk``.

``python sdk_trainer.py STEPS EVERY``: `supervised.training_client` makes
or resumes its client; it trains STEPS steps, saving a checkpoint with
``user_metadata {"step": N}`` after every EVERY-th, and prints ``step N
MODEL_ID`` once each step completed.
"""

from __future__ import annotations

import os
import sys
import time

import tinker
from tinker import types

from trio_tinkex_recovery import supervised


def main(steps: int, every: int) -> None:
    service = tinker.ServiceClient()
    client = supervised.training_client(service, base_model="Qwen/Qwen3-8B", rank=8)
    resume = supervised.resume_point()
    first = 0 if resume is None else (resume.step or 0) + 1
    datum = types.Datum(
        model_input=types.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [1.0, 1.0, 1.0]},
    )
    delay = float(os.environ.get("TRAINER_STEP_DELAY", "0"))
    for step in range(first, steps):
        client.forward_backward([datum], "cross_entropy").result()
        client.optim_step(types.AdamParams(learning_rate=1e-4)).result()
        print(f"step {step} {client.model_id}", flush=True)
        if (step + 1) % every == 0:
            client.save_state(
                f"step-{step:04d}", user_metadata={"step": str(step)}
            ).result()
        time.sleep(delay)


if __name__ == "__main__":
    try:
        main(int(sys.argv[1]), int(sys.argv[2]))
    except Exception as exc:  # one line, not a traceback
        print(f"sdk_trainer: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
