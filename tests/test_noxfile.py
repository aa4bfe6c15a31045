"""The quickstart's ``python3 -m nox`` runs on any supported Python."""

from __future__ import annotations

import runpy
import sys
import tomllib
import types
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


class _Nox(types.ModuleType):
    """Just enough of nox to read the noxfile: sessions are recorded."""

    def __init__(self) -> None:
        super().__init__("nox")
        self.options = types.SimpleNamespace()
        self.Session = object
        self.pythons: dict[str, Any] = {}

    def session(self, *, python: Any = None, **_: Any) -> Any:
        def register(function: Any) -> Any:
            self.pythons[function.__name__] = python
            return function

        return register


@pytest.fixture
def noxfile(monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], _Nox]:
    monkeypatch.delenv("TTR_PYTHON", raising=False)
    fake = _Nox()
    monkeypatch.setitem(sys.modules, "nox", fake)
    return runpy.run_path(str(ROOT / "noxfile.py")), fake


def test_every_session_runs_on_one_supported_python(noxfile):
    """One interpreter per run, never a list that demands all of them."""
    namespace, nox = noxfile
    assert nox.pythons
    assert set(nox.pythons.values()) == {namespace["PYTHON"]}
    assert namespace["PYTHON"] in {"3.11", "3.12", "3.13"}


@pytest.mark.parametrize("running", ["3.11", "3.12", "3.13"])
def test_the_python_running_nox_is_used_when_supported(noxfile, running):
    """A machine with only 3.12 or 3.13 runs the sessions on it."""
    namespace, _ = noxfile
    assert namespace["pick_python"](running) == running


def test_an_unsupported_python_picks_a_supported_one_present(noxfile, monkeypatch):
    namespace, _ = noxfile
    monkeypatch.setitem(
        namespace["pick_python"].__globals__, "_works", lambda v: v == "3.12"
    )
    assert namespace["pick_python"]("3.14") == "3.12"


def test_ci_pins_one(noxfile, monkeypatch):
    namespace, _ = noxfile
    monkeypatch.setenv("TTR_PYTHON", "3.12")
    assert namespace["pick_python"]("3.11") == "3.12"
    assert 'TTR_PYTHON="${TTR_PYTHON:-3.11}"' in (ROOT / ".ci" / "run").read_text()


def test_the_classifiers_name_what_is_tested(noxfile):
    namespace, _ = noxfile
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = {
        c.rsplit(" :: ", 1)[1]
        for c in meta["classifiers"]
        if c.startswith("Programming Language :: Python :: 3.")
    }
    assert listed == set(namespace["SUPPORTED"])
