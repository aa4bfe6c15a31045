"""Supervise mode: the training process is ours to restart.

A restore creates a new model in the session that restores it, and no
Tinker API lets another process attach to that model; so a watcher beside
a training script can only restore a model nobody trains.  `supervise`
owns the training process instead (as torchrun's elastic agent, SkyPilot
managed jobs or a Kubernetes Job do) and restarts *it*, telling it where
to resume (`trio_tinkex_recovery.supervised`); the script does the
restore in its own session.

Modules: ``_spec`` (the frozen spec, the state enum, the result),
``_supervisor`` (the one loop, and the `Restarter`, the seam through which
the engine's executor restarts the child), ``_child`` and ``_guard`` (the
process group, stopping, dying with the supervisor), ``_finder`` (which
run the child trains), ``_jobfile`` (the crash-safe state file).
"""

from __future__ import annotations

import os
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import attrs

from .._engine._backends import BACKENDS
from .._policy import Policy
from ._jobfile import JobFile, JobLockedError, JobRecord, default_job_path
from ._spec import (
    EXIT_EXHAUSTED,
    JobState,
    SuperviseResult,
    SupervisorEvent,
    SupervisorSpec,
    default_job_id,
)
from ._supervisor import Supervisor

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from .._config import Config
    from .._notify import Notifier
    from .._protocols import RestClientProtocol, ServiceProtocol

__all__ = [
    "EXIT_EXHAUSTED",
    "JobLockedError",
    "JobState",
    "SuperviseResult",
    "SupervisorEvent",
    "SupervisorSpec",
    "default_job_id",
    "supervise",
]


async def supervise(
    command: Sequence[str],
    *,
    policy: Policy | None = None,
    config: Config | None = None,
    service: ServiceProtocol | None = None,
    rest: RestClientProtocol | None = None,
    grace: float = 30.0,
    max_restarts: int = 3,
    restart_on_error: int = 0,
    log_path: str | os.PathLike[str] | None = None,
    discover: bool = False,
    restart_on_stall: bool = False,
    notifiers: Sequence[Notifier] = (),
    state: str | os.PathLike[str] | None = None,
    job_id: str | None = None,
    on_event: Callable[[SupervisorEvent], None] | None = None,
    environ: Mapping[str, str] | None = None,
) -> SuperviseResult:
    """Run ``command`` and keep it training through corruptions.

    The command runs in a process group of its own with the supervisor's
    stdin, stdout and stderr, and the environment variables described in
    `trio_tinkex_recovery.supervised`.  The run it trains (announced, read
    from ``log_path``, or discovered) is polled; when it is corrupted the
    command is stopped (SIGTERM to its group, ``grace`` seconds, SIGKILL)
    and started again from a training checkpoint chosen by the policy's
    strategy (expired ones skipped, older ones as fallback), after the
    policy's backoff between failed attempts.  A start that exits before
    announcing a run is a failed attempt; the next one resumes from the
    next older checkpoint.

    The command ending by itself: 0 ends the job (exit 0).  Non-zero: its
    run is polled at once; corrupted, it is restarted as above; healthy, it
    is restarted only while ``restart_on_error`` allows, else the job ends
    with the command's status (128 + N if killed by signal N).  More than
    ``max_restarts`` restarts (over the job's life), or the policy's
    ``max_attempts`` in one corruption: the job is exhausted, the command
    stays stopped, status `EXIT_EXHAUSTED` (75).

    SIGINT, SIGTERM and SIGHUP are forwarded to the command's group and
    nothing is restarted after them (a second SIGINT sends SIGKILL); the
    job ends with the command's status.

    The state file (``state``; default
    ``$XDG_STATE_HOME/trio-tinkex-recovery/jobs/JOB_ID.json``) records the
    restart count, the current run, the closed corruption episodes, the
    last resume point and the command's process.  The command dies with
    its supervisor, even one killed by SIGKILL (a guard process in its
    group kills the group when the supervisor's end of a pipe closes); a
    supervisor started again with the same state kills whatever is left of
    that group, then starts the command from the last resume point, with
    the restart count kept and no closed episode restarted again.

    Args:
        command: The command and its arguments.
        policy: How to choose checkpoints and retry (always enabled here);
            default ``Policy(enabled=True)``.
        config: Where Tinker is, and the key (default: the environment).
        service: A service to read runs through instead of the native
            client opened from ``config``.
        rest: The REST client to poll with (default: the service's).
        grace: Seconds between SIGTERM and SIGKILL when stopping.
        max_restarts: Restarts over the job's life.
        restart_on_error: Restarts after error exits of a healthy run.
        log_path: tinker-cookbook's log folder: the run of the newest
            ``state_path`` in its ``checkpoints.jsonl`` is the child's.
        discover: Take any run of the key's owner first seen after the
            command started as the command's (one job per key only).
        restart_on_stall: With ``policy.stall_timeout``, restart the
            command the corruption way (stop it, resume from the newest
            checkpoint; ``TTR_RESTART_REASON=stalled``) when its run stalls;
            counted as a restart.
        notifiers: Told of the monitor's events (`notify`), started beside
            it before the command starts.
        state: The job's state file.
        job_id: The job's id (default: from the command and the folder).
        on_event: Called with each of the supervisor's own reports.
        environ: The environment the command starts from (default: ours).

    Returns:
        How the job ended.

    Raises:
        JobLockedError: Another supervisor runs this job.
        ValueError: A bad option or a malformed state file.
    """
    spec = SupervisorSpec(
        command=tuple(command),
        grace=grace,
        max_restarts=max_restarts,
        restart_on_error=restart_on_error,
        log_path=None if log_path is None else os.fspath(log_path),
        discover=discover,
        restart_on_stall=restart_on_stall,
        job_id=job_id if job_id is not None else default_job_id(tuple(command)),
        state_path=None if state is None else os.fspath(state),
    )
    if policy is None:
        policy = config.recovery if config is not None and config.recovery else Policy()
    if not policy.enabled:
        policy = attrs.evolve(policy, enabled=True)
    path = spec.state_path or default_job_path(spec.job_id)
    jobfile = JobFile(path)
    jobfile.lock()
    try:
        record = jobfile.load()
        if (
            record is None
            or record.finished is not None
            or record.command != spec.command
        ):
            record = JobRecord(job_id=spec.job_id, command=spec.command)
        spec = attrs.evolve(spec, job_id=record.job_id, state_path=path)
        jobfile.save(record)
        async with AsyncExitStack() as stack:
            if service is None and rest is None:
                assert BACKENDS.open_service is not None, "imported without its top"
                service = await stack.enter_async_context(BACKENDS.open_service(config))
            if rest is None:
                assert service is not None
                rest = service.create_rest_client()
            supervisor = Supervisor(
                spec,
                policy=policy,
                rest=rest,
                jobfile=jobfile,
                record=record,
                report=on_event or (lambda event: None),
                notifiers=tuple(notifiers),
                environ=dict(os.environ if environ is None else environ),
            )
            return await supervisor.run()
    finally:
        jobfile.unlock()
