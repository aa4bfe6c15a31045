"""The child: the training command in a process group of its own, under a guard.

`start_child` runs ``_guard.py`` (the group's leader), which runs the
command; stdin, stdout and stderr are inherited untouched.  `Child.stop`
is the one way to stop it: SIGTERM to the group, ``grace`` seconds, then
SIGKILL to the group.  The guard kills the group when the supervisor dies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import TYPE_CHECKING, Final

import trio

from ._jobfile import process_start_time

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["GUARD", "Child", "exit_status", "kill_leftover", "start_child"]

#: The guard script, run by path (it imports nothing of the package).
GUARD: Final = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_guard.py")


def exit_status(returncode: int) -> int:
    """A shell's exit status for a return code: 128 + N for signal N."""
    return 128 - returncode if returncode < 0 else returncode


class Child:
    """One start of the command."""

    def __init__(self, process: trio.Process, alive_fd: int, started_at: float) -> None:
        self.process = process
        self.pid = process.pid
        self.start_time = process_start_time(process.pid)
        #: ``trio.current_time()`` when it started.
        self.started_at = started_at
        #: Set once it exited (and was reaped).
        self.exited = trio.Event()
        #: Whether the supervisor's loop has read its exit.
        self.reported = False
        #: Whether the supervisor stopped it (its exit is no news).
        self.stopping = False
        #: Whether a restart waits for this start to announce its run.
        self.restoring = False
        #: The checkpoint it was started from, if any.
        self.resume_path: str | None = None
        #: The run it trains, once known.
        self.run_id: str | None = None
        #: Cancelled when the run is known (a restart waits in it).
        self.scope: trio.CancelScope | None = None
        self._alive_fd: int | None = alive_fd

    @property
    def returncode(self) -> int | None:
        """Its return code once it exited (negative: killed by that signal)."""
        return self.process.returncode

    async def wait(self) -> int:
        """Wait for it to exit; close the guard's pipe; its return code."""
        code = await self.process.wait()
        self._close_pipe()
        self.exited.set()
        return code

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to its whole process group (gone already: nothing)."""
        if self.returncode is None or self._group_alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signum)

    async def stop(self, grace: float) -> int:
        """SIGTERM to the group, ``grace`` seconds, then SIGKILL; its return code."""
        self.stopping = True
        self.signal_group(signal.SIGTERM)
        with trio.move_on_after(grace):
            await self.exited.wait()
        self.signal_group(signal.SIGKILL)
        await self.exited.wait()
        code = self.returncode
        assert code is not None
        return code

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def _close_pipe(self) -> None:
        if self._alive_fd is not None:
            os.close(self._alive_fd)
            self._alive_fd = None


async def start_child(command: tuple[str, ...], env: Mapping[str, str]) -> Child:
    """Start ``command`` under the guard, in a new session (its own process group).

    Raises:
        OSError: The interpreter could not be started (a command that cannot
            be run ends the child with status 127 instead).
    """
    read_fd, write_fd = os.pipe()  # both close-on-exec; the guard gets read_fd
    try:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-I", "-S", GUARD, str(read_fd), "--", *command],
            env=dict(env),
            start_new_session=True,
            pass_fds=(read_fd,),
        )
    except BaseException:
        os.close(write_fd)
        raise
    finally:
        os.close(read_fd)
    return Child(process, write_fd, trio.current_time())


async def kill_leftover(pid: int | None, start_time: int | None) -> bool:
    """Kill what is left of an earlier supervisor's child group; whether any was.

    ``pid`` is the group's id (its guard's pid) and ``start_time`` the
    guard's start time (so a reused pid is left alone).  Waits until the
    group is gone.
    """
    if pid is None:
        return False
    leader = process_start_time(pid)
    if leader is not None and start_time is not None and leader != start_time:
        return False  # the pid belongs to another process now
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    # Not our child: poll until the group is empty (SIGKILL is prompt).
    while True:
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            return True
        await trio.sleep(0.01)
