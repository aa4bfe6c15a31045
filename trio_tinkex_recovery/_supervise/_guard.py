"""The guard: the child process that makes a training command die with its supervisor.

Run by path (``python -I -S _guard.py FD -- COMMAND...``, standard library
only, so it starts fast and imports nothing of the package).  It is the
leader of the job's process group and runs COMMAND in that group.  FD is
the read end of a pipe whose write end only the supervisor holds: when the
supervisor dies, however it dies (SIGKILL included), the pipe reaches end
of file and the guard kills its whole process group with SIGKILL.  (Linux's
parent-death signal would not do: it fires when the *thread* that started
the child exits, and Trio starts processes from worker threads.)

SIGINT, SIGTERM and SIGHUP sent to the group reach COMMAND directly; the
guard ignores them and waits for COMMAND, then exits the way it did (by
the same signal if it was killed by one), so the supervisor reads
COMMAND's own status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading


def _watch_supervisor(fd: int) -> None:
    """Block until the supervisor is gone, then kill the process group."""
    try:
        while os.read(fd, 1):
            pass
    except OSError:
        pass
    os.killpg(0, signal.SIGKILL)


def main(argv: list[str]) -> int:
    """Run the command; exit as it exits."""
    fd = int(argv[0])
    command = argv[2:] if argv[1:2] == ["--"] else argv[1:]
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    try:
        child = subprocess.Popen(
            command,
            # The command gets the default dispositions back.
            preexec_fn=_default_signals,
            close_fds=True,
        )
    except OSError as exc:
        print(
            f"trio-tinkex-recovery: cannot start {command[0]!r}: {exc}", file=sys.stderr
        )
        return 127
    # Started after the fork: no other thread exists while preexec_fn runs.
    threading.Thread(target=_watch_supervisor, args=(fd,), daemon=True).start()
    status = child.wait()
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    return status


def _default_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
