"""The job's state file: what a supervisor started again must know.

One JSON document, mode 0600, replaced atomically on every change (a
temporary file in the same folder, fsync, rename, fsync of the folder):
a supervisor killed at any instant leaves either the old document or the
new one.  It holds the job id, the restart count, the current run, the
closed corruption episodes, the last resume point, and the pid and start
time of the job's process group leader.  A lock (``flock`` on
``FILE.lock``) keeps two supervisors off one job.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from typing import Any, Final

import attrs

from .._errors import TinkexRecoveryError

__all__ = [
    "Episode",
    "JobFile",
    "JobLockedError",
    "JobRecord",
    "Resume",
    "default_job_path",
    "process_start_time",
]

VERSION: Final = 1


class JobLockedError(TinkexRecoveryError):
    """Another supervisor holds the job's state file."""


@attrs.frozen
class Resume:
    """A resume point as the supervisor keeps it."""

    path: str
    optimizer: bool
    step: int | None
    previous_run_id: str | None
    reason: str


@attrs.frozen
class Episode:
    """A corruption episode closed by a restart."""

    run_id: str
    reason: str
    resume_path: str | None


@attrs.frozen
class JobRecord:
    """Everything the state file holds."""

    job_id: str
    command: tuple[str, ...]
    restart_count: int = 0
    error_restarts: int = 0
    current_run: str | None = None
    episodes: tuple[Episode, ...] = ()
    resume: Resume | None = None
    #: The guard's pid (the process group's id) and its start time.
    child_pid: int | None = None
    child_start: int | None = None
    #: How the job ended (``None``: it has not).
    finished: str | None = None

    def closed(self, run_id: str) -> bool:
        """Whether ``run_id``'s corruption episode was closed by a restart."""
        return any(e.run_id == run_id for e in self.episodes)

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON document."""
        document = attrs.asdict(self, recurse=True)
        document["command"] = list(self.command)
        document["episodes"] = [attrs.asdict(e) for e in self.episodes]
        document["version"] = VERSION
        return document

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> JobRecord:
        """Read a document written by `to_json`.

        Raises:
            ValueError: Not such a document, or from a newer version.
        """
        if not isinstance(document, dict) or document.get("version") != VERSION:
            raise ValueError("not a job state file of this version")
        try:
            resume = document.get("resume")
            return cls(
                job_id=str(document["job_id"]),
                command=tuple(document["command"]),
                restart_count=int(document["restart_count"]),
                error_restarts=int(document.get("error_restarts", 0)),
                current_run=document.get("current_run"),
                episodes=tuple(Episode(**e) for e in document.get("episodes", ())),
                resume=None if resume is None else Resume(**resume),
                child_pid=document.get("child_pid"),
                child_start=document.get("child_start"),
                finished=document.get("finished"),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"a malformed job state file: {exc}") from None


class JobFile:
    """The state file of one job, locked while open."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock_fd: int | None = None

    def lock(self) -> None:
        """Take the job's lock.

        Raises:
            JobLockedError: Another supervisor runs this job.
        """
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, mode=0o700, exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JobLockedError(
                f"another supervisor runs the job of {self.path}"
            ) from None
        self._lock_fd = fd

    def unlock(self) -> None:
        """Give the lock back."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def load(self) -> JobRecord | None:
        """The record, or ``None`` when there is no state file yet.

        Raises:
            ValueError: The file is not a job state file.
        """
        try:
            with open(self.path, encoding="utf-8") as file:
                return JobRecord.from_json(json.load(file))
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.path}: not JSON: {exc}") from None

    def save(self, record: JobRecord) -> None:
        """Replace the record atomically (temporary file, fsync, rename)."""
        folder = os.path.dirname(os.path.abspath(self.path))
        temporary = f"{self.path}.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(record.to_json(), indent=1).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        with contextlib.suppress(OSError):
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def default_job_path(job_id: str) -> str:
    """``$XDG_STATE_HOME/trio-tinkex-recovery/jobs/JOB_ID.json``.

    Without ``XDG_STATE_HOME``, under ``~/.local/state``.
    """
    root = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(root, "trio-tinkex-recovery", "jobs", f"{job_id}.json")


def process_start_time(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot, or ``None``.

    Read from ``/proc/PID/stat`` (Linux); a pid reused by another process
    has another start time.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
            stat = file.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None
