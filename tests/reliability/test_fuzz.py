"""Fuzzing with hypothesis: bad input only ever raises our documented errors.

- ``TrainingRun`` / ``Checkpoint`` / ``WeightsInfo`` parsing from arbitrary
  JSON (and arbitrary response bytes) raises only `ResponseValidationError`,
  naming the field that is wrong;
- run ids: anything that could address another resource is refused with
  ``ValueError`` (``TypeError`` for non-strings) before any request is sent,
  by every entry point; accepted ids address exactly their run;
- ``Policy.from_mapping`` (and ``Policy``/``Config``) reject bad values with
  ``ValueError``/``TypeError`` naming the field, and accept good ones.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import string
from typing import Any

import httpx
import pytest
import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st

from trio_tinkex_recovery import (
    Best,
    Checkpoint,
    Config,
    Latest,
    Policy,
    ResponseValidationError,
    Specific,
    TrainingRun,
    WeightsInfo,
    open_executor,
    open_monitor,
)
from trio_tinkex_recovery._types import validate_run_id
from trio_tinkex_recovery.testing import FakeTinker

from ..conftest import FakeService
from ._support import KEY, service_client

#: Pure properties: the profile's examples (100, or 2,000 with ``nightly``).
FUZZ = settings()
#: Properties that open clients or monitors per example: half as many.
FUZZ_IO = settings(max_examples=max(1, settings.default.max_examples // 2))

# -- wire data -----------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)

CHECKPOINT = {
    "checkpoint_id": "weights/ckpt-0005",
    "checkpoint_type": "training",
    "time": "2026-11-01T12:00:00Z",
    "tinker_path": "tinker://run-1/weights/ckpt-0005",
    "size_bytes": 1024,
    "public": False,
    "expires_at": "2027-01-01T00:00:00Z",
    "user_metadata": {"loss": "0.5"},
}
RUN = {
    "training_run_id": "run-1",
    "base_model": "Qwen/Qwen3-8B",
    "model_owner": "me",
    "is_lora": True,
    "last_request_time": "2026-11-01T12:30:00+00:00",
    "corrupted": True,
    "lora_rank": 32,
    "last_checkpoint": CHECKPOINT,
    "last_sampler_checkpoint": None,
    "user_metadata": {"team": "a"},
}
WEIGHTS = {
    "base_model": "Qwen/Qwen3-8B",
    "is_lora": True,
    "lora_rank": 32,
    "train_unembed": True,
    "train_mlp": True,
    "train_attn": False,
}
KINDS = [(TrainingRun, RUN), (Checkpoint, CHECKPOINT), (WeightsInfo, WEIGHTS)]
offsets = st.integers(-23 * 60, 23 * 60).map(
    lambda minutes: dt.timezone(dt.timedelta(minutes=minutes))
)
timestamps = st.datetimes(timezones=offsets | st.none()).map(
    lambda value: value.isoformat()
)


@st.composite
def mutated(draw: st.DrawFn, valid: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A valid wire object with one field replaced, removed or nested-mutated."""
    obj = dict(valid)
    field = draw(st.sampled_from(sorted(obj)))
    action = draw(st.sampled_from(["replace", "remove", "nested", "time"]))
    if action == "remove":
        del obj[field]
    elif action == "nested" and isinstance(obj[field], dict):
        inner, _ = draw(mutated(obj[field]))
        obj[field] = inner
    elif action == "time":
        obj[field] = draw(timestamps | st.text(max_size=30))
    else:
        obj[field] = draw(json_values)
    # Unknown extra fields must never matter.
    obj.update(draw(st.dictionaries(st.text(min_size=20, max_size=25), json_values)))
    return obj, field


def parse(kind: Any, obj: object) -> Any:
    """``kind.from_json(obj)``; any error but ours fails the test."""
    try:
        return kind.from_json(obj)
    except ResponseValidationError as exc:
        return exc


def check_arbitrary(kind_valid: tuple[Any, Any], obj: object) -> None:
    kind, _ = kind_valid
    result = parse(kind, obj)
    assert isinstance(result, kind | ResponseValidationError)


@FUZZ
@given(st.sampled_from(KINDS), json_values)
def test_parsing_arbitrary_json_raises_only_our_error(kind_valid, obj):
    """Any JSON value parses or raises ResponseValidationError, nothing else."""
    check_arbitrary(kind_valid, obj)


mutated_objects = st.sampled_from(KINDS).flatmap(
    lambda kv: st.tuples(st.just(kv[0]), mutated(kv[1]))
)


def check_mutated(case: tuple[Any, tuple[dict[str, Any], str]]) -> None:
    kind, (obj, field) = case
    result = parse(kind, obj)
    if isinstance(result, ResponseValidationError):
        assert field in str(result)
    else:
        # Accepted: the value round-trips through the wire form.
        assert kind.from_json(result.to_json()) == result


@FUZZ
@given(mutated_objects)
def test_parsing_mutated_objects_names_the_bad_field(case):
    """A valid object with one bad field: the error names that field."""
    check_mutated(case)


@FUZZ
@given(json_values)
@example(10**400)
@example("1e400")
@example(-(10**400))
@example("nan")
@example(True)
def test_best_score_of_any_metric_value_is_a_float_or_none(value):
    """A checkpoint's metric, whatever the server sent, ranks or is skipped."""
    checkpoint = Checkpoint.from_json({**CHECKPOINT, "user_metadata": {"loss": value}})
    score = Best().score(checkpoint)
    assert score is None or (isinstance(score, float) and math.isfinite(score))


REQUIRED = {
    TrainingRun: (
        "training_run_id",
        "base_model",
        "model_owner",
        "is_lora",
        "last_request_time",
    ),
    Checkpoint: ("checkpoint_id", "checkpoint_type", "time", "tinker_path"),
    WeightsInfo: ("base_model", "is_lora"),
}
#: Required on the wire, but may be null (a checkpoint known by path only).
NULLABLE = {(Checkpoint, "time")}


@pytest.mark.parametrize(("kind", "valid"), KINDS)
@pytest.mark.parametrize("change", ["missing", "null", "list"])
def test_every_required_field_is_named_when_wrong(kind, valid, change):
    """Each required field, missing or mistyped, is named in the error."""
    for name in REQUIRED[kind]:
        if change == "null" and (kind, name) in NULLABLE:
            continue
        obj = dict(valid)
        if change == "missing":
            del obj[name]
        else:
            obj[name] = None if change == "null" else [1, 2]
        error = parse(kind, obj)
        assert isinstance(error, ResponseValidationError), (name, obj)
        assert name in str(error)


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"[" * 100_000, b'{"a": NaN}', b"\xff\xfe", b"null", b"[]", b'"x"'],
)
async def test_response_bodies_that_are_not_runs_are_validation_errors(body):
    """Broken bodies of a 200 answer become ResponseValidationError."""
    with pytest.raises(ResponseValidationError):
        await get_run_from_body(body)


async def get_run_from_body(body: bytes) -> TrainingRun:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    async with service_client(transport=httpx.MockTransport(answer)) as service:
        try:
            return await service.create_rest_client().get_training_run("run-1")
        except Exception as exc:  # a nursery would wrap it in a group
            error = exc
    raise error


@FUZZ
@given(
    st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | mutated(RUN).map(lambda case: json.dumps(case[0]).encode())
)
async def test_arbitrary_response_bytes_raise_only_our_error(body):
    """Whatever a server answers with 200, polling raises only our error."""
    try:
        run = await get_run_from_body(body)
    except ResponseValidationError:
        return
    assert isinstance(run, TrainingRun)


# -- run ids -------------------------------------------------------------

PRINTABLE = frozenset(chr(c) for c in range(0x21, 0x7F))
FORBIDDEN = frozenset("/\\?#%")


def acceptable(run_id: str) -> bool:
    """The documented run-id rule, written independently of the code."""
    return (
        1 <= len(run_id) <= 256
        and run_id not in (".", "..")
        and all(c in PRINTABLE and c not in FORBIDDEN for c in run_id)
    )


NASTY = [
    "",
    ".",
    "..",
    "../x",
    "..%2fx",
    "a/b",
    "/",
    "a\\b",
    "?",
    "a?b=1",
    "#",
    "a#frag",
    "%2e%2e",
    " ",
    "a b",
    " a",
    "a\t",
    "a\n",
    "a\r\nX-Injected: 1",
    "\x00",
    "a\x7f",
    "é",
    "run-é",
    "\uff52\uff55\uff4e",  # fullwidth "run"
    "\u202e",
    "\ud800",
    "a" * 257,
    "a" * 10_000,
]
run_ids = (
    st.sampled_from(NASTY)
    | st.text(max_size=300)
    | st.text(alphabet=string.printable, max_size=20)
    | st.text(alphabet=sorted(PRINTABLE), min_size=1, max_size=300)
)


@FUZZ
@given(run_ids)
@example("a" * 256)
@example(".a")
@example("...")
def test_run_id_validation_follows_the_rule(run_id):
    """validate_run_id accepts exactly the ids the rule allows."""
    if acceptable(run_id):
        assert validate_run_id(run_id) == run_id
    else:
        with pytest.raises(ValueError, match="run_id"):
            validate_run_id(run_id)


@pytest.mark.parametrize("value", [None, 3, b"run-1", ["run-1"]])
def test_run_id_of_another_type_is_a_type_error(value):
    """A run id that is not a str is a TypeError."""
    with pytest.raises(TypeError, match="run_id"):
        validate_run_id(value)


async def refused_everywhere(run_id: str) -> None:
    """Every entry point refuses ``run_id`` and sends nothing."""
    fake = FakeTinker(api_key=KEY)
    policy = Policy(enabled=True)
    async with service_client(fake) as service:
        rest = service.create_rest_client()
        with pytest.raises(ValueError, match="run_id"):
            await rest.get_training_run(run_id)
        with pytest.raises(ValueError, match="run_id"):
            await rest.list_checkpoints(run_id)
        async with open_monitor(policy=policy, service=service) as monitor:
            with pytest.raises(ValueError, match="run_id"):
                await monitor.monitor_run(run_id)
            assert monitor.monitored_runs == frozenset()
            with pytest.raises(ValueError, match="run_id"):
                await monitor.executor.recover(run_id, service, policy)
        async with open_executor(service=service) as executor:
            with pytest.raises(ValueError, match="run_id"):
                await executor.recover(run_id, None, policy)
            assert executor.recoveries == {}
        for path in (
            f"tinker://{run_id}/weights/ckpt",
            f"tinker://run/weights/{run_id}",
        ):
            with pytest.raises(ValueError, match=r"checkpoint path|Specific"):
                Specific(path)
            with pytest.raises(ValueError, match="checkpoint path"):
                await service.create_training_client_from_state(path)
    assert fake.requests == []


@pytest.mark.parametrize("run_id", NASTY)
async def test_nasty_run_ids_are_refused_before_any_request(run_id):
    """The classic attacks and mistakes are refused by every entry point."""
    assert not acceptable(run_id)
    await refused_everywhere(run_id)


@FUZZ_IO
@given(run_ids.filter(lambda r: not acceptable(r)))
async def test_refused_run_ids_never_reach_the_server(run_id):
    """Any id the rule refuses is refused by every entry point, nothing sent."""
    await refused_everywhere(run_id)


async def addressed_exactly(run_id: str) -> None:
    fake = FakeTinker(api_key=KEY)
    fake.add_run(run_id, checkpoints=["ckpt-0001"])
    async with service_client(fake) as service:
        rest = service.create_rest_client()
        run = await rest.get_training_run(run_id)
        checkpoints = await rest.list_checkpoints(run_id)
    assert run.training_run_id == run_id
    assert [c.tinker_path for c in checkpoints] == [
        f"tinker://{run_id}/weights/ckpt-0001"
    ]
    assert [r.path for r in fake.requests] == [
        f"/api/v1/training_runs/{run_id}",
        f"/api/v1/training_runs/{run_id}/checkpoints",
    ]


@FUZZ_IO
@given(run_ids.filter(acceptable))
@example("a" * 256)
@example("...")
@example("run:1")
@example("a;b=c")
@example("[::1]")
@example("~user")
async def test_accepted_run_ids_address_exactly_their_run(run_id):
    """An accepted id reaches the server as itself: no other resource."""
    await addressed_exactly(run_id)


# -- policy and config ---------------------------------------------------

NUMBER_FIELDS = {
    # field: (lowest allowed, strictly above it, integer)
    "max_attempts": (1, False, True),
    "backoff": (0, False, False),
    "max_backoff": (5.0, False, False),  # ≥ the default backoff
    "poll_interval": (0.1, False, False),
    "jitter": (0, False, False),
}
MS_FIELDS = {
    "poll_interval_ms": "poll_interval",
    "backoff_ms": "backoff",
    "max_backoff_ms": "max_backoff",
}
BOOL_FIELDS = ("enabled", "fallback", "restore_optimizer", "follow_recovered")
CALLBACK_FIELDS = ("on_recovery", "on_failure")
numbers = st.integers() | st.floats()
not_numbers = (
    st.none() | st.text() | st.lists(st.integers(), max_size=2) | st.booleans()
)


def number_ok(field: str, value: Any) -> bool:
    low, strict, integer = NUMBER_FIELDS[field]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if integer and not isinstance(value, int):
        return False
    try:
        if not math.isfinite(value):
            return False
    except OverflowError:
        return False
    if field == "jitter" and value >= 1:
        return False
    if field == "backoff" and value > 60:  # the default max_backoff
        return False
    return value > low if strict else value >= low


@st.composite
def policy_entries(draw: st.DrawFn) -> tuple[str, Any]:
    """One ``from_mapping`` key and a value, good or bad."""
    kind = draw(
        st.sampled_from(["number", "ms", "bool", "callback", "strategy", "unknown"])
    )
    if kind == "number":
        return draw(st.sampled_from(sorted(NUMBER_FIELDS))), draw(numbers | not_numbers)
    if kind == "ms":
        return draw(st.sampled_from(sorted(MS_FIELDS))), draw(numbers | not_numbers)
    if kind == "bool":
        return draw(st.sampled_from(BOOL_FIELDS)), draw(
            st.booleans() | numbers | not_numbers
        )
    if kind == "callback":
        return draw(st.sampled_from(CALLBACK_FIELDS)), draw(
            st.just(print) | not_numbers | numbers
        )
    if kind == "strategy":
        value = draw(
            st.sampled_from(
                [
                    "latest",
                    "best",
                    "tinker://run-1/weights/c",
                    "tinker://../x",
                    "Latest",
                    "",
                ]
            )
            | st.text(max_size=30)
            | st.builds(lambda t: f"tinker://{t}", st.text(max_size=30))
            | numbers
            | st.none()
        )
        return "checkpoint_strategy", value
    return draw(
        st.text(max_size=20).filter(
            lambda k: k not in attr_names() and k not in MS_FIELDS
        )
    ), 1


def attr_names() -> set[str]:
    import attrs

    return set(attrs.fields_dict(Policy))


def entry_ok(key: str, value: Any) -> bool:
    """Whether ``{key: value}`` is a valid ``from_mapping`` input (an oracle)."""
    if key in NUMBER_FIELDS:
        return number_ok(key, value)
    if key in MS_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        try:
            seconds = value / 1000
        except OverflowError:
            return False
        return number_ok(MS_FIELDS[key], seconds)
    if key in BOOL_FIELDS:
        return isinstance(value, bool)
    if key in CALLBACK_FIELDS:
        return value is None or callable(value)
    if key == "checkpoint_strategy":
        if value in ("latest", "best"):
            return True
        if not isinstance(value, str) or not value.startswith("tinker://"):
            return False
        try:
            Specific(value)
        except ValueError:
            return False
        return True
    return False


@FUZZ
@given(policy_entries())
@example(("max_attempts", 10**400))
@example(("poll_interval", 10**400))
@example(("backoff", 2**1024))
@example(("poll_interval_ms", 10**400))
@example(("max_backoff_ms", -(10**400)))
@example(("jitter", math.nan))
@example(("backoff_ms", math.inf))
def test_from_mapping_rejects_bad_values_naming_the_field(entry):
    """A bad value raises ValueError/TypeError naming its key; good ones pass."""
    key, value = entry
    if entry_ok(key, value):
        policy = Policy.from_mapping({key: value})
        if key in MS_FIELDS:
            assert getattr(policy, MS_FIELDS[key]) == value / 1000
        elif key == "checkpoint_strategy":
            assert isinstance(policy.checkpoint_strategy, Latest | Best | Specific)
        else:
            assert getattr(policy, key) == value or value != value
        return
    with pytest.raises((ValueError, TypeError)) as info:
        Policy.from_mapping({key: value})
    named = (key, MS_FIELDS.get(key, key), repr(key))
    assert any(name in str(info.value) for name in named)


@pytest.mark.parametrize("field", sorted(NUMBER_FIELDS))
@pytest.mark.parametrize("value", [10**400, -(10**400)], ids=["huge", "-huge"])
def test_policy_numbers_too_large_for_a_float_name_the_field(field, value):
    """Integers beyond float range are a ValueError naming the field."""
    with pytest.raises(ValueError, match=f"Policy\\.{field}"):
        Policy(**{field: value})


@pytest.mark.parametrize("value", [10**400, -(10**400)], ids=["huge", "-huge"])
def test_config_timeout_too_large_for_a_float_names_the_field(value):
    """Config.timeout beyond float range is a ValueError naming the field."""
    with pytest.raises(ValueError, match="Config\\.timeout"):
        Config(api_key=KEY, timeout=value)


@FUZZ
@given(st.dictionaries(st.text(max_size=15), st.integers(), min_size=1, max_size=5))
def test_unknown_keys_are_all_named(mapping):
    """Every unknown key is named in one error."""
    unknown = {k for k in mapping if k not in attr_names() and k not in MS_FIELDS}
    if not unknown:
        return
    # Unknown keys are refused before any value is checked: whatever the
    # known ones hold, the error is this one, and it names them all.
    with pytest.raises(ValueError, match="unknown") as info:
        Policy.from_mapping(mapping)
    for key in unknown:
        assert repr(key) in str(info.value)


def test_from_mapping_refuses_both_units():
    """A field given in seconds and in milliseconds is refused, both named."""
    with pytest.raises(ValueError, match=r"poll_interval_ms.*poll_interval"):
        Policy.from_mapping({"poll_interval": 1, "poll_interval_ms": 1000})


@pytest.mark.parametrize("mapping", [None, [("enabled", True)], "enabled", 3])
def test_from_mapping_refuses_non_mappings(mapping):
    """Only a mapping is accepted."""
    with pytest.raises(TypeError, match="mapping"):
        Policy.from_mapping(mapping)


@pytest.mark.parametrize("interval", [0.1, 0.5, 1e300])
async def test_extreme_valid_poll_intervals_never_crash_the_monitor(
    interval, autojump_clock
):
    """Any poll_interval Policy accepts keeps the monitor running: polls
    back to back when it is tiny, once when it is huge."""
    service = FakeService()
    service.rest.add("run-1", "ckpt-0001")
    service.rest.poll_delay = 1.0
    policy = Policy(enabled=True, jitter=0, poll_interval=interval)
    async with open_monitor(policy=policy, service=service) as monitor:
        await monitor.monitor_run("run-1")
        await trio.sleep(10.5)
        assert monitor.monitored_runs == {"run-1"}
    polls = service.rest.poll_times("run-1")
    assert polls == ([0.0] if interval > 1 else [float(t) for t in range(11)])
