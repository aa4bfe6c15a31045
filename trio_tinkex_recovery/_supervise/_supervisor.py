"""The supervisor: one loop that owns the training process and restarts it.

Built from the engine: a `Monitor` watches the child's current run, and a
corrupted run goes to the monitor's executor exactly as in library mode
(the episode rule, candidates by strategy, fallback, backoff,
``max_attempts``).  Only the recovery *action* differs: the executor
restores through a service, and here that service is the `Restarter`,
whose "restore" stops the child and starts the command again with the
checkpoint in ``TTR_RESUME_PATH``; the run the new start announces is the
restored run, which the monitor then follows.

`Supervisor.run` is the one loop: it starts the child, then waits for
news (the child exited, a recovery was exhausted, a signal came) and
decides, returning a `SuperviseResult`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs
import trio

from .. import supervised as env_names
from .._engine._monitor import open_monitor
from .._engine._selection import candidates
from .._errors import (
    AlreadyPendingError,
    CheckpointUnavailableError,
    RecoveryError,
    TinkerAPIError,
)
from .._types import Checkpoint
from ._child import Child, exit_status, kill_leftover, start_child
from ._finder import AnnounceFile, CookbookLog, list_run_ids
from ._jobfile import Episode, JobFile, JobRecord, Resume
from ._lineage import lineage_of
from ._spec import (
    EXIT_EXHAUSTED,
    JobState,
    SuperviseResult,
    SupervisorEvent,
    SupervisorSpec,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._engine._executor import RecoveryOutcome
    from .._engine._monitor import Monitor
    from .._engine._telemetry import TelemetryEvent
    from .._notify import Notifier
    from .._policy import Policy
    from .._protocols import RestClientProtocol

__all__ = ["Restarter", "Supervisor"]

logger = logging.getLogger("trio_tinkex_recovery.supervise")

#: Seconds between two reads of the announce file and the cookbook log.
FIND_INTERVAL: Final = 0.05
#: The tag every start adds to ``TINKER_TAGS``.
TAG_PREFIX: Final = "trio-tinkex-recovery:"
#: Events of the engine repeated in the supervisor's report.
ENGINE_EVENTS: Final = frozenset(
    {"detected", "checkpoint_selected", "failed", "completed", "exhausted"}
)


class StartFailedError(RecoveryError):
    """A restarted child exited before it announced a run (an attempt failed)."""

    retryable = True


class RestartsExhaustedError(RecoveryError):
    """``max_restarts`` restarts were used up; no restart follows."""


class StoppingError(RecoveryError):
    """The supervisor was told to stop (a signal): nothing is restarted."""


@attrs.frozen
class Restarted:
    """What a restart gives the executor: the run the new start trains."""

    model_id: str
    pid: int


News = tuple[Literal["exited", "exhausted", "signal"], Any]


class Restarter:
    """The service seam of supervise mode: a restore restarts the child.

    The executor calls it as it would call a Tinker service; its REST
    client is the real one.
    """

    def __init__(self, supervisor: Supervisor, rest: RestClientProtocol) -> None:
        self._supervisor = supervisor
        self._rest = rest

    def create_rest_client(self) -> RestClientProtocol:
        """The real service's REST client."""
        return self._rest

    async def create_training_client_from_state(self, path: str) -> Restarted:
        """Restart the child from ``path``, weights only."""
        return await self._supervisor.restart_from(path, optimizer=False)

    async def create_training_client_from_state_with_optimizer(
        self, path: str
    ) -> Restarted:
        """Restart the child from ``path`` with the optimizer state."""
        return await self._supervisor.restart_from(path, optimizer=True)


class Supervisor:
    """One job: its child, its state file, its monitor."""

    def __init__(
        self,
        spec: SupervisorSpec,
        *,
        policy: Policy,
        rest: RestClientProtocol,
        jobfile: JobFile,
        record: JobRecord,
        report: Callable[[SupervisorEvent], None],
        environ: dict[str, str],
        notifiers: tuple[Notifier, ...] = (),
    ) -> None:
        self.spec = spec
        self.policy = policy
        #: Reads runs; a resumed run's checkpoints include its starting one.
        self.rest = lineage_of(rest)
        self.jobfile = jobfile
        self.record = record
        self.state = JobState.INIT
        self._report = report
        self._environ = environ
        self._restarter = Restarter(self, self.rest)
        self._monitor: Monitor | None = None
        self._child: Child | None = None
        self._lock = trio.Lock()
        self._news_send, self._news = trio.open_memory_channel[News](math.inf)
        self._signalled: int | None = None
        self._failed_paths: set[str] = set()
        self._announce = AnnounceFile(announce_path(jobfile.path))
        self._cookbook = None if spec.log_path is None else CookbookLog(spec.log_path)
        self._known_runs: set[str] | None = None
        self._nursery: trio.Nursery | None = None
        self._notifiers = notifiers
        # Why the executor's next restart happens: a corruption or a stall.
        self._reason = "corrupted"

    # -- reporting -------------------------------------------------------

    def emit(self, name: str, message: str, **fields: Any) -> None:
        """Report one line (stderr in the CLI)."""
        self._report(SupervisorEvent(name, message, self.spec.job_id, fields))

    def _save(self, **changes: Any) -> None:
        self.record = attrs.evolve(self.record, **changes)
        self.jobfile.save(self.record)

    # -- the loop ------------------------------------------------------------

    async def run(self) -> SuperviseResult:
        """Start the child and supervise it until the job ends."""
        async with (
            open_monitor(
                policy=self.policy, service=self._restarter, rest=self.rest
            ) as monitor,
            trio.open_nursery() as nursery,
        ):
            self._monitor = monitor
            self._nursery = nursery
            await nursery.start(self._follow_outcomes)
            await nursery.start(self._follow_events)
            await nursery.start(self._forward_signals)
            for notifier in self._notifiers:
                await nursery.start(notifier.run, monitor)
            if self.spec.discover:
                self._known_runs = set(await list_run_ids(self.rest))
            nursery.start_soon(self._find_runs)
            try:
                result = await self._loop()
            finally:
                nursery.cancel_scope.cancel()
        self._save(finished=result.state.value, child_pid=None, child_start=None)
        self.emit(
            result.state.value,
            result.reason,
            exit_status=result.exit_status,
            restarts=result.restarts,
            run_id=result.run_id,
        )
        return result

    async def _loop(self) -> SuperviseResult:
        self.state = JobState.HEALTHY
        await self._first_start()
        while True:
            kind, value = await self._news.receive()
            if kind == "signal":
                # With a child whose exit is still to be read, its status is
                # the job's: that news follows.
                if self._child is None or self._child.reported:
                    return self._result(
                        JobState.STOPPED, 128 + value, "stopped by a signal"
                    )
                continue
            if kind == "exhausted":
                await self._stop_child()
                return self._result(JobState.EXHAUSTED, EXIT_EXHAUSTED, value)
            child: Child = value[0]
            code: int = value[1]
            child.reported = True
            if child is not self._child:
                continue
            if child.stopping and self._signalled is None:
                continue  # stopped by us: a restart replaces it
            if child.restoring and child.run_id is None and code != 0:
                if self._signalled is None:
                    continue  # a restarted start died early: the restart's business
            status = exit_status(code)
            if self._signalled is not None:
                return self._result(
                    JobState.STOPPED,
                    status,
                    f"stopped by a signal; exit status {status}",
                )
            if code == 0:
                return self._result(JobState.SUCCEEDED, 0, "the command succeeded")
            self.emit(
                "exited", f"the command exited with status {status}", status=status
            )
            if await self._corrupted_now():
                continue  # a corruption restart is under way
            decision = await self._after_error(status)
            if decision is not None:
                return decision

    async def _first_start(self) -> None:
        record = self.record
        if record.child_pid is not None:
            killed = await kill_leftover(record.child_pid, record.child_start)
            self.emit(
                "resumed",
                "supervisor started again: "
                + ("stopped what was left of the child; " if killed else "")
                + "starting the command from the last resume point",
                restarts=record.restart_count,
                resume_path=None if record.resume is None else record.resume.path,
            )
        if self._cookbook is not None and not any(
            "behavior_if_log_dir_exists=resume" in part for part in self.spec.command
        ):
            self.emit(
                "warning",
                "--log-path is set but the command lacks "
                "behavior_if_log_dir_exists=resume: a restarted tinker-cookbook "
                "script would stop at its prompt",
            )
        await self._start(record.resume)
        if record.current_run is not None and not record.closed(record.current_run):
            assert self._monitor is not None
            await self._monitor.monitor_run(record.current_run)

    def _result(self, state: JobState, status: int, reason: str) -> SuperviseResult:
        self.state = state
        return SuperviseResult(
            exit_status=status,
            restarts=self.record.restart_count,
            state=state,
            reason=reason,
            run_id=self.record.current_run,
            job_id=self.spec.job_id,
        )

    async def _corrupted_now(self) -> bool:
        """A fresh poll of the current run; if corrupted, hand it over."""
        run_id = self.record.current_run
        if run_id is None or self.record.closed(run_id):
            return False
        try:
            run = await self.rest.get_training_run(run_id)
        except TinkerAPIError as exc:
            self.emit("warning", f"could not poll run {run_id}: {exc}")
            return False
        if not run.corrupted:
            return False
        self.emit("detected", f"run {run_id} is corrupted", run_id=run_id)
        assert self._monitor is not None
        with contextlib.suppress(RecoveryError):  # already handed over: fine
            await self._monitor.executor.recover(
                run_id,
                self._restarter,
                self.policy,
                run=run,
                last_checkpoint=run.last_checkpoint,
                rest=self.rest,
            )
        return True

    async def _after_error(self, status: int) -> SuperviseResult | None:
        """An error exit of a healthy run: restart while allowed, else end."""
        record = self.record
        if record.error_restarts >= self.spec.restart_on_error:
            return self._result(
                JobState.FAILED, status, f"the command failed with status {status}"
            )
        if record.restart_count >= self.spec.max_restarts:
            return self._result(
                JobState.EXHAUSTED,
                EXIT_EXHAUSTED,
                f"{self.spec.max_restarts} restart(s) used up",
            )
        resume = await self._newest_resume(record.current_run) or record.resume
        if resume is not None:
            resume = attrs.evolve(
                resume, reason="error", previous_run_id=record.current_run
            )
        async with self._lock:
            self._save(
                restart_count=record.restart_count + 1,
                error_restarts=record.error_restarts + 1,
                resume=resume,
            )
            self.emit(
                "restarting",
                f"restarting after an error exit ({self.record.restart_count}/"
                f"{self.spec.max_restarts})",
                reason="error",
                restarts=self.record.restart_count,
                resume_path=None if resume is None else resume.path,
            )
            await self._start(resume, reason="error")
        return None

    async def _newest_resume(self, run_id: str | None) -> Resume | None:
        """The run's newest usable training checkpoint as a resume point."""
        if run_id is None:
            return None
        try:
            found = candidates(
                self.policy.checkpoint_strategy, run_id=run_id, rest=self.rest
            )
            async with contextlib.aclosing(found):
                async for checkpoint in found:
                    return Resume(
                        path=checkpoint.tinker_path,
                        optimizer=self.policy.restore_optimizer,
                        step=self._step(checkpoint),
                        previous_run_id=run_id,
                        reason="error",
                    )
        except (TinkerAPIError, RecoveryError) as exc:
            self.emit("warning", f"no checkpoint of run {run_id} to resume from: {exc}")
        return None

    # -- restarts (the executor's action) ---------------------------------------

    async def restart_from(self, path: str, *, optimizer: bool) -> Restarted:
        """Stop the child, start the command from ``path``; the run it announces.

        Raises:
            StoppingError: A signal came; nothing is restarted.
            RestartsExhaustedError: ``max_restarts`` is used up.
            CheckpointUnavailableError: A start from ``path`` already failed
                (the executor falls back to an older checkpoint).
            StartFailedError: The new start exited before announcing a run.
        """
        if self._signalled is not None:
            raise StoppingError("the supervisor is stopping: no restart")
        if self.record.restart_count >= self.spec.max_restarts:
            raise RestartsExhaustedError(f"{self.spec.max_restarts} restart(s) used up")
        if path in self._failed_paths:
            raise CheckpointUnavailableError(
                f"a start from {path} already failed before announcing a run",
                path=path,
            )
        corrupted = self.record.current_run
        step = await self._step_of(path)
        reason = self._reason
        resume = Resume(path, optimizer, step, corrupted, reason)
        async with self._lock:
            self.state = JobState.RESTARTING
            episodes = self.record.episodes
            if corrupted is not None and not self.record.closed(corrupted):
                episodes = (*episodes, Episode(corrupted, reason, path))
            # Written before anything is done: a supervisor killed from here
            # on starts the command from this resume point, once.
            self._save(
                restart_count=self.record.restart_count + 1,
                resume=resume,
                episodes=episodes,
                current_run=None,
            )
            self.emit(
                "restarting",
                f"restarting from {path} ({self.record.restart_count}/"
                f"{self.spec.max_restarts})",
                reason=reason,
                restarts=self.record.restart_count,
                resume_path=path,
                step=step,
                previous_run_id=corrupted,
            )
            await self._stop_child()
            if self._signalled is not None:
                raise StoppingError("the supervisor is stopping: no restart")
            child = await self._start(resume, restoring=True)
        if child.run_id is None:
            with trio.CancelScope() as scope:
                child.scope = scope  # _on_run cancels it when the run is known
                await child.exited.wait()
        if child.run_id is not None:
            self.state = JobState.HEALTHY
            return Restarted(child.run_id, child.pid)
        self._failed_paths.add(path)
        if child.returncode == 0:
            raise StoppingError("the command exited with status 0")
        raise StartFailedError(
            f"the command started from {path} exited with status "
            f"{exit_status(child.returncode or 0)} before announcing a run"
        )

    async def _start(
        self,
        resume: Resume | None,
        *,
        restoring: bool = False,
        reason: str | None = None,
    ) -> Child:
        environ = self._child_environ(resume, reason)
        child = await start_child(self.spec.command, environ)
        child.restoring = restoring
        child.resume_path = None if resume is None else resume.path
        self._child = child
        self._save(child_pid=child.pid, child_start=child.start_time)
        self.emit(
            "started",
            f"started the command (pid {child.pid}, restart "
            f"{self.record.restart_count})",
            pid=child.pid,
            restarts=self.record.restart_count,
            resume_path=None if resume is None else resume.path,
        )
        assert self._nursery is not None
        self._nursery.start_soon(self._wait_child, child)
        return child

    async def _wait_child(self, child: Child) -> None:
        code = await child.wait()
        self._news_send.send_nowait(("exited", (child, code)))

    async def _stop_child(self) -> None:
        child = self._child
        if child is None:
            return
        # Replaced from now on, even if it has just exited by itself: its
        # exit (still to be read by the loop) is not the job's.
        child.stopping = True
        if child.returncode is not None:
            return
        self.emit(
            "stopping",
            f"stopping the command (SIGTERM, then SIGKILL after {self.spec.grace:g} s)",
            pid=child.pid,
        )
        await child.stop(self.spec.grace)

    def _child_environ(
        self, resume: Resume | None, reason: str | None
    ) -> dict[str, str]:
        environ = {
            k: v for k, v in self._environ.items() if k not in env_names.RESUME_VARS
        }
        environ[env_names.JOB_ID] = self.spec.job_id
        environ[env_names.RESTART_COUNT] = str(self.record.restart_count)
        environ[env_names.MAX_RESTARTS] = str(self.spec.max_restarts)
        environ[env_names.ANNOUNCE_FILE] = self._announce.path
        if resume is not None:
            environ[env_names.RESUME_PATH] = resume.path
            environ[env_names.RESUME_OPTIMIZER] = "1" if resume.optimizer else "0"
            if resume.step is not None:
                environ[env_names.RESUME_STEP] = str(resume.step)
            if resume.previous_run_id is not None:
                environ[env_names.PREVIOUS_RUN_ID] = resume.previous_run_id
        why = reason or (resume.reason if resume is not None else None)
        if why is not None and self.record.restart_count > 0:
            environ[env_names.RESTART_REASON] = why
        tag = TAG_PREFIX + self.spec.job_id
        tags = [t for t in environ.get("TINKER_TAGS", "").split(",") if t.strip()]
        if tag not in tags:
            tags.append(tag)
        environ["TINKER_TAGS"] = ",".join(tags)
        return environ

    async def _step_of(self, path: str) -> int | None:
        """The checkpoint's step: ``user_metadata["step"]``, else cookbook's batch."""
        try:
            run_id = Checkpoint.from_path(path).run_id
            for checkpoint in await self.rest.list_checkpoints(run_id):
                if checkpoint.tinker_path == path:
                    return self._step(checkpoint)
        except (TinkerAPIError, ValueError) as exc:
            logger.debug("no step for %s: %s", path, exc)
        return None if self._cookbook is None else self._cookbook.batches.get(path)

    def _step(self, checkpoint: Checkpoint) -> int | None:
        step = (checkpoint.user_metadata or {}).get("step")
        with contextlib.suppress(TypeError, ValueError):
            if step is not None and not isinstance(step, bool):
                return int(step)
        if self._cookbook is not None:
            return self._cookbook.batches.get(checkpoint.tinker_path)
        return None

    # -- the child's run -------------------------------------------------------

    async def _find_runs(self) -> None:
        next_discovery = trio.current_time() + self.policy.poll_interval
        while True:
            for run_id in self._announce.read_new():
                await self._on_run(run_id)
            if self._cookbook is not None:
                newest = self._cookbook.newest_run()
                if newest is not None:
                    await self._on_run(newest)
            if self._known_runs is not None and trio.current_time() >= next_discovery:
                next_discovery = trio.current_time() + self.policy.poll_interval
                try:
                    listed = await list_run_ids(self.rest)
                except TinkerAPIError as exc:
                    logger.warning("could not list runs: %s", exc)
                    listed = []
                new = [r for r in listed if r not in self._known_runs]
                self._known_runs.update(new)
                if new:
                    await self._on_run(new[0])
            await trio.sleep(FIND_INTERVAL)

    async def _on_run(self, run_id: str) -> None:
        """The child trains ``run_id`` (announced, logged or discovered)."""
        record = self.record
        if run_id == record.current_run or record.closed(run_id):
            return
        try:
            Checkpoint.from_path(f"tinker://{run_id}/weights/x")
        except ValueError:
            self.emit("warning", f"ignoring a malformed run id {run_id!r}")
            return
        old = record.current_run
        self._save(current_run=run_id)
        self.emit("announced", f"the command trains run {run_id}", run_id=run_id)
        child = self._child
        if child is not None:
            if child.resume_path is not None:
                self.rest.resumed_from[run_id] = child.resume_path
            child.run_id = run_id
            if child.scope is not None:
                child.scope.cancel()
        assert self._monitor is not None
        await self._monitor.monitor_run(run_id)
        if old is not None:
            self._monitor.stop_monitoring(old)

    # -- engine and signals ----------------------------------------------------

    async def _follow_outcomes(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        assert self._monitor is not None
        async with self._monitor.executor.outcomes() as outcomes:
            task_status.started()
            async for outcome in outcomes:
                self._on_outcome(outcome)

    def _on_outcome(self, outcome: RecoveryOutcome) -> None:
        state = outcome.state
        if state.phase == "exhausted":
            why = state.error or "no restart left"
            if self._signalled is not None:
                return
            self._news_send.send_nowait(("exhausted", f"recovery exhausted: {why}"))

    async def _follow_events(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        assert self._monitor is not None
        async with self._monitor.subscribe() as events:
            task_status.started()
            async for event in events:
                self._on_event(event)

    def _on_event(self, event: TelemetryEvent) -> None:
        if (
            event.name == "stalled"
            and self.spec.restart_on_stall
            and event.run_id == self.record.current_run
            and self.state is JobState.HEALTHY
            and self._nursery is not None
        ):
            self.emit("stalled", f"run {event.run_id}: stalled", run_id=event.run_id)
            self._nursery.start_soon(self._restart_stalled, event.run_id)
        if event.name not in ENGINE_EVENTS:
            return
        fields = {"run_id": event.run_id, **event.measurements}
        checkpoint = event.metadata.get("checkpoint")
        if isinstance(checkpoint, str):
            fields["checkpoint"] = checkpoint
        error = event.metadata.get("error")
        if error is not None:
            fields["error"] = str(error)
        self.emit(event.name, f"run {event.run_id}: {event.name}", **fields)

    async def _restart_stalled(self, run_id: str) -> None:
        """Restart the child of a stalled run, the corruption way.

        The run is handed to the executor as a corrupted one would be: the
        same checkpoint choice, backoff and attempts, the restart counted.
        """
        assert self._monitor is not None
        self._monitor.stop_monitoring(run_id)
        self._reason = "stalled"
        try:
            await self._monitor.executor.recover(
                run_id, self._restarter, self.policy, rest=self.rest
            )
            await self._monitor.executor.wait_idle()
        except (AlreadyPendingError, trio.ClosedResourceError):
            pass
        finally:
            self._reason = "corrupted"

    async def _forward_signals(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.open_signal_receiver(
            signal.SIGINT, signal.SIGTERM, signal.SIGHUP
        ) as received:
            task_status.started()
            async for signum in received:
                child = self._child
                forwarded = signum
                if self._signalled is not None and signum == signal.SIGINT:
                    forwarded = signal.SIGKILL
                if self._signalled is None:
                    self._signalled = signum
                if child is not None:
                    child.signal_group(forwarded)
                self.emit(
                    "forwarded",
                    f"{signal.Signals(signum).name}: sent "
                    f"{signal.Signals(forwarded).name} to the command; no restart "
                    "follows",
                    signal=signal.Signals(forwarded).name,
                )
                self._news_send.send_nowait(("signal", signum))


def announce_path(state_path: str) -> str:
    """The announce file of the job whose state file is ``state_path``."""
    root, _ = os.path.splitext(state_path)
    return root + ".announce"
