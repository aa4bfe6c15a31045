"""Small shared pieces with no better home."""

from __future__ import annotations

import contextlib
import types
from typing import Any, NoReturn, TypeVar

import attrs

__all__ = ["NoPublicConstructor", "publish"]

_T = TypeVar("_T")


class NoPublicConstructor(type):
    """A metaclass for classes handed out by factories (as in trio).

    ``Cls(...)`` raises `TypeError`; the factory calls ``Cls._create(...)``.
    """

    def __call__(cls, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(
            f"{cls.__module__.split('.')[0]}.{cls.__qualname__} has no public "
            f"constructor; {getattr(cls, '_factory_hint', 'use its factory')}"
        )

    def _create(cls: type[_T], *args: Any, **kwargs: Any) -> _T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc,no-any-return]


def publish(namespace: dict[str, Any]) -> None:
    """Show the classes and functions of a public module's ``__all__`` as its own.

    As trio and httpx do: tracebacks, reprs and docs then say
    ``trio_tinkex_recovery.NotFoundError``, not the private module a name
    is defined in, and pickle finds it there.  Constants and type aliases
    keep their own (they have no ``__module__`` to set).

    The string annotations of attrs classes are resolved first, while
    ``__module__`` still names the module whose globals they refer to:
    cattrs (through ``attrs.resolve_types``) looks them up there.  A class
    whose annotations name things imported only for type checking keeps
    them as strings, as before.

    Args:
        namespace: The public module's ``globals()``.
    """
    for name in namespace["__all__"]:
        obj = namespace[name]
        if not isinstance(obj, type | types.FunctionType):
            continue
        if isinstance(obj, type) and attrs.has(obj):
            with contextlib.suppress(NameError):
                attrs.resolve_types(obj)
        obj.__module__ = namespace["__name__"]
