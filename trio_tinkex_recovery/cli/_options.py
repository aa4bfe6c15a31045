"""Options: declared once, turned into library objects in one place.

argparse only collects strings.  An option that sets a field of `Policy` or
`Config` takes its default and its meaning from that field; its value is
converted to the field's type and handed to the class, whose validators
decide (they raise `ValueError` or `TypeError` naming the field).  `build`
catches that error and names the option the field came from, so the
message a user reads is the library's own, led by the option to fix.
Options of the CLI's own (``--duration``, ``--runs``, …) are checked by
`number`, here too.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs

from .._config import DEFAULT_BASE_URL, Config
from .._policy import Best, Policy
from ._runtime import UsageError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence

__all__ = [
    "CONFIG_OPTIONS",
    "POLICY_OPTIONS",
    "FieldOption",
    "MetricsOptions",
    "OutputOptions",
    "add_config_options",
    "add_metrics_options",
    "add_output_options",
    "add_policy_options",
    "add_view_options",
    "build",
    "build_config",
    "build_metrics",
    "build_policy",
    "build_view",
    "convert",
    "default_help",
    "field_default",
    "number",
]

T = TypeVar("T")
N = TypeVar("N", int, float)


def field_default(owner: type, name: str) -> Any:
    """The default of the attrs field ``owner.name`` (a factory is called)."""
    default = attrs.fields_dict(owner)[name].default
    factory = getattr(default, "factory", None)
    return default if factory is None else factory()


def default_help(owner: type, name: str) -> str:
    """``(default: …)`` for the help of an option that sets ``owner.name``."""
    value = field_default(owner, name)
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    return f"(default: {shown})"


@attrs.frozen
class FieldOption:
    """A command-line option that sets one field of an attrs class."""

    #: The option, e.g. ``--poll-interval``.
    flag: str
    #: The class whose field it sets, e.g. `Policy`.
    owner: type
    #: The field, e.g. ``poll_interval``.
    field: str
    #: The value's name in the help.
    metavar: str
    #: What it does (the default is added from the field).
    help: str
    #: The value's type, when the field's default (``None``) does not say.
    kind: type | None = None

    def add(self, group: argparse._ActionsContainer) -> None:
        """Add the option to a parser; unset, it leaves the field's default."""
        group.add_argument(
            self.flag,
            dest=self.field,
            metavar=self.metavar,
            help=f"{self.help} {default_help(self.owner, self.field)}",
        )

    def value(self, args: argparse.Namespace) -> Any:
        """The option's value as the field's type, or ``None`` if not given."""
        text: str | None = getattr(args, self.field, None)
        if text is None:
            return None
        kind = self.kind or type(field_default(self.owner, self.field))
        return convert(text, self.flag, kind)


POLICY_OPTIONS: Final = (
    FieldOption(
        "--poll-interval", Policy, "poll_interval", "S", "seconds between two polls"
    ),
    FieldOption(
        "--jitter",
        Policy,
        "jitter",
        "F",
        "random spread of poll and retry delays, a fraction in [0, 1)",
    ),
    FieldOption(
        "--max-attempts",
        Policy,
        "max_attempts",
        "N",
        "restore attempts before a recovery is exhausted",
    ),
    FieldOption(
        "--backoff", Policy, "backoff", "S", "delay before the first retry; it doubles"
    ),
    FieldOption("--max-backoff", Policy, "max_backoff", "S", "the longest retry delay"),
    FieldOption(
        "--stall-timeout",
        Policy,
        "stall_timeout",
        "S",
        "report a run whose last request time stands still this long",
        kind=float,
    ),
)
CONFIG_OPTIONS: Final = (
    FieldOption(
        "--timeout", Config, "timeout", "S", "seconds one HTTP request may take"
    ),
    FieldOption(
        "--max-retries",
        Config,
        "max_retries",
        "N",
        "HTTP retries of a transient failure",
    ),
)
#: Who to blame for a bad field: ``"Class.field"`` → what the user set.
_SOURCES: Final = {
    **{f"{o.owner.__name__}.{o.field}": f"argument {o.flag}" for o in POLICY_OPTIONS},
    **{f"{o.owner.__name__}.{o.field}": f"argument {o.flag}" for o in CONFIG_OPTIONS},
    "Policy.checkpoint_strategy": "argument --strategy",
    "Specific.path": "argument --strategy",
    "Best.metric": "argument --metric",
    "Best.mode": "argument --mode",
    "Config.api_key": "TINKER_API_KEY",
    "Config.base_url": "the base URL (--base-url or TINKER_BASE_URL)",
}
_FIELD: Final = re.compile(r"\b[A-Z]\w*\.\w+")


def convert(text: str, flag: str, kind: type[N]) -> N:
    """``text`` as an int or a float, for option ``flag``; nothing more is checked.

    Raises:
        UsageError: Not a number of that kind.
    """
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise UsageError(f"argument {flag}: not {what}: {text!r}") from None


def number(
    text: str,
    flag: str,
    kind: type[N],
    *,
    low: N | None = None,
    high: N | None = None,
    above: N | None = None,
) -> N:
    """``text`` as an int or a finite float within bounds, for an option of the CLI.

    Raises:
        UsageError: Not a number of that kind, or out of bounds.
    """
    value = convert(text, flag, kind)
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"argument {flag}: must be finite, got {text!r}")
    for wrong, bound, relation in (
        (low is not None and value < low, low, "≥"),
        (high is not None and value > high, high, "≤"),
        (above is not None and value <= above, above, ">"),
    ):
        if wrong:
            raise UsageError(f"argument {flag}: must be {relation} {bound}, got {text}")
    return value


def build(factory: Callable[..., T], /, **values: Any) -> T:
    """``factory(**values)``; a bad value names the option or variable it came from.

    Raises:
        UsageError: ``factory``'s own `ValueError` or `TypeError` message,
            led by the option that set the field it names.
    """
    try:
        return factory(**values)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        for name in _FIELD.findall(message):
            if name in _SOURCES:
                message = f"{_SOURCES[name]}: {message}"
                break
        raise UsageError(message) from None


def _given(args: argparse.Namespace, options: Sequence[FieldOption]) -> dict[str, Any]:
    values = {o.field: o.value(args) for o in options}
    return {field: value for field, value in values.items() if value is not None}


def add_policy_options(group: argparse._ActionsContainer) -> None:
    """The options of `build_policy`."""
    for option in POLICY_OPTIONS:
        option.add(group)
    group.add_argument(
        "--strategy",
        metavar="latest|best|tinker://…",
        help="the checkpoint to restore: the latest, the best by --metric, or a "
        f"given tinker:// path {default_help(Policy, 'checkpoint_strategy')}",
    )
    group.add_argument(
        "--metric",
        metavar="NAME",
        help="with --strategy best: the checkpoint user_metadata entry to rank by "
        f"{default_help(Best, 'metric')}",
    )
    group.add_argument(
        "--mode",
        metavar="min|max",
        help="with --strategy best: lower (min) or higher (max) is better "
        f"{default_help(Best, 'mode')}",
    )
    for flag, field, text in (
        ("--no-fallback", "fallback", "do not try older checkpoints when one fails"),
        ("--no-optimizer", "restore_optimizer", "restore the weights only"),
        ("--no-follow", "follow_recovered", "do not watch the run a recovery creates"),
    ):
        group.add_argument(
            flag, dest=field, action="store_const", const=False, help=text
        )


def build_policy(args: argparse.Namespace) -> Policy:
    """An enabled `Policy` from the options of `add_policy_options`.

    Raises:
        UsageError: A value the policy rejects, or ``--metric`` / ``--mode``
            without ``--strategy best``.
    """
    values = _given(args, POLICY_OPTIONS)
    for field in ("fallback", "restore_optimizer", "follow_recovered"):
        if getattr(args, field) is not None:
            values[field] = getattr(args, field)
    best = {
        key: value
        for key, value in (("metric", args.metric), ("mode", args.mode))
        if value is not None
    }
    strategy: str | None = args.strategy
    if strategy == "best":
        values["checkpoint_strategy"] = build(Best, **best)
    elif best:
        raise UsageError("--metric and --mode apply only to --strategy best")
    elif strategy is not None:
        values["checkpoint_strategy"] = strategy
    return build(Policy.from_mapping, mapping={**values, "enabled": True})


def add_config_options(group: argparse._ActionsContainer) -> None:
    """The options of `build_config`."""
    group.add_argument(
        "--base-url",
        metavar="URL",
        help=f"the Tinker service (default: $TINKER_BASE_URL, else {DEFAULT_BASE_URL})",
    )
    group.add_argument(
        "--allow-insecure-http",
        action="store_const",
        const=True,
        help="allow plain http to another machine (sends the key in clear text)",
    )
    for option in CONFIG_OPTIONS:
        option.add(group)


def build_config(args: argparse.Namespace) -> Config:
    """A `Config` from the environment and the options of `add_config_options`.

    Raises:
        UsageError: A missing or malformed key (never shown), a base URL or
            a value the config rejects.
    """
    values = _given(args, CONFIG_OPTIONS)
    if args.base_url is not None:
        values["base_url"] = args.base_url
    if args.allow_insecure_http:
        values["allow_insecure_http"] = True
    return build(Config.from_env, **values)


@attrs.frozen
class OutputOptions:
    """How a command shows progress: ``--json``, ``--plain``, ``-v``."""

    #: Telemetry events as JSON lines.
    json: bool = False
    #: Plain lines even on a terminal.
    plain: bool = False
    #: How many ``-v``.
    verbose: int = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> OutputOptions:
        """The output options of parsed arguments."""
        return cls(json=args.json, plain=args.plain, verbose=args.verbose)


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """``--json``, ``--plain`` and ``-v`` (see `OutputOptions`)."""
    group = parser.add_argument_group("output")
    mode = group.add_mutually_exclusive_group()
    mode.add_argument(
        "--json",
        action="store_true",
        help="write telemetry events as JSON lines on stdout (nothing else); "
        "the summary goes to stderr",
    )
    mode.add_argument(
        "--plain",
        action="store_true",
        help="plain lines instead of the live table (the default when stdout "
        "is not a terminal)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log to stderr: -v logs every poll and event, -vv everything",
    )


@attrs.frozen
class MetricsOptions:
    """Where ``--metrics-port`` serves ``/metrics``, ``/healthz`` and ``/readyz``."""

    #: The port (0: any free one).
    port: int
    #: The address to bind; this machine only unless asked otherwise.
    host: str = "127.0.0.1"


def add_metrics_options(parser: argparse.ArgumentParser, *, host: bool = True) -> None:
    """``--metrics-port`` and (with ``host``) ``--metrics-host``."""
    group = parser.add_argument_group("monitoring")
    group.add_argument(
        "--metrics-port",
        metavar="PORT",
        help="serve Prometheus metrics on /metrics and probes on /healthz and "
        "/readyz at this port (0: any free one; needs the metrics extra)",
    )
    if host:
        group.add_argument(
            "--metrics-host",
            metavar="HOST",
            help="the address --metrics-port binds; any other than loopback "
            "exposes the metrics to the network "
            f"{default_help(MetricsOptions, 'host')}",
        )


def add_view_options(
    parser: argparse.ArgumentParser, *, metrics_host: bool = True
) -> None:
    """How a watching command shows progress and where it serves metrics.

    `add_output_options`, then `add_metrics_options` (``--metrics-host``
    with ``metrics_host``).
    """
    add_output_options(parser)
    add_metrics_options(parser, host=metrics_host)


def build_view(
    args: argparse.Namespace,
) -> tuple[OutputOptions, MetricsOptions | None]:
    """The options of `add_view_options`: output, then metrics (or ``None``).

    Raises:
        UsageError: As `build_metrics`.
    """
    return OutputOptions.from_args(args), build_metrics(args)


def build_metrics(args: argparse.Namespace) -> MetricsOptions | None:
    """The options of `add_metrics_options`; ``None`` without ``--metrics-port``.

    Raises:
        UsageError: A bad port, ``--metrics-host`` alone, or the metrics
            extra (prometheus-client, hypercorn) missing.
    """
    host: str | None = getattr(args, "metrics_host", None)
    if args.metrics_port is None:
        if host is not None:
            raise UsageError("argument --metrics-host: needs --metrics-port")
        return None
    port = number(args.metrics_port, "--metrics-port", int, low=0, high=65535)
    try:
        import hypercorn  # noqa: F401
        import prometheus_client  # noqa: F401
    except ImportError:
        raise UsageError(
            "argument --metrics-port: needs the metrics extra: "
            "pip install 'trio-tinkex-recovery[metrics]'"
        ) from None
    return MetricsOptions(port=port) if host is None else MetricsOptions(port, host)
