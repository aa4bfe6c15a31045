"""Default sessions: tests, compat, lint, typing, docs; on demand: demo, bench, nightly.

Run everything CI runs with ``python3 -m nox``; one session with ``-s NAME``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import nox

nox.options.sessions = ["tests", "compat", "lint", "typing", "docs"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

#: The Pythons the package supports and CI tests, newest first.
SUPPORTED = ("3.13", "3.12", "3.11")


def _works(version: str) -> bool:
    """Whether ``python<version>`` is on the PATH and runs (a pyenv shim for
    a version not selected is on the PATH but does not)."""
    path = shutil.which(f"python{version}")
    if path is None:
        return False
    try:
        return (
            subprocess.run(
                [path, "-c", "pass"], capture_output=True, timeout=30, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        return False


def pick_python(running: str | None = None) -> str:
    """The one interpreter every session runs on.

    ``TTR_PYTHON`` (e.g. ``3.12``) pins it, as CI does.  Otherwise the
    Python running nox (``running``), if supported, else the newest
    supported one found.
    With none, 3.11 (and nox says it is missing).
    """
    pinned = os.environ.get("TTR_PYTHON")
    if pinned:
        return pinned
    if running is None:
        running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if running in SUPPORTED:
        return running
    return next((v for v in SUPPORTED if _works(v)), SUPPORTED[-1])


PYTHON = pick_python()


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
