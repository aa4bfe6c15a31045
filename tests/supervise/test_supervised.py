"""`trio_tinkex_recovery.supervised`: what a supervised script reads and writes."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from trio_tinkex_recovery import supervised
from trio_tinkex_recovery.supervised import ResumePoint


def test_the_module_imports_neither_trio_nor_httpx():
    """A child in any framework can use it: the module needs the standard
    library alone (loaded by itself, in a fresh interpreter)."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('s', {supervised.__file__!r})\n"
        "module = sys.modules['s'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "assert module.resume_point() is None\n"
        "print(sorted(m for m in ('trio', 'httpx', 'attrs') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.fixture
def unsupervised(monkeypatch):
    for name in ("TTR_JOB_ID", "TTR_ANNOUNCE_FILE", *supervised.RESUME_VARS):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_resume_point_is_none_unless_supervised_and_resuming(unsupervised):
    assert supervised.resume_point() is None
    unsupervised.setenv("TTR_RESUME_PATH", "tinker://r/weights/x")
    assert supervised.resume_point() is None  # not supervised
    unsupervised.setenv("TTR_JOB_ID", "job-1")
    unsupervised.delenv("TTR_RESUME_PATH")
    assert supervised.resume_point() is None  # a first start


def test_resume_point_reads_every_variable(unsupervised):
    for name, value in {
        "TTR_JOB_ID": "job-1",
        "TTR_RESTART_COUNT": "2",
        "TTR_RESUME_PATH": "tinker://run-1/weights/step-0009",
        "TTR_RESUME_OPTIMIZER": "0",
        "TTR_RESUME_STEP": "9",
        "TTR_PREVIOUS_RUN_ID": "run-1",
        "TTR_RESTART_REASON": "corrupted",
    }.items():
        unsupervised.setenv(name, value)
    assert supervised.resume_point() == ResumePoint(
        path="tinker://run-1/weights/step-0009",
        optimizer=False,
        step=9,
        restart_count=2,
        previous_run_id="run-1",
        reason="corrupted",
    )


def test_announce_appends_the_run_and_never_raises(unsupervised, tmp_path):
    target = tmp_path / "job.announce"
    supervised.announce("run-0")  # not supervised: nothing
    unsupervised.setenv("TTR_JOB_ID", "job-1")
    unsupervised.setenv("TTR_ANNOUNCE_FILE", str(target))
    supervised.announce("run-1")
    supervised.announce(SimpleNamespace(model_id="run-2"))
    supervised.announce(object())  # no model_id: ignored
    assert target.read_text() == "run-1\nrun-2\n"
    unsupervised.setenv("TTR_ANNOUNCE_FILE", str(tmp_path / "missing" / "x"))
    supervised.announce("run-3")  # cannot write: still no exception


class FakeSDK:
    """The official SDK's ServiceClient, as far as `training_client` uses it."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def create_lora_training_client(self, **kwargs):
        self.calls.append(("lora", kwargs))
        return SimpleNamespace(model_id="new-run")

    def create_training_client_from_state(self, path):
        self.calls.append(("weights", path))
        return SimpleNamespace(model_id="restored")

    def create_training_client_from_state_with_optimizer(self, path):
        self.calls.append(("optimizer", path))
        return SimpleNamespace(model_id="restored")


def test_training_client_creates_or_resumes_and_announces(unsupervised, tmp_path):
    target = tmp_path / "job.announce"
    unsupervised.setenv("TTR_JOB_ID", "job-1")
    unsupervised.setenv("TTR_ANNOUNCE_FILE", str(target))
    sdk = FakeSDK()
    supervised.training_client(sdk, base_model="Qwen/Qwen3-8B", rank=8)
    unsupervised.setenv("TTR_RESUME_PATH", "tinker://r/weights/a")
    supervised.training_client(sdk, base_model="Qwen/Qwen3-8B")
    unsupervised.setenv("TTR_RESUME_OPTIMIZER", "0")
    supervised.training_client(sdk, base_model="Qwen/Qwen3-8B")
    assert sdk.calls == [
        ("lora", {"base_model": "Qwen/Qwen3-8B", "rank": 8}),
        ("optimizer", "tinker://r/weights/a"),
        ("weights", "tinker://r/weights/a"),
    ]
    assert target.read_text() == "new-run\nrestored\nrestored\n"


class Future:
    """What SDK 0.38's client-creating calls return: a future of the client."""

    def __init__(self, client):
        self._client = client

    def result(self):
        return self._client


class Client:
    model_id = "from-future"

    def forward_backward(self):
        """A training client has this; a future does not."""


def test_training_client_resolves_a_future_of_the_client(unsupervised, tmp_path):
    unsupervised.setenv("TTR_JOB_ID", "job-1")
    unsupervised.setenv("TTR_ANNOUNCE_FILE", str(tmp_path / "a"))
    client = Client()
    sdk = SimpleNamespace(create_lora_training_client=lambda **_: Future(client))
    assert supervised.training_client(sdk, base_model="m") is client
    assert (tmp_path / "a").read_text() == "from-future\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "python", "train.py"], "the command to run comes after --"),
        (["run", "--"], "no command after --"),
        (["run", "--grace", "-1", "--", "x"], "argument --grace: must be ≥ 0"),
        (["run", "--max-restarts", "two", "--", "x"], "not an integer"),
    ],
)
def test_run_usage_errors_exit_2(argv, message, capsys, monkeypatch):
    from trio_tinkex_recovery.cli import main

    monkeypatch.setenv("TINKER_API_KEY", "tml-usage-test")
    assert main(argv) == 2
    assert message in capsys.readouterr().err
