"""Small shared pieces with no better home."""

from __future__ import annotations

from typing import Any, NoReturn, TypeVar

__all__ = ["NoPublicConstructor"]

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
