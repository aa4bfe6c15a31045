"""Masking the API key in text: whole keys only, however they are spelt."""

from __future__ import annotations

import json
import urllib.parse

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from trio_tinkex_recovery import Config
from trio_tinkex_recovery._config import redact

keys = st.from_regex(r"tml-[A-Za-z0-9_-]{8,40}", fullmatch=True)
#: Text around a key, from anywhere in Unicode (the server's choice).
texts = st.text(max_size=60)


def windows(key: str, size: int = 8) -> set[str]:
    """Every run of ``size`` characters of ``key``."""
    return {key[i : i + size] for i in range(len(key) - size + 1)}


def has_window(text: str, key: str) -> bool:
    return any(window in text for window in windows(key))


@st.composite
def spellings(draw: st.DrawFn, key: str) -> str:
    """``key`` with each character raw, percent-encoded or JSON-escaped."""
    styles = st.sampled_from(["raw", "%X", "%x", "%25x", "u", "U", "uu", "uuuu"])
    out = []
    for char in key:
        style = draw(styles)
        code = ord(char)
        out.append(
            char
            if style == "raw"
            else f"%{code:02X}"
            if style == "%X"
            else f"%{code:02x}"
            if style == "%x"
            else f"%25{code:02x}"
            if style == "%25x"
            else f"\\u{code:04x}"
            if style == "u"
            else f"\\u{code:04X}"
            if style == "U"
            else f"\\\\u{code:04x}"
            if style == "uu"
            else f"\\\\\\\\u{code:04x}"
        )
    return "".join(out)


@given(key=keys, before=texts, after=texts)
@example(key="tml-abtml-abcdefgh", before="tml-ab", after="")
@example(key="tml-xtml-xtml-xtml-x", before="tml-x", after="tml-x")
@example(key="tml-aaaaaaaaaaaa", before="aaaaaaa", after="aaaaaaa")
def test_masked_text_holds_no_piece_of_the_key(key, before, after):
    """Around a key anywhere in text, masking leaves no 8 characters of it."""
    assume(not has_window(before, key) and not has_window(after, key))
    masked = redact(before + key + after, key)
    assert not has_window(masked, key)
    assert "****" in masked


@given(key=keys, before=texts, after=texts, data=st.data())
def test_encoded_keys_are_masked_too(key, before, after, data):
    """URL-encoded, JSON-escaped or mixed spellings of the key are masked."""
    assume(not has_window(before, key) and not has_window(after, key))
    spelt = data.draw(spellings(key))
    masked = redact(before + spelt + after, key)
    assert spelt not in masked
    assert not has_window(masked, key)
    assert not has_window(urllib.parse.unquote(masked), key)


@given(key=keys, before=texts, after=texts, data=st.data())
def test_the_secret_part_alone_is_masked_in_any_spelling(key, before, after, data):
    """A server that drops the ``tml-`` prefix still never shows the secret."""
    secret = key.removeprefix("tml-")
    assume(not has_window(before, secret) and not has_window(after, secret))
    spelt = data.draw(spellings(secret))
    masked = redact(before + spelt + after, key)
    assert not has_window(masked, secret)
    assert not has_window(urllib.parse.unquote(masked), secret)


@given(key=keys, depth=st.integers(1, 4))
def test_a_key_in_json_nested_in_json_is_masked(key, depth):
    """JSON in a JSON string, as deep as it goes, with escaped letters too."""
    escaped = "".join(f"\\u{ord(c):04x}" if c in "-ae" else c for c in key)
    body = '{"detail": "' + escaped + '"}'
    for _ in range(depth):
        body = json.dumps({"body": body})
    masked = redact(body, key)
    assert "****" in masked
    decoded = masked
    for _ in range(depth):
        decoded = json.loads(decoded)["body"]
    assert not has_window(json.loads(decoded)["detail"], key.removeprefix("tml-"))


@given(key=keys, text=texts)
def test_text_without_the_key_is_unchanged(key, text):
    """Text that does not contain the key comes back as it was."""
    assume(key.removeprefix("tml-") not in text)
    assert redact(text, key) == text


@given(key=st.text(max_size=20), text=texts)
@example(key="e", text="Config.api_key is malformed")
@example(key="tml-", text="tml-tml-")
@example(key="", text="anything")
def test_an_invalid_key_masks_nothing(key, text):
    """A string that is no valid key is never masked: short strings stay."""
    try:
        Config(api_key=key)
    except (ValueError, TypeError):
        assert redact(text, key) == text


@given(key=keys)
def test_standard_encodings_of_a_valid_key_are_the_key(key):
    """The key's alphabet needs no escape: quote() and dumps() leave it as is."""
    assert urllib.parse.quote(key, safe="") == key
    assert json.dumps(key) == f'"{key}"'


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("key=tml-abcdefgh1234.", "key=****."),
        ("tml-abcdefgh1234tml-abcdefgh1234", "****"),
        ("a tml-abcdefgh123 b", "a tml-abcdefgh123 b"),
        ("TML-ABCDEFGH1234", "TML-ABCDEFGH1234"),
        ('{"detail":"\\u0074ml-abcdefgh1234"}', '{"detail":"****"}'),
        ("/runs/%74ml-abcdefgh1234/x", "/runs/****/x"),
        ("echo: abcdefgh1234!", "echo: ****!"),
        ("tml\\\\u002dabcdefgh1234", "****"),
        ("tml-\\u0061bcdefgh\\u0031234", "****"),
        ("tml-\\\\u0061bcdefgh1234", "****"),
        ("%2574ml%2Dabcdefgh%31234", "****"),
        ("abcdefgh123", "abcdefgh123"),
    ],
)
def test_what_masking_looks_like(text, masked):
    """Each whole occurrence becomes ****; near misses stay as they are."""
    assert redact(text, "tml-abcdefgh1234") == masked


def test_the_package_loggers_mask_a_registered_key_until_it_is_unregistered(caplog):
    """Any record of a package logger, arguments and traceback included."""
    import logging

    from trio_tinkex_recovery._secrets import registered

    key = "tml-abcdefgh1234"
    log = logging.getLogger("trio_tinkex_recovery.anywhere")
    caplog.set_level(logging.DEBUG)
    with registered(key):
        try:
            raise RuntimeError(f"boom {key}")
        except RuntimeError:
            log.exception("failed with %s and %r", key, {"k": key[4:]})
    log.info("after: %s", key)
    inside, after = caplog.records
    assert "abcdefgh1234" not in caplog.text.split("after:")[0]
    assert inside.getMessage().count("****") == 2
    assert "after: tml-abcdefgh1234" in after.getMessage()
