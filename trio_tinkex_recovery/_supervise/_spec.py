"""What a supervisor runs (the spec), where its job stands, and how it ended.

The shape is torchrun's elastic agent's: a frozen spec, a small state
enum, one loop (`Supervisor.run`) and a result value.
"""

from __future__ import annotations

import enum
import hashlib
import os
from typing import Any, Final

import attrs

from .._validators import check_number

__all__ = [
    "EXIT_EXHAUSTED",
    "JobState",
    "SuperviseResult",
    "SupervisorEvent",
    "SupervisorSpec",
    "default_job_id",
]

#: The supervisor's exit status when the job's restarts are used up (the
#: child stays stopped): ``EX_TEMPFAIL`` of ``sysexits.h``.
EXIT_EXHAUSTED: Final = 75


def default_job_id(command: tuple[str, ...], cwd: str | None = None) -> str:
    """A job id from the command and the working directory.

    The same command started again in the same folder is the same job, so
    a supervisor started again after a crash finds its state by itself.
    """
    text = "\0".join((cwd or os.getcwd(), *command))
    return "job-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def _command(value: Any) -> tuple[str, ...]:
    if isinstance(value, str | bytes) or not value:
        raise TypeError("command must be a non-empty sequence of strings")
    command = tuple(value)
    if not all(isinstance(part, str) for part in command):
        raise TypeError("command must be a non-empty sequence of strings")
    return command


def _non_negative(owner: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_number(
        f"SupervisorSpec.{attribute.name}",
        value,
        minimum=0,
        integer=attribute.name != "grace",
    )


@attrs.frozen(kw_only=True)
class SupervisorSpec:
    """What to run and how to restart it; validated on construction."""

    #: The training command and its arguments.
    command: tuple[str, ...] = attrs.field(converter=_command)
    #: Seconds between SIGTERM and SIGKILL when the child is stopped.
    grace: float = attrs.field(default=30.0, validator=_non_negative)
    #: Restarts over the job's life, whatever their reason.
    max_restarts: int = attrs.field(default=3, validator=_non_negative)
    #: Restarts after an error exit of a healthy run (0: none).
    restart_on_error: int = attrs.field(default=0, validator=_non_negative)
    #: tinker-cookbook's log folder (its ``checkpoints.jsonl``), if any.
    log_path: str | None = None
    #: Whether any new run of the key's owner is taken as the child's.
    discover: bool = False
    #: Whether a stall of the child's run (``Policy.stall_timeout``)
    #: restarts it the corruption way.
    restart_on_stall: bool = False
    #: The job's id (default: from the command and the working directory).
    job_id: str = attrs.field()
    #: The state file (default: under the XDG state folder, by job id).
    state_path: str | None = None

    @job_id.default
    def _job_id(self) -> str:
        return default_job_id(self.command)


class JobState(enum.Enum):
    """Where the job stands."""

    INIT = "init"
    HEALTHY = "healthy"
    RESTARTING = "restarting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    EXHAUSTED = "exhausted"


@attrs.frozen
class SuperviseResult:
    """How a supervised job ended."""

    #: The supervisor's exit status: the child's (128 + N for signal N),
    #: or `EXIT_EXHAUSTED`.
    exit_status: int
    #: Restarts over the job's life.
    restarts: int
    #: ``succeeded``, ``failed``, ``stopped`` (by a signal) or ``exhausted``.
    state: JobState
    #: Why it ended, in words.
    reason: str
    #: The run the child trained last, when known.
    run_id: str | None = None
    #: The job's id.
    job_id: str = ""


@attrs.frozen
class SupervisorEvent:
    """One line of the supervisor's own report (stderr; JSON with ``--json``)."""

    #: What happened: ``started``, ``announced``, ``detected``, ``stopping``,
    #: ``restarting``, ``exited``, ``forwarded``, ``exhausted``, ``warning``, …
    name: str
    #: In words.
    message: str
    #: The job.
    job_id: str
    #: Details (JSON-safe).
    fields: dict[str, Any] = attrs.field(factory=dict)
