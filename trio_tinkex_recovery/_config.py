"""Connection configuration: the API key, where it may be sent, timeouts."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import attrs
import httpx

from ._policy import Policy
from ._validators import non_negative_int, positive

__all__ = ["DEFAULT_BASE_URL", "Config"]

#: The official SDK's default service address.
DEFAULT_BASE_URL = "https://tinker.thinkingmachines.dev/services/tinker-prod"

_KEY_PREFIX = "tml-"


def mask_key(key: str) -> str:
    """The key as it may appear anywhere: its prefix, never its secret part."""
    return f"{_KEY_PREFIX}****" if key.startswith(_KEY_PREFIX) else "****"


def _check_key(_: object, attribute: attrs.Attribute[str], value: object) -> None:
    # Messages here never include the value: it is a secret.
    if not isinstance(value, str):
        raise TypeError(f"Config.{attribute.name} must be a str")
    if not value:
        raise ValueError(
            f"Config.{attribute.name} is empty: set TINKER_API_KEY or pass api_key"
        )
    if not value.startswith(_KEY_PREFIX):
        raise ValueError(
            f"Config.{attribute.name} is malformed: a Tinker API key starts "
            f"with {_KEY_PREFIX!r}"
        )
    if len(value) == len(_KEY_PREFIX) or not all("!" <= c <= "~" for c in value):
        raise ValueError(
            f"Config.{attribute.name} is malformed: after {_KEY_PREFIX!r} it must "
            "be printable ASCII without whitespace"
        )


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
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
    #: Seconds one HTTP request may take.
    timeout: float = attrs.field(default=60.0, validator=positive)
    #: How often one request is retried after a transient failure.
    max_retries: int = attrs.field(default=10, validator=non_negative_int)
    #: The default recovery policy of a monitor built from this config.
    recovery: Policy | None = attrs.field(default=None, validator=_check_recovery)
    #: Allow sending the key over plain http to another machine.
    allow_insecure_http: bool = False

    def __attrs_post_init__(self) -> None:
        # Checked after all fields are set: it reads allow_insecure_http.
        _check_base_url(self, attrs.fields(Config).base_url, self.base_url)

    def __repr__(self) -> str:
        return (
            f"Config(api_key={mask_key(self.api_key)!r}, base_url={self.base_url!r}, "
            f"timeout={self.timeout!r}, max_retries={self.max_retries!r}, "
            f"recovery={self.recovery!r})"
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
