"""Options become Policy and Config in one place; bad ones exit 2 naming them.

In-process: the per-command parsers and `main`, no subprocess.
"""

from __future__ import annotations

import sys

import attrs
import pytest

from trio_tinkex_recovery import Best, Config, Latest, Policy, Specific
from trio_tinkex_recovery.cli import _demo, _simulate, _watch, main
from trio_tinkex_recovery.cli._options import (
    CONFIG_OPTIONS,
    POLICY_OPTIONS,
    MetricsOptions,
)
from trio_tinkex_recovery.cli._runtime import UsageError

KEY = "tml-cli-test-key"


@pytest.fixture(autouse=True)
def tinker_env(monkeypatch):
    """A valid key, and no base URL, unless a test says otherwise."""
    monkeypatch.setenv("TINKER_API_KEY", KEY)
    monkeypatch.delenv("TINKER_BASE_URL", raising=False)


def usage_error(parse, *argv: str) -> str:
    """The message of the `UsageError` that parsing ``argv`` raises."""
    with pytest.raises(UsageError) as info:
        parse(list(argv))
    return str(info.value)


def test_watch_defaults_are_the_policy_and_config_defaults():
    """No options: an enabled default Policy and Config, nothing repeated."""
    options = _watch.parse(["run-1", "run-2", "run-1"])
    assert options.run_ids == ("run-1", "run-2")
    assert options.policy == Policy(enabled=True)
    assert options.config == Config(api_key=KEY)
    assert options.max_concurrent == 1
    assert options.duration is None


def test_stall_timeout_option_sets_the_policy():
    """--stall-timeout S watches stalls; unset, they are not watched."""
    assert _watch.parse(["run-1", "--stall-timeout", "90"]).policy.stall_timeout == 90
    assert _watch.parse(["run-1"]).policy.stall_timeout is None


def test_watch_options_set_their_fields():
    """Each policy and connection option sets its field."""
    options = _watch.parse(
        ["run-1", "--poll-interval", "7.5", "--jitter", "0", "--max-attempts", "4",
         "--backoff", "2", "--max-backoff", "8", "--strategy", "best",
         "--metric", "acc", "--mode", "max", "--no-fallback", "--no-optimizer",
         "--no-follow", "--timeout", "9", "--max-retries", "0",
         "--base-url", "http://example.test", "--allow-insecure-http",
         "--max-concurrent", "3", "--duration", "60", "--json", "-vv"]
    )  # fmt: skip
    assert options.policy == Policy(
        enabled=True,
        poll_interval=7.5,
        jitter=0.0,
        max_attempts=4,
        backoff=2.0,
        max_backoff=8.0,
        checkpoint_strategy=Best(metric="acc", mode="max"),
        fallback=False,
        restore_optimizer=False,
        follow_recovered=False,
    )
    assert options.config == Config(
        api_key=KEY,
        base_url="http://example.test",
        timeout=9.0,
        max_retries=0,
        allow_insecure_http=True,
    )
    assert (options.max_concurrent, options.duration) == (3, 60.0)
    assert (options.output.json, options.output.verbose) == (True, 2)


@pytest.mark.parametrize(
    ("text", "strategy"),
    [
        ("latest", Latest()),
        ("best", Best()),
        (
            "tinker://run-1/weights/ckpt-0001",
            Specific("tinker://run-1/weights/ckpt-0001"),
        ),
    ],
)
def test_strategy_option(text, strategy):
    """--strategy takes latest, best or a tinker:// path."""
    assert _watch.parse(["run-1", "--strategy", text]).policy.checkpoint_strategy == (
        strategy
    )


def test_help_shows_the_fields_defaults():
    """--help quotes the defaults of Policy and Config, not copies of them."""
    text = _watch.parser("watch").format_help()
    for option in (*POLICY_OPTIONS, *CONFIG_OPTIONS):
        default = attrs.fields_dict(option.owner)[option.field].default
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        assert f"(default: {shown})" in " ".join(text.split()), option.flag


def policy_error(**values) -> str | None:
    """The message Policy gives for ``values``, or None if it takes them."""
    try:
        Policy(enabled=True, **values)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "1e-9", "0.001", "0.05"])
def test_poll_interval_is_decided_by_policy(text):
    """--poll-interval is accepted or refused exactly as Policy does, with its words."""
    expected = policy_error(poll_interval=float(text))
    if expected is None:
        assert _watch.parse(
            ["run-1", "--poll-interval", text]
        ).policy.poll_interval == (float(text))
    else:
        message = usage_error(_watch.parse, "run-1", "--poll-interval", text)
        assert message == f"argument --poll-interval: {expected}"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["run-1", "--poll-interval", "soon"],
            "argument --poll-interval: not a number",
        ),
        (["run-1", "--max-attempts", "2.5"], "argument --max-attempts: not an integer"),
        (
            ["run-1", "--max-attempts", "0"],
            "argument --max-attempts: Policy.max_attempts",
        ),
        (["run-1", "--jitter", "1.5"], "argument --jitter: Policy.jitter must be < 1"),
        (["run-1", "--max-backoff", "1"], "argument --max-backoff: Policy.max_backoff"),
        (["run-1", "--timeout", "0"], "argument --timeout: Config.timeout must be > 0"),
        (
            ["run-1", "--max-retries", "-1"],
            "argument --max-retries: Config.max_retries",
        ),
        (["run-1", "--strategy", "newest"], "argument --strategy: Policy.checkpoint_"),
        (
            ["run-1", "--strategy", "tinker://x"],
            "argument --strategy: Policy.checkpoint_",
        ),
        (
            ["run-1", "--strategy", "best", "--mode", "avg"],
            "argument --mode: Best.mode",
        ),
        (
            ["run-1", "--metric", "acc"],
            "--metric and --mode apply only to --strategy best",
        ),
        (["run-1", "--max-concurrent", "0"], "argument --max-concurrent: must be ≥ 1"),
        (["run-1", "--duration", "-5"], "argument --duration: must be ≥ 0"),
        (["run/1"], "argument RUN_ID: 'run/1': "),
        (["run-1", "--base-url", "http://tinker.example"], "plain http to another"),
        (["--no-state"], "name the runs to watch"),
        (["--state", "x.db", "--no-state"], "not allowed with argument"),
        (["run-1", "--bogus"], "unrecognized arguments: --bogus"),
        (["run-1", "--json", "--plain"], "not allowed with argument"),
        (["run-1", "--metrics-port", "65536"], "argument --metrics-port: must be ≤"),
        (["run-1", "--metrics-port", "x"], "argument --metrics-port: not an integer"),
        (["run-1", "--metrics-host", "::"], "argument --metrics-host: needs --metr"),
        (
            ["run-1", "--stall-timeout", "0"],
            "argument --stall-timeout: Policy.stall_timeout must be > 0",
        ),
        (["run-1", "--stall-timeout", "x"], "argument --stall-timeout: not a number"),
    ],
)
def test_bad_watch_usage_names_the_option(argv, message):
    """A bad option is refused with a message that names it."""
    assert message in usage_error(_watch.parse, *argv)


@pytest.mark.parametrize(
    ("parse", "argv", "message"),
    [
        (_demo.parse, ["--runs", "0"], "argument --runs: must be ≥ 1, got 0"),
        (_demo.parse, ["--runs", "101"], "argument --runs: must be ≤ 100"),
        (_demo.parse, ["--duration", "0"], "argument --duration: must be > 0"),
        (_demo.parse, ["--fault-rate", "2"], "argument --fault-rate: must be ≤ 1"),
        (_demo.parse, ["--seed", "x"], "argument --seed: not an integer: 'x'"),
        (_demo.parse, ["--metrics-port", "-1"], "argument --metrics-port: must be ≥"),
        (_demo.parse, ["--metrics-host", "::"], "unrecognized arguments"),
        (_simulate.parse, ["--fault", "boom:0.1"], "unknown fault kind 'boom'"),
        (_simulate.parse, ["--fault", "503"], "argument --fault: expected KIND:RATE"),
        (_simulate.parse, ["--fault", "503:2"], "rate must be between 0 and 1"),
        (_simulate.parse, ["--fault", "600:0.1"], "argument --fault: status must be"),
        (_simulate.parse, ["--fault", "latency=-1:0.1"], "seconds must be ≥ 0"),
        (_simulate.parse, ["--port", "70000"], "argument --port: must be ≤ 65535"),
        (_simulate.parse, ["--latency", "-1"], "argument --latency: base_latency"),
    ],
)
def test_bad_demo_and_simulate_usage_names_the_option(parse, argv, message):
    """demo and simulate refuse bad options the same way."""
    assert message in usage_error(parse, *argv)


def test_metrics_options_say_where_to_serve():
    """--metrics-port serves on loopback unless --metrics-host says otherwise."""
    assert _watch.parse(["run-1"]).metrics is None
    assert _watch.parse(["run-1", "--metrics-port", "9464"]).metrics == (
        MetricsOptions(port=9464, host="127.0.0.1")
    )
    options = _watch.parse(["run-1", "--metrics-port", "0", "--metrics-host", "::"])
    assert options.metrics == MetricsOptions(port=0, host="::")
    assert _demo.parse(["--metrics-port", "9464"]).metrics == MetricsOptions(9464)
    assert _demo.parse([]).metrics is None


def test_metrics_options_need_the_metrics_extra(monkeypatch):
    """Without prometheus-client, --metrics-port says which extra to install."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    message = usage_error(_watch.parse, "run-1", "--metrics-port", "9464")
    assert message == (
        "argument --metrics-port: needs the metrics extra: "
        "pip install 'trio-tinkex-recovery[metrics]'"
    )


def test_simulate_builds_its_simulator():
    """simulate's options become a FakeTinker with its faults."""
    options = _simulate.parse(
        ["--port", "0", "--runs", "2", "--fault", "503:0.5", "--fault", "drop:0.1",
         "--fault-path", "/api/v1/training_runs", "--latency", "0.01"]
    )  # fmt: skip
    assert (options.port, options.runs) == (0, 2)
    assert options.fake.base_latency == 0.01
    rates = options.fake.faults.rates
    assert [(fault.kind, fault.status, rate) for fault, rate in rates] == [
        ("status", 503, 0.5),
        ("drop", None, 0.1),
    ]
    assert {fault.path for fault, _ in rates} == {"/api/v1/training_runs"}
    # Left running, it keeps a bounded request log.
    assert options.fake.request_log_limit == _simulate.REQUEST_LOG_LIMIT


@pytest.mark.parametrize(
    ("argv", "key", "message"),
    [
        (["watch", "run-1"], None, "watch: error: TINKER_API_KEY is not set"),
        (["watch", "run-1"], "sk-hush-1234", "watch: error: TINKER_API_KEY: "),
        (["watch", "run-1"], "tml-hush 1234", "watch: error: TINKER_API_KEY: "),
        (["watch"], KEY, "watch: error: nothing to watch: the state file "),
        (["launch"], None, "error: argument COMMAND: invalid choice: 'launch'"),
        (["--json"], None, "the following arguments are required: COMMAND"),
    ],
)
def test_main_reports_bad_usage_with_exit_2(argv, key, message, monkeypatch, capsys):
    """main: bad usage or a bad key exits 2, says why, never shows the key."""
    if key is None:
        monkeypatch.delenv("TINKER_API_KEY")
    else:
        monkeypatch.setenv("TINKER_API_KEY", key)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert message in err
    assert "hush" not in err
