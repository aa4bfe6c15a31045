"""For a training script run under ``trio-tinkex-recovery run``: where to resume.

The supervisor (``run -- COMMAND``, or `trio_tinkex_recovery.supervise`)
starts the script with environment variables that say whether this start
resumes a corrupted run, and from which checkpoint.  This module reads
them.  It uses the standard library alone, is synchronous and starts no
Trio, so a script in any framework can call it::

    from trio_tinkex_recovery import supervised

    resume = supervised.resume_point()
    if resume is None:
        client = service.create_lora_training_client(base_model=BASE, rank=32)
        first_step = 0
    else:
        client = service.create_training_client_from_state_with_optimizer(resume.path)
        first_step = (resume.step or 0) + 1
    supervised.announce(client)  # the supervisor watches this run from now on

`training_client` does the same for the official SDK in one call.

The variables (all set by the supervisor; none when not supervised):

- ``TTR_JOB_ID``: the job, stable across restarts.
- ``TTR_RESTART_COUNT``: 0 on the first start, then 1, 2, …
- ``TTR_MAX_RESTARTS``: how many restarts the job may have.
- ``TTR_ANNOUNCE_FILE``: where `announce` appends the run id.
- ``TTR_RESUME_PATH``: the ``tinker://RUN/weights/NAME`` training
  checkpoint to resume from (after a corruption, or an error restart).
- ``TTR_RESUME_OPTIMIZER``: ``1`` to restore the optimizer state too, ``0``
  for the weights only.
- ``TTR_RESUME_STEP``: the checkpoint's step, when known (its
  ``user_metadata["step"]``, else tinker-cookbook's ``batch``).
- ``TTR_PREVIOUS_RUN_ID``: the run this start replaces.
- ``TTR_RESTART_REASON``: why this start is a restart: ``corrupted``,
  ``error`` or ``stalled``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ResumePoint",
    "announce",
    "is_supervised",
    "resume_point",
    "training_client",
]

JOB_ID = "TTR_JOB_ID"
RESTART_COUNT = "TTR_RESTART_COUNT"
MAX_RESTARTS = "TTR_MAX_RESTARTS"
ANNOUNCE_FILE = "TTR_ANNOUNCE_FILE"
RESUME_PATH = "TTR_RESUME_PATH"
RESUME_OPTIMIZER = "TTR_RESUME_OPTIMIZER"
RESUME_STEP = "TTR_RESUME_STEP"
PREVIOUS_RUN_ID = "TTR_PREVIOUS_RUN_ID"
RESTART_REASON = "TTR_RESTART_REASON"
#: The variables a start sets only when it resumes.
RESUME_VARS = frozenset(
    {RESUME_PATH, RESUME_OPTIMIZER, RESUME_STEP, PREVIOUS_RUN_ID, RESTART_REASON}
)


@dataclass(frozen=True)
class ResumePoint:
    """Where a restarted training script resumes."""

    #: The training checkpoint, ``tinker://RUN/weights/NAME``.
    path: str
    #: Whether to restore the optimizer state too.
    optimizer: bool
    #: The checkpoint's training step, when known.
    step: int | None
    #: How many times the job has been restarted (this start included).
    restart_count: int
    #: The run this start replaces, when known.
    previous_run_id: str | None
    #: Why the job was restarted: ``corrupted``, ``error`` or ``stalled``.
    reason: str | None


def is_supervised() -> bool:
    """Whether this process was started by the supervisor."""
    return bool(os.environ.get(JOB_ID))


def resume_point() -> ResumePoint | None:
    """Where to resume, or ``None`` (a first start, or not supervised)."""
    path = os.environ.get(RESUME_PATH)
    if not is_supervised() or not path:
        return None
    return ResumePoint(
        path=path,
        optimizer=os.environ.get(RESUME_OPTIMIZER, "1") != "0",
        step=_int(os.environ.get(RESUME_STEP)),
        restart_count=_int(os.environ.get(RESTART_COUNT)) or 0,
        previous_run_id=os.environ.get(PREVIOUS_RUN_ID) or None,
        reason=os.environ.get(RESTART_REASON) or None,
    )


def announce(run: Any) -> None:
    """Tell the supervisor which run this process trains.

    Args:
        run: A run id, or anything with a ``model_id`` (a training client).

    A no-op when not supervised; never raises (a failure to announce must
    not stop training: the supervisor may still learn the run otherwise).
    """
    try:
        target = os.environ.get(ANNOUNCE_FILE)
        if not target or not is_supervised():
            return
        run_id = run if isinstance(run, str) else getattr(run, "model_id", None)
        if not isinstance(run_id, str) or not run_id or "\n" in run_id:
            return
        # One write of one line with O_APPEND: concurrent writers never mix.
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (run_id + "\n").encode())
        finally:
            os.close(fd)
    except Exception:
        return


def training_client(
    service: Any, *, base_model: str, rank: int = 32, **kwargs: Any
) -> Any:
    """A training client for the official SDK: resumed if the supervisor says so.

    Resumes from `resume_point` (with the optimizer state when it says so),
    else creates a LoRA training client; announces the client's run either
    way and returns the client.

    Args:
        service: A ``tinker.ServiceClient`` (synchronous API).
        base_model: The base model of a new client.
        rank: The LoRA rank of a new client.
        **kwargs: More arguments for ``create_lora_training_client``.
    """
    resume = resume_point()
    if resume is None:
        client = service.create_lora_training_client(
            base_model=base_model, rank=rank, **kwargs
        )
    elif resume.optimizer:
        client = service.create_training_client_from_state_with_optimizer(resume.path)
    else:
        client = service.create_training_client_from_state(resume.path)
    client = _resolved(client)
    announce(client)
    return client


def _resolved(made: Any) -> Any:
    """The client itself: SDK 0.38 returns a future of it from these calls."""
    result = getattr(made, "result", None)
    if callable(result) and not hasattr(type(made), "forward_backward"):
        return result()
    return made


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None
