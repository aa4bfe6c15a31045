"""Config: the key, its masking, where it may be sent."""

from __future__ import annotations

import pytest

from trio_tinkex_recovery import Config, Policy
from trio_tinkex_recovery._config import DEFAULT_BASE_URL, redact

KEY = "tml-SECRET-abcdef123456"


def test_repr_and_str_mask_the_key():
    """The key never appears in repr() or str()."""
    config = Config(api_key=KEY)
    for text in (repr(config), str(config), f"{config}"):
        assert "SECRET" not in text
        assert "tml-****" in text


def test_from_env(monkeypatch):
    """from_env reads TINKER_API_KEY and TINKER_BASE_URL; keywords win."""
    monkeypatch.setenv("TINKER_API_KEY", KEY)
    monkeypatch.setenv("TINKER_BASE_URL", "http://127.0.0.1:8080")
    config = Config.from_env(timeout=5)
    assert config.api_key == KEY
    assert config.base_url == "http://127.0.0.1:8080"
    assert config.timeout == 5
    monkeypatch.delenv("TINKER_BASE_URL")
    assert Config.from_env().base_url == DEFAULT_BASE_URL


def test_missing_key_says_so(monkeypatch):
    """No key: a ValueError naming TINKER_API_KEY."""
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    with pytest.raises(ValueError, match="TINKER_API_KEY is not set"):
        Config.from_env()


@pytest.mark.parametrize(
    "key",
    [
        "sk-SECRET",
        "tml-",
        "tml-SEC RET",
        "tml-SECRET\n",
        "tml-SEC.RET",
        "tml-SEC%52ET",
        "tml-SEC\\u0052ET",
        "tml-SECRÉT",
        "TML-SECRET",
    ],
)
def test_malformed_key_is_refused_without_echo(key):
    """A malformed key is named malformed, with what a key looks like and
    where it came from; no part of its value is shown."""
    with pytest.raises(ValueError, match="api_key is malformed") as info:
        Config(api_key=key)
    message = str(info.value)
    assert "SEC" not in message
    assert "RET" not in message
    assert "TINKER_API_KEY" in message
    assert "'tml-'" in message


@pytest.mark.parametrize("key", ["e", "a", "-", "tml", "Config"])
def test_a_short_malformed_key_leaves_the_message_readable(key):
    """A one-letter key is refused with the same message, not masked into it."""
    with pytest.raises(ValueError, match="api_key is malformed") as info:
        Config(api_key=key)
    assert str(info.value) == (
        "Config.api_key is malformed: a Tinker API key starts with 'tml-'; "
        "check TINKER_API_KEY or the api_key passed"
    )
    assert redact(str(info.value), key) == str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://tinker.example.com",
        "http://localhost:8000",
        "http://127.0.0.1:8000",
        "http://127.8.9.10",
        "http://[::1]:9000",
        "https://tinker.example.com:1",
        "https://tinker.example.com:65535",
    ],
)
def test_allowed_base_urls(url):
    """https anywhere; plain http only to this machine."""
    assert Config(api_key=KEY, base_url=url).base_url == url


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("http://tinker.example.com", "clear text"),
        ("http://10.0.0.1:8000", "clear text"),
        ("ftp://example.com", "http\\(s\\) URL"),
        ("not a url", "http\\(s\\) URL"),
        ("https://user:pw@example.com", "credentials"),
        ("http://evil.localhost:8000", "clear text"),
        ("http://localhost.evil.example", "clear text"),
        ("http://127.0.0.1.nip.io", "clear text"),
        ("http://0.0.0.0:8000", "clear text"),
        ("https://tinker.example:0", "Config.base_url has port 0, outside 1-65535"),
        ("https://tinker.example:65536", "Config.base_url has port 65536"),
        ("http://127.0.0.1:99999", "Config.base_url has port 99999"),
        ("https://tinker.example:-1", "Config.base_url has port -1"),
    ],
)
def test_refused_base_urls(url, match):
    """The key is never sent in clear text to another machine."""
    with pytest.raises(ValueError, match=match):
        Config(api_key=KEY, base_url=url)


def test_insecure_http_is_an_explicit_choice():
    """allow_insecure_http=True lets plain http go elsewhere."""
    config = Config(api_key=KEY, base_url="http://tinker.lan", allow_insecure_http=True)
    assert config.base_url == "http://tinker.lan"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"timeout": 0}, ValueError),
        ({"timeout": "1"}, TypeError),
        ({"max_retries": -1}, ValueError),
        ({"recovery": {"enabled": True}}, TypeError),
        ({"max_response_bytes": 0}, ValueError),
        ({"max_response_bytes": 1.5}, TypeError),
        ({"max_response_bytes": True}, TypeError),
    ],
)
def test_invalid_values(kwargs, error):
    """Bad values name the field."""
    with pytest.raises(error, match="Config\\."):
        Config(api_key=KEY, **kwargs)


def test_recovery_policy():
    """config.recovery holds a Policy."""
    policy = Policy(enabled=True)
    assert Config(api_key=KEY, recovery=policy).recovery is policy


def test_max_response_bytes_defaults_to_eight_mebibytes():
    """Bodies are capped at 8 MiB unless configured otherwise."""
    assert Config(api_key=KEY).max_response_bytes == 8 * 1024 * 1024
    assert Config(api_key=KEY, max_response_bytes=1).max_response_bytes == 1
