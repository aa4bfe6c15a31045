"""What every command shares at run time: exit codes, usage errors, output
that a closed reader cannot crash, signals, and logging.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, Final, Generic, NoReturn, TextIO, TypeVar

import attrs
import trio

from .._text import printable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Command",
    "Output",
    "Parser",
    "Stop",
    "UsageError",
    "configure_logging",
    "prog",
    "run_trio",
]

#: Exit codes.
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

logger = logging.getLogger("trio_tinkex_recovery.cli")

OptionsT = TypeVar("OptionsT")


class UsageError(Exception):
    """Bad usage or configuration: the command exits 2 with this message.

    Args:
        message: What is wrong, naming the option.
        usage: The command's usage line, shown above the message.
    """

    def __init__(self, message: str, *, usage: str | None = None) -> None:
        super().__init__(message)
        self.usage = usage


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors raise `UsageError` instead of exiting."""

    def error(self, message: str) -> NoReturn:
        """Raise `UsageError` with argparse's message and the usage line."""
        raise UsageError(message, usage=self.format_usage())


def prog() -> str:
    """The name the program was started by, for usage lines."""
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if argv0 in ("__main__.py", "-m", "-c", ""):
        return "python -m trio_tinkex_recovery"
    return "trio-tinkex-recovery"


class Output:
    """A text stream that a closed reader ends quietly instead of crashing.

    ``watch | head -1`` closes the pipe after one line: the next write fails
    with `BrokenPipeError`.  From then on nothing is written, `closed` is
    true (commands stop when they see it), and the file descriptor points at
    ``/dev/null`` so that the interpreter's last flush cannot fail either.
    A stream that was closed before the program started (``>&-``, so
    ``sys.stdout`` is ``None``) is closed from the start.

    Args:
        stream: Where to write, or ``None`` for nowhere.
    """

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        #: Set once the reader is gone.
        self.gone = trio.Event()
        if stream is None:
            self.gone.set()

    @property
    def closed(self) -> bool:
        """Whether writing has stopped for good."""
        return self.gone.is_set()

    def isatty(self) -> bool:
        """Whether the stream is an open terminal."""
        return self.stream is not None and not self.closed and self.stream.isatty()

    def write(self, text: str) -> None:
        """Write and flush ``text``; after a broken pipe, nothing."""
        if self.stream is None or self.closed:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except BrokenPipeError:
            self.gone.set()
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self.stream.fileno())
                os.close(devnull)

    def line(self, text: str = "") -> None:
        """Write ``text`` and a newline."""
        self.write(text + "\n")


@attrs.frozen
class Command(Generic[OptionsT]):
    """One command: how its options are parsed, and how it runs."""

    #: Its name on the command line.
    name: str
    #: What it does, in a line, for the top-level help.
    summary: str
    #: ``parse(argv, prog)``: the command's options, or `UsageError`.
    parse: Callable[[Sequence[str], str], OptionsT]
    #: ``run(options, out, err)``: do it; return the exit code.
    run: Callable[[OptionsT, Output, Output], int]

    def main(self, argv: Sequence[str], prog: str) -> int:
        """Parse ``argv`` and run; a closed stdout ends it quietly at once.

        Raises:
            UsageError: Bad usage or configuration.
        """
        options = self.parse(argv, f"{prog} {self.name}")
        out = Output(sys.stdout)
        if out.closed:  # started with stdout closed (>&-): nothing to show
            return EXIT_OK
        return self.run(options, out, Output(sys.stderr))


@attrs.define
class Stop:
    """Why a command stopped, once it has."""

    reason: str | None = None

    async def until(self, body: Callable[[], Awaitable[None]]) -> None:
        """Run ``body``; Ctrl-C or SIGTERM cancels it and records why here.

        Both end the command the same way: cleanly, with its summary.  Once
        ``body`` is over, a second Ctrl-C is a `KeyboardInterrupt` again.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_on_signal, self, nursery.cancel_scope)
            await body()
            nursery.cancel_scope.cancel()


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is Ctrl-C, possibly wrapped in exception groups."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(KeyboardInterrupt)
        return rest is None
    return False


def run_trio(main: Callable[[], Awaitable[int]]) -> int:
    """``trio.run(main)``; a Ctrl-C that gets through ends quietly (130).

    Raises:
        UsageError: Raised inside nurseries, unwrapped from their groups.
    """
    try:
        return trio.run(main)
    except BaseException as exc:
        if _interrupted(exc):
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if isinstance(exc, BaseExceptionGroup):
            usage, rest = exc.split(UsageError)
            if usage is not None and rest is None:
                leaf: BaseException = usage
                while isinstance(leaf, BaseExceptionGroup):
                    leaf = leaf.exceptions[0]
                raise leaf from None
        raise


async def _on_signal(stop: Stop, scope: trio.CancelScope) -> None:
    signals = [signal.SIGINT]
    if hasattr(signal, "SIGTERM"):
        signals.append(signal.SIGTERM)
    with trio.open_signal_receiver(*signals) as received:
        async for signum in received:
            sigint = signum == signal.SIGINT
            stop.reason = "interrupted (Ctrl-C)" if sigint else "terminated (SIGTERM)"
            scope.cancel()
            return


class _Printable(logging.Filter):
    """Makes each log message safe for a terminal (`printable`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = printable(record.getMessage())
        record.args = None
        return True


def configure_logging(verbosity: int, *, console: Any = None) -> None:
    """No stray log output unless asked; ``-v`` polls and events, ``-vv`` all.

    Args:
        verbosity: How many ``-v`` were given.
        console: The live view's rich console, to log above its table;
            ``None`` logs plain lines to stderr.
    """
    package = logging.getLogger("trio_tinkex_recovery")
    package.addHandler(logging.NullHandler())  # no "last resort" output
    if verbosity <= 0:
        return
    handler: logging.Handler
    if console is not None:
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        )
    handler.addFilter(_Printable())
    package.addHandler(handler)
    package.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)
    logger.setLevel(logging.DEBUG)
