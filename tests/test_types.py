"""Wire data: lenient about extras, never silent about what is missing."""

from __future__ import annotations

import datetime as dt

import pytest

from trio_tinkex_recovery import (
    Checkpoint,
    ResponseValidationError,
    TrainingRun,
    WeightsInfo,
)
from trio_tinkex_recovery._types import parse_tinker_path, validate_run_id

CHECKPOINT = {
    "checkpoint_id": "weights/ckpt-0005",
    "checkpoint_type": "training",
    "time": "2026-11-01T12:00:00Z",
    "tinker_path": "tinker://run-1/weights/ckpt-0005",
    "size_bytes": 1024,
    "public": False,
    "expires_at": None,
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


def test_training_run_round_trip():
    """from_json then to_json gives the wire fields back."""
    run = TrainingRun.from_json(RUN)
    assert run.corrupted is True
    assert run.last_checkpoint is not None
    assert run.last_checkpoint.time == dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
    assert TrainingRun.from_json(run.to_json()) == run
    assert run.to_json()["last_checkpoint"]["tinker_path"] == CHECKPOINT["tinker_path"]


def test_extra_fields_are_ignored():
    """Fields we do not know are ignored."""
    run = TrainingRun.from_json({**RUN, "new_server_field": [1, 2]})
    assert run.training_run_id == "run-1"


def test_optional_fields_default():
    """Only the required fields are needed; corrupted defaults to False."""
    required = {k: RUN[k] for k in ("training_run_id", "base_model", "model_owner")}
    run = TrainingRun.from_json(
        {**required, "is_lora": False, "last_request_time": RUN["last_request_time"]}
    )
    assert run.corrupted is False
    assert run.last_checkpoint is None


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({k: v for k, v in RUN.items() if k != "base_model"}, "base_model"),
        ({**RUN, "corrupted": "false"}, "corrupted"),
        ({**RUN, "lora_rank": "32"}, "lora_rank"),
        ({**RUN, "lora_rank": True}, "lora_rank"),
        ({**RUN, "last_request_time": 12}, "last_request_time"),
        ({**RUN, "last_request_time": "yesterday"}, "last_request_time"),
        (
            {**RUN, "last_checkpoint": {**CHECKPOINT, "tinker_path": None}},
            "tinker_path",
        ),
        ({**RUN, "last_checkpoint": "tinker://x"}, "last_checkpoint"),
    ],
)
def test_missing_or_mistyped_fields_are_named(obj, field):
    """A missing or mistyped field raises ResponseValidationError naming it."""
    with pytest.raises(ResponseValidationError, match=field) as info:
        TrainingRun.from_json(obj)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("obj", [None, [], "run", 3])
def test_non_objects_are_refused(obj):
    """Only a JSON object can be a run."""
    with pytest.raises(ResponseValidationError, match="expected a JSON object"):
        TrainingRun.from_json(obj)


def test_checkpoint_from_path():
    """A checkpoint known by path only has no time."""
    ckpt = Checkpoint.from_path("tinker://run-1/weights/ckpt-0005")
    assert ckpt.checkpoint_id == "weights/ckpt-0005"
    assert ckpt.time is None
    assert ckpt.run_id == "run-1"
    sampler = Checkpoint.from_path("tinker://run-1/sampler_weights/s1")
    assert sampler.checkpoint_type == "sampler"


def test_checkpoint_expiry():
    """is_expired compares expires_at with the (wall) clock."""
    ckpt = Checkpoint.from_json(
        {**CHECKPOINT, "expires_at": "2026-11-02T00:00:00+00:00"}
    )
    assert ckpt.is_expired(dt.datetime(2026, 11, 3, tzinfo=dt.UTC))
    assert not ckpt.is_expired(dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    assert not Checkpoint.from_json(CHECKPOINT).is_expired()


def test_weights_info():
    """WeightsInfo parses the weights_info answer."""
    info = WeightsInfo.from_json(
        {"base_model": "Qwen/Qwen3-8B", "is_lora": True, "lora_rank": 32, "x": 1}
    )
    assert info.lora_rank == 32
    with pytest.raises(ResponseValidationError, match="is_lora"):
        WeightsInfo.from_json({"base_model": "Qwen/Qwen3-8B"})


@pytest.mark.parametrize(
    "path",
    [
        "tinker://run-1/weights",
        "tinker://run-1/other/x",
        "tinker://../weights/x",
        "tinker://run 1/weights/x",
        "http://run-1/weights/x",
        "tinker://run-1/weights/x/y",
    ],
)
def test_bad_tinker_paths(path):
    """Only tinker://{run}/weights/{name} (or sampler_weights) is a path."""
    with pytest.raises(ValueError, match="not a checkpoint path"):
        parse_tinker_path(path)


@pytest.mark.parametrize(
    ("run_id", "match"),
    [
        ("", "empty"),
        (".", "must not be '.'"),
        ("..", "must not be '..'"),
        ("../x", "'/'"),
        ("a\\b", "'\\\\\\\\'"),
        ("a?b", "'\\?'"),
        ("a#b", "'#'"),
        ("a%2Fb", "'%'"),
        ("a b", "whitespace"),
        ("a\tb", "whitespace"),
        ("a\x00b", "whitespace"),
        ("runé", "printable ASCII"),
        ("x" * 257, "257 characters"),
    ],
)
def test_run_id_validation(run_id, match):
    """Run ids that could address something else are refused, saying why."""
    with pytest.raises(ValueError, match=match):
        validate_run_id(run_id)


def test_run_id_accepts_real_ids():
    """Real ids, including recovered model ids with colons, pass."""
    for run_id in ("run-1", "abc_DEF.9", "sess-1:train:0", "x" * 256):
        assert validate_run_id(run_id) == run_id
    with pytest.raises(TypeError):
        validate_run_id(5)
