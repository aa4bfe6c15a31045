"""Connection configuration: the API key, where it may be sent, timeouts.

The key is a secret: `Config` never shows it, and `redact` masks it in any
text that may have come from a server before that text goes anywhere.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from typing import Any, Final

import attrs
import httpx

from ._policy import Policy
from ._validators import non_negative_int, positive, positive_int

__all__ = ["DEFAULT_BASE_URL", "Config", "mask_key", "redact"]

#: The official SDK's default service address.
DEFAULT_BASE_URL = "https://tinker.thinkingmachines.dev/services/tinker-prod"

_KEY_PREFIX: Final = "tml-"
#: What a valid key looks like.  Every character after the prefix is
#: unreserved in URLs and needs no escape in JSON, so a valid key
#: URL-encoded or JSON-escaped (as ``urllib.parse.quote`` and ``json.dumps``
#: do it) is the key itself, character for character.
#: What a Tinker API key looks like.
KEY_SHAPE: Final = re.compile(r"tml-[A-Za-z0-9_-]+")
#: What replaces a key in text.  None of its characters can be in a key, so
#: a mask never joins its neighbours into a piece of one.
REDACTED: Final = "****"
#: The largest response body read by default: 8 MiB.
DEFAULT_MAX_RESPONSE_BYTES: Final = 8 * 1024 * 1024


def mask_key(key: str) -> str:
    """The key as it may be shown on its own: its prefix, never its secret part."""
    return f"{_KEY_PREFIX}****" if key.startswith(_KEY_PREFIX) else "****"


def _hex(code: int, width: int) -> str:
    """A pattern for ``code`` in ``width`` hex digits, in either case."""
    return "".join(
        f"[{d}{d.upper()}]" if d.isalpha() else d for d in f"{code:0{width}x}"
    )


#: The shortest secret part (after ``tml-``) masked on its own.  A shorter
#: one is masked only with its prefix: masking a few letters wherever they
#: appear would garble text without protecting anything.
_MIN_SECRET: Final = 8


def _spelling(char: str) -> str:
    """A pattern for ``char`` raw, percent-encoded (also twice, ``%2574``, in
    either case) or JSON-escaped with any number of backslashes (``\\u0074``,
    ``\\\\u0074`` after a second encoding, and so on)."""
    code = ord(char)
    return f"(?:{re.escape(char)}|%(?:25)*{_hex(code, 2)}|\\\\+u{_hex(code, 4)})"


@functools.lru_cache(maxsize=8)
def _key_pattern(key: str) -> re.Pattern[str]:
    """Finds every place ``key``, or its secret part alone, starts, spelt raw
    or with any of its characters percent-encoded or JSON-escaped.

    Compiled once per key.  A lookahead, so overlapping occurrences are all
    found.
    """
    secret = key.removeprefix(_KEY_PREFIX)
    prefix = "".join(map(_spelling, _KEY_PREFIX))
    body = "".join(map(_spelling, secret))
    # Where an occurrence can start: its first character raw, or an escape.
    # Stated first, it lets the engine skip every other position quickly.
    starts = {_KEY_PREFIX[0], "%", "\\"}
    if len(secret) >= _MIN_SECRET:
        starts.add(secret[0])
        occurrence = f"(?:{prefix})?{body}"
    else:
        occurrence = f"{prefix}{body}"
    first = "".join(map(re.escape, sorted(starts)))
    return re.compile(f"(?=[{first}])(?=({occurrence}))")


def redact(text: str, key: str) -> str:
    """``text`` with every occurrence of the API key ``key`` masked.

    Call it on any text a server (or anything else outside this library)
    may have written, before it is shortened, logged or shown.  The key is
    found with or without its ``tml-`` prefix (the secret part alone, when
    it has 8 characters or more), raw, percent-encoded in either case (also
    twice), and JSON-escaped with ``\\uXXXX`` behind any number of
    backslashes (so also inside JSON nested in JSON), any mix of these from
    one character to the next; each stretch of text covered by occurrences
    becomes `REDACTED`.  Nothing else changes: a ``key`` that is not a
    valid Tinker API key (``tml-`` and letters, digits, ``-``, ``_``) masks
    nothing, so text is never garbled by masking a stray short string.
    """
    if not KEY_SHAPE.fullmatch(key):
        return text
    secret = key.removeprefix(_KEY_PREFIX)
    if (
        (secret if len(secret) >= _MIN_SECRET else key) not in text
        and "%" not in text
        and "\\u" not in text
    ):
        return text
    spans: list[list[int]] = []  # merged [start, end) of all occurrences
    for match in _key_pattern(key).finditer(text):
        start, end = match.span(1)
        if spans and start <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    if not spans:
        return text
    pieces: list[str] = []
    done = 0
    for start, end in spans:
        pieces += (text[done:start], REDACTED)
        done = end
    pieces.append(text[done:])
    return "".join(pieces)


def _check_key(_: object, attribute: attrs.Attribute[str], value: object) -> None:
    # Messages here never include the value, nor any part of it: it is secret.
    name = f"Config.{attribute.name}"
    where = "check TINKER_API_KEY or the api_key passed"
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str")
    if not value:
        raise ValueError(f"{name} is empty: set TINKER_API_KEY or pass api_key")
    if not value.startswith(_KEY_PREFIX):
        raise ValueError(
            f"{name} is malformed: a Tinker API key starts with {_KEY_PREFIX!r}; "
            f"{where}"
        )
    if not KEY_SHAPE.fullmatch(value):
        raise ValueError(
            f"{name} is malformed: after {_KEY_PREFIX!r} a Tinker API key has one "
            f"or more letters, digits, '-' and '_', nothing else; {where}"
        )


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is this machine: ``localhost``, 127.0.0.0/8 or ``::1``.

    Only these spellings: a name under ``.localhost`` may resolve anywhere.
    """
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_base_url(
    config: Config, attribute: attrs.Attribute[str], value: object
) -> None:
    if not isinstance(value, str):
        raise TypeError(f"Config.{attribute.name} must be a str, got {value!r}")
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise ValueError(f"Config.{attribute.name} is not a URL: {value!r}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(
            f"Config.{attribute.name} must be an http(s) URL with a host, got {value!r}"
        )
    if url.userinfo:
        raise ValueError(f"Config.{attribute.name} must not carry credentials")
    if url.port is not None and not 1 <= url.port <= 65535:
        raise ValueError(
            f"Config.{attribute.name} has port {url.port}, outside 1-65535: {value!r}"
        )
    if (
        url.scheme == "http"
        and not is_loopback_host(url.host)
        and not config.allow_insecure_http
    ):
        raise ValueError(
            f"Config.{attribute.name} {value!r} is plain http to another machine, "
            "which would send the API key in clear text; use https, or pass "
            "allow_insecure_http=True if you really mean it"
        )


def _check_recovery(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, Policy):
        raise TypeError(
            f"Config.{attribute.name} must be a Policy or None, got {value!r}"
        )


@attrs.frozen(kw_only=True, repr=False)
class Config:
    """Where and how to reach Tinker.

    ``repr()`` and ``str()`` mask the API key.  The key is only ever sent
    over https, or over http to this machine (loopback), unless
    ``allow_insecure_http=True``.
    """

    #: The Tinker API key (``tml-…``); never shown.
    api_key: str = attrs.field(validator=_check_key)
    #: The service's address.
    base_url: str = attrs.field(default=DEFAULT_BASE_URL)
    #: Seconds one HTTP request may take in all: connecting, sending,
    #: waiting for the answer and reading all of it.
    timeout: float = attrs.field(default=60.0, validator=positive)
    #: How often one request is retried after a transient failure.
    max_retries: int = attrs.field(default=10, validator=non_negative_int)
    #: The default recovery policy of a monitor built from this config.
    recovery: Policy | None = attrs.field(default=None, validator=_check_recovery)
    #: Allow sending the key over plain http to another machine.
    allow_insecure_http: bool = False
    #: The largest response body read, in bytes; a larger one fails its
    #: request with `ResponseTooLargeError`.
    max_response_bytes: int = attrs.field(
        default=DEFAULT_MAX_RESPONSE_BYTES, validator=positive_int
    )

    def __attrs_post_init__(self) -> None:
        # Checked after all fields are set: it reads allow_insecure_http.
        _check_base_url(self, attrs.fields(Config).base_url, self.base_url)

    def __repr__(self) -> str:
        return (
            f"Config(api_key={mask_key(self.api_key)!r}, base_url={self.base_url!r}, "
            f"timeout={self.timeout!r}, max_retries={self.max_retries!r}, "
            f"recovery={self.recovery!r}, "
            f"max_response_bytes={self.max_response_bytes!r})"
        )

    __str__ = __repr__

    @classmethod
    def from_env(cls, **overrides: Any) -> Config:
        """Read ``TINKER_API_KEY`` and ``TINKER_BASE_URL``; keywords win.

        Raises:
            ValueError: The key is missing or malformed (the message never
                shows it), or the base URL is not allowed.
        """
        if "api_key" not in overrides:
            key = os.environ.get("TINKER_API_KEY", "")
            if not key:
                raise ValueError("TINKER_API_KEY is not set")
            overrides["api_key"] = key
        if "base_url" not in overrides and os.environ.get("TINKER_BASE_URL"):
            overrides["base_url"] = os.environ["TINKER_BASE_URL"]
        return cls(**overrides)
