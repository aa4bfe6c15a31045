"""Default sessions: tests, compat, lint, typing, docs; on demand: demo, bench, nightly.

Run everything CI runs with ``python3 -m nox``; one session with ``-s NAME``.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests", "compat", "lint", "typing", "docs"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite (the slow variants are left to ``nightly``)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "not slow", *session.posargs)


@nox.session(python=PYTHON)
def nightly(session: nox.Session) -> None:
    """The whole suite, long chaos and load variants included."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs, env={"HYPOTHESIS_PROFILE": "nightly"})


@nox.session(python=PYTHON)
def compat(session: nox.Session) -> None:
    """The official tinker SDK, unchanged, against our simulator on loopback."""
    session.install("-e", ".[test]", "tinker")
    env = {
        "TINKER_TELEMETRY": "0",
        "HOME": session.create_tmp(),
        "TTR_REQUIRE_TINKER": "1",
    }
    session.run("python", "tests/compat/sdk_against_simulator.py", env=env)
    # The SDK never closes some of its sockets; pytest would report them
    # (as errors, with filterwarnings=error) after our tests end.
    session.run(
        "pytest",
        "-p",
        "no:unraisableexception",
        "tests/compat",
        *session.posargs,
        env=env,
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typing(session: nox.Session) -> None:
    """mypy --strict over the package and tests/typing."""
    session.install("-e", ".[test]", "mypy")
    session.run("mypy")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The documentation site into docs/_build/html, then its examples run.

    ``-W -n``: a warning, or a reference that does not resolve, fails the
    build.  The doctest builder runs every ``testcode`` block of the pages
    against the simulator and compares what it prints.
    """
    session.install("-e", ".[docs]")
    build = "docs/_build"
    options = ["-W", "-n", "--keep-going", "-q", "-d", f"{build}/doctrees"]
    session.run("sphinx-build", *options, "-b", "html", "docs", f"{build}/html")
    session.run("sphinx-build", *options, "-b", "doctest", "docs", f"{build}/doctest")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The embedded demo: simulator, corruptions, recoveries, live view."""
    session.install("-e", ".[cli,testing]")
    session.run("python", "-m", "trio_tinkex_recovery", "demo", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks against the baselines; writes JSON and a Markdown table."""
    session.install("-e", ".[test]", "psutil")
    if os.environ.get("BENCH_WITH_SDK", "1") == "1":
        session.install("tinker")
    session.run("python", "-m", "benchmarks", *session.posargs)
    if "--quick" not in session.posargs:
        session.run("python", "-m", "benchmarks.journal")
