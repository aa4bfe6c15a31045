"""The one masking boundary: configured keys never leave through the package.

Whatever produced a text (a server, a caller's own service or REST client,
a checkpoint path), it reaches a person through one of two doors: a log
record written by one of the package's loggers, or an event emitted by the
telemetry.  Both doors mask every key registered here, with `redact` (every
spelling of the key, its secret part alone too):

* `KeyFilter` sits on every ``trio_tinkex_recovery`` logger and rewrites
  each record's message, arguments, traceback and stack text before any
  handler, whichever it is, sees the record;
* `mask_value` is applied by the telemetry to every value of an event's
  metadata: strings are masked, errors have their arguments masked in place.

A key is registered for as long as something that knows it is open
(`registered`): a service client built from a `Config`, a monitor given
one (or finding ``TINKER_API_KEY`` set).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

from ._config import KEY_SHAPE, redact

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = [
    "KeyFilter",
    "configured_key",
    "mask",
    "mask_value",
    "register",
    "registered",
]

_PACKAGE: Final = "trio_tinkex_recovery"
#: Keys in use now, each with how many holders have it registered.
_keys: Counter[str] = Counter()


def mask(text: str) -> str:
    """``text`` with every registered key masked, in any of its spellings."""
    for key in _keys:
        text = redact(text, key)
    return text


def _mask_error(error: BaseException) -> None:
    """Mask the texts of ``error`` and of its causes and contexts, in place."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        try:
            current.args = tuple(
                mask(arg) if isinstance(arg, str) else arg for arg in current.args
            )
            notes = getattr(current, "__notes__", None)
            if isinstance(notes, list):
                notes[:] = [mask(n) if isinstance(n, str) else n for n in notes]
        except (AttributeError, TypeError):  # pragma: no cover - exotic errors
            pass
        current = current.__cause__ or current.__context__


def mask_value(value: object) -> object:
    """A metadata value as an event may carry it: strings masked, errors
    masked in place (the same object, so its type still matches)."""
    if not _keys:
        return value
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, BaseException):
        _mask_error(value)
    return value


class KeyFilter(logging.Filter):
    """Masks registered keys in every record of the logger it sits on."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _keys:
            return True
        message = record.getMessage()
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        return True


_FILTER: Final = KeyFilter()


def _install() -> None:
    """Put the filter on every logger of the package that exists now."""
    loggers = logging.Logger.manager.loggerDict
    for name in [_PACKAGE, *list(loggers)]:
        if name == _PACKAGE or name.startswith(f"{_PACKAGE}."):
            logger = logging.getLogger(name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)


def configured_key(key: str | None) -> str | None:
    """``key``, else ``TINKER_API_KEY`` if it holds a valid key."""
    if key is None:
        key = os.environ.get("TINKER_API_KEY")
    return key if key is not None and KEY_SHAPE.fullmatch(key) else None


def register(key: str | None) -> Callable[[], None]:
    """Mask ``key`` in every log record and event until the returned
    function is called (once).

    ``None`` or a string that is no valid key registers nothing.
    """
    if key is None or not KEY_SHAPE.fullmatch(key):
        return lambda: None
    _install()
    _keys[key] += 1
    done = False

    def unregister() -> None:
        nonlocal done
        if not done:
            done = True
            _keys[key] -= 1
            if _keys[key] <= 0:
                del _keys[key]

    return unregister


@contextmanager
def registered(key: str | None) -> Iterator[None]:
    """Mask ``key`` in every log record and event until the block ends."""
    unregister = register(key)
    try:
        yield
    finally:
        unregister()
