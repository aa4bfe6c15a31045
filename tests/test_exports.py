"""The public surface: what the namespaces export, and how it presents itself."""

from __future__ import annotations

import pickle
import types

import pytest

import trio_tinkex_recovery
import trio_tinkex_recovery.metrics
import trio_tinkex_recovery.sdk
import trio_tinkex_recovery.testing
from trio_tinkex_recovery import (
    AlreadyPendingError,
    CheckpointUnavailableError,
    NotFoundError,
    RequestFailedError,
    TinkerAPIError,
    TinkexRecoveryError,
)

PUBLIC_MODULES = [
    trio_tinkex_recovery,
    trio_tinkex_recovery.sdk,
    trio_tinkex_recovery.testing,
    trio_tinkex_recovery.metrics,
]


def public_names(module: types.ModuleType) -> set[str]:
    """What a module's namespace offers: no private names, no submodules."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


def exported_objects(module: types.ModuleType) -> list[object]:
    """The classes and functions a module exports (not constants or aliases)."""
    return [
        obj
        for obj in (getattr(module, name) for name in module.__all__)
        if isinstance(obj, type | types.FunctionType)
    ]


def test_all_is_exactly_the_public_namespace():
    """The package's __all__ lists every public name it has, once, no other."""
    exported = trio_tinkex_recovery.__all__
    assert len(exported) == len(set(exported))
    assert set(exported) == public_names(trio_tinkex_recovery)


def test_sdk_exports_everything_it_defines():
    """The sdk module's __all__ is exactly the public names it defines."""
    sdk = trio_tinkex_recovery.sdk
    defined = {
        name
        for name in public_names(sdk)
        if getattr(getattr(sdk, name), "__module__", None) == sdk.__name__
    }
    assert set(sdk.__all__) == defined


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_exports_claim_the_public_module(module):
    """Classes and functions say they live where users import them from."""
    objects = exported_objects(module)
    assert objects
    for obj in objects:
        assert obj.__module__ == module.__name__, obj
        assert getattr(module, obj.__qualname__) is obj


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_exports_are_documented(module):
    """Every exported class and function has a docstring of its own."""
    for obj in exported_objects(module):
        assert obj.__doc__, obj
        assert obj.__doc__.strip().split("\n")[0], obj


def test_error_tree():
    """Every exported error derives from the one root."""
    errors = [
        obj
        for obj in exported_objects(trio_tinkex_recovery)
        if isinstance(obj, type) and issubclass(obj, BaseException)
    ]
    assert TinkerAPIError in errors
    for error in errors:
        assert issubclass(error, TinkexRecoveryError), error


def test_tracebacks_name_errors_by_their_public_path():
    """A raised error's type prints as trio_tinkex_recovery.X."""
    error = NotFoundError("GET /x: HTTP 404", status=404)
    assert f"{type(error).__module__}.{type(error).__qualname__}" == (
        "trio_tinkex_recovery.NotFoundError"
    )
    assert repr(error) == "NotFoundError('GET /x: HTTP 404')"


@pytest.mark.parametrize(
    "error",
    [
        NotFoundError("GET /x: HTTP 404", status=404, retryable=False),
        RequestFailedError("failed", category="server"),
        CheckpointUnavailableError("gone", path="tinker://r/weights/c", status=410),
        AlreadyPendingError("run-1"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_survive_pickling(error):
    """Errors pickle with their message and attributes (keyword-only ones too)."""
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)
    assert copy.retryable == error.retryable


def test_value_objects_survive_pickling_and_repr():
    """attrs value objects still pickle and repr by their short name."""
    policy = trio_tinkex_recovery.Policy(enabled=True, poll_interval=5)
    assert pickle.loads(pickle.dumps(policy)) == policy
    assert repr(policy).startswith("Policy(enabled=True, ")
