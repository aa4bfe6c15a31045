"""``--notify URL``, ``--notify-on NAME,...``, ``--notify-secret``: tell a person.

Each ``--notify`` URL gets its own `Notifier` (its own queue and delivery
task), started next to the monitor.  The secret comes from
``--notify-secret`` or, better (a command line is visible to other users
of the machine), from ``TTR_NOTIFY_SECRET``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

from .._notify import DEFAULT_EVENTS, event_names, notify, secret_key
from ._runtime import UsageError

if TYPE_CHECKING:
    import argparse

    from .._notify import Notifier

__all__ = ["SECRET_VARIABLE", "add_notify_options", "build_notifiers", "summary"]

#: Where the signing secret is read when ``--notify-secret`` is not given.
SECRET_VARIABLE: Final = "TTR_NOTIFY_SECRET"


def add_notify_options(parser: argparse.ArgumentParser) -> None:
    """``--notify``, ``--notify-on`` and ``--notify-secret`` (see `build_notifiers`)."""
    group = parser.add_argument_group("notifications")
    group.add_argument(
        "--notify",
        metavar="URL",
        action="append",
        help="POST a signed CloudEvent for each chosen event to URL (https, or "
        "http to this machine); a hooks.slack.com URL gets a Slack message. "
        "Repeatable",
    )
    group.add_argument(
        "--notify-on",
        metavar="NAME,...",
        help="the events to notify, comma-separated, e.g. exhausted,stalled,"
        f"completed (default: {','.join(DEFAULT_EVENTS)})",
    )
    group.add_argument(
        "--notify-secret",
        metavar="whsec_…",
        help="the Standard Webhooks signing secret (default: "
        f"${SECRET_VARIABLE}; prefer it, a command line is visible to others)",
    )


def build_notifiers(args: argparse.Namespace) -> tuple[Notifier, ...]:
    """One `Notifier` per ``--notify`` URL, none without.

    Raises:
        UsageError: A URL that is not https (or http to this machine), an
            unknown event name, a malformed secret (never shown), or
            ``--notify-on`` / ``--notify-secret`` without ``--notify``.
    """
    urls: list[str] = args.notify or []
    if not urls:
        for flag, value in (
            ("--notify-on", args.notify_on),
            ("--notify-secret", args.notify_secret),
        ):
            if value is not None:
                raise UsageError(f"argument {flag}: needs --notify URL")
        return ()
    on: frozenset[str] | tuple[str, ...] = DEFAULT_EVENTS
    if args.notify_on is not None:
        names = [name.strip() for name in args.notify_on.split(",") if name.strip()]
        try:
            on = event_names(names)
        except ValueError as exc:
            raise UsageError(
                f"argument --notify-on: {str(exc).removeprefix('notify: ')}"
            ) from None
    secret: str | None = args.notify_secret
    source = "argument --notify-secret"
    if secret is None:
        secret = os.environ.get(SECRET_VARIABLE) or None
        source = SECRET_VARIABLE
    if secret is not None:
        try:
            secret_key(secret)
        except ValueError as exc:
            raise UsageError(f"{source}: {str(exc).removeprefix('notify: ')}") from None
    notifiers = []
    for url in dict.fromkeys(urls):
        try:
            notifiers.append(notify(url, secret=secret, on=on))
        except (TypeError, ValueError) as exc:
            message = str(exc).removeprefix("notify: ")
            raise UsageError(f"argument --notify: {message}") from None
    return tuple(notifiers)


def summary(notifiers: tuple[Notifier, ...]) -> list[str]:
    """One line per receiver for the summary: sent, failed, dropped."""
    lines = []
    for notifier in notifiers:
        stats = notifier.statistics()
        line = (
            f"notifications to {notifier.receiver}: {stats.sent} sent, "
            f"{stats.failed} failed, {stats.dropped} dropped"
        )
        if stats.failed or stats.dropped:
            line += " (-v shows why)"
        lines.append(line)
    return lines
