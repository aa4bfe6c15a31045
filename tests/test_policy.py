"""Policy: defaults, validation, from_mapping."""

from __future__ import annotations

import math

import pytest

from trio_tinkex_recovery import Best, Latest, Policy, Specific


def test_defaults_are_conservative():
    """Recovery is off by default; the others are the documented ones."""
    policy = Policy()
    assert policy.enabled is False
    assert (policy.max_attempts, policy.backoff, policy.max_backoff) == (3, 5.0, 60.0)
    assert (policy.poll_interval, policy.jitter) == (30.0, 0.1)
    assert policy.checkpoint_strategy == Latest()
    assert policy.fallback
    assert policy.restore_optimizer
    assert policy.follow_recovered
    assert policy.on_recovery is None
    assert policy.on_failure is None


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"max_attempts": 0}, ValueError, "max_attempts"),
        ({"max_attempts": 1.5}, TypeError, "max_attempts"),
        ({"max_attempts": True}, TypeError, "max_attempts"),
        ({"backoff": -1}, ValueError, "backoff"),
        ({"backoff": math.nan}, ValueError, "backoff"),
        ({"backoff": "5"}, TypeError, "backoff"),
        ({"max_backoff": 1}, ValueError, "max_backoff"),
        ({"poll_interval": 0}, ValueError, "poll_interval"),
        ({"poll_interval": math.inf}, ValueError, "poll_interval"),
        ({"jitter": 1}, ValueError, "jitter"),
        ({"jitter": -0.1}, ValueError, "jitter"),
        ({"enabled": "yes"}, TypeError, "enabled"),
        ({"fallback": 1}, TypeError, "fallback"),
        ({"checkpoint_strategy": "latest"}, TypeError, "checkpoint_strategy"),
        ({"on_recovery": 3}, TypeError, "on_recovery"),
        ({"on_failure": "x"}, TypeError, "on_failure"),
    ],
)
def test_invalid_values_name_the_field(kwargs, error, field):
    """Each bad value raises with a message naming Policy.<field>."""
    with pytest.raises(error, match=f"Policy\\.{field}"):
        Policy(**kwargs)


def test_backoff_delays():
    """delay n = min(backoff·2^(n-1), max_backoff)."""
    policy = Policy(backoff=5, max_backoff=60)
    assert [policy.backoff_delay(n) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]
    assert Policy(backoff=0, max_backoff=0).backoff_delay(3) == 0
    assert policy.backoff_delay(10_000) == 60


def test_from_mapping_with_tinkex_millisecond_names():
    """poll_interval_ms, backoff_ms and max_backoff_ms become seconds."""
    policy = Policy.from_mapping(
        {
            "enabled": True,
            "poll_interval_ms": 15_000,
            "backoff_ms": 2_500,
            "max_backoff_ms": 20_000,
            "max_attempts": 4,
        }
    )
    assert (policy.poll_interval, policy.backoff, policy.max_backoff) == (15, 2.5, 20)
    assert policy.max_attempts == 4


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("latest", Latest()),
        ("best", Best()),
        ("tinker://run-1/weights/0003", Specific("tinker://run-1/weights/0003")),
        (Best(metric="acc", mode="max"), Best(metric="acc", mode="max")),
    ],
)
def test_from_mapping_strategies(value, expected):
    """checkpoint_strategy accepts 'latest', 'best', a tinker:// path or a strategy."""
    policy = Policy.from_mapping({"checkpoint_strategy": value})
    assert policy.checkpoint_strategy == expected


def test_from_mapping_rejects_unknown_keys_naming_them():
    """Every unknown key is named."""
    with pytest.raises(ValueError, match="'bogus', 'poll_intervall'"):
        Policy.from_mapping({"poll_intervall": 3, "bogus": 1, "enabled": True})


@pytest.mark.parametrize(
    ("mapping", "match"),
    [
        ({"poll_interval": 3, "poll_interval_ms": 3000}, "either 'poll_interval_ms'"),
        ({"backoff_ms": "5"}, "Policy.backoff_ms"),
        ({"checkpoint_strategy": "newest"}, "Policy.checkpoint_strategy"),
        ({"checkpoint_strategy": "tinker://a/b"}, "Policy.checkpoint_strategy"),
        ({"poll_interval_ms": 0}, "Policy.poll_interval"),
        ({1: 2}, "keys must be str"),
    ],
)
def test_from_mapping_rejects_bad_values(mapping, match):
    """Bad values and conflicts name the field."""
    with pytest.raises((ValueError, TypeError), match=match):
        Policy.from_mapping(mapping)


def test_from_mapping_needs_a_mapping():
    """A non-mapping is a TypeError."""
    with pytest.raises(TypeError, match="mapping"):
        Policy.from_mapping([("enabled", True)])  # type: ignore[arg-type]


def test_strategies_validate():
    """Specific needs a checkpoint path; Best a known mode and callable key."""
    with pytest.raises(ValueError, match=r"Specific\.path"):
        Specific("s3://bucket/x")
    with pytest.raises(ValueError, match=r"Best\.mode"):
        Best(mode="lowest")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Best\.key"):
        Best(key=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Best\.metric"):
        Best(metric="")


def test_strategy_names():
    """Strategies print the way events and logs show them."""
    assert str(Latest()) == "latest"
    assert str(Specific("tinker://r/weights/a")) == "tinker://r/weights/a"
    assert str(Best()) == "best(loss, min)"
    assert str(Best(key=len, mode="max")) == "best(key, max)"


def test_policy_is_frozen():
    """A policy cannot change under a running monitor."""
    import attrs

    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        Policy().enabled = True  # type: ignore[misc]


def test_millisecond_errors_name_the_key_given():
    """A bad *_ms value is reported with the key and value the caller wrote."""
    with pytest.raises(ValueError, match=r"\(from poll_interval_ms=-5\)"):
        Policy.from_mapping({"poll_interval_ms": -5})
    with pytest.raises(ValueError, match=r"max_backoff.*\(from max_backoff_ms=1\)"):
        Policy.from_mapping({"backoff_ms": 5000, "max_backoff_ms": 1})


@pytest.mark.parametrize("interval", [1e-300, 5e-324, 0.01, 0.0999])
def test_poll_interval_has_a_floor_of_a_tenth_of_a_second(interval):
    """Polling more than ten times a second per run is refused, saying so."""
    with pytest.raises(ValueError, match=r"Policy\.poll_interval must be ≥ 0\.1, got"):
        Policy(poll_interval=interval)
    with pytest.raises(ValueError, match=r"poll_interval must be ≥ 0\.1"):
        Policy.from_mapping({"poll_interval_ms": interval * 1000})
    assert Policy(poll_interval=0.1).poll_interval == 0.1
