"""The state on disk is its owner's alone: folders 0700, files 0600.

The journal names every run a team trains and their checkpoints, so what
the package creates (folders, the SQLite file, its ``-wal`` and ``-shm``,
the lock file) is private whatever the umask; a state file that exists
already keeps the mode its owner chose.
"""

from __future__ import annotations

import os
import signal
import stat

import pytest
import trio

from trio_tinkex_recovery import RecoveryState
from trio_tinkex_recovery._store import StoredRecovery, StoredRun, open_store
from trio_tinkex_recovery.testing import FakeTinker, serve_fake_tinker

from .test_cli import KEY, TIMEOUT, environ, spawn, watch_argv


@pytest.fixture(params=[0o022, 0o000, 0o277], ids=["022", "000", "277"])
def umask(request):
    """This process (and the CLI processes it starts) runs under ``param``."""
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def state_files(db) -> list[str]:
    return [str(db), f"{db}-wal", f"{db}-shm", f"{db}.lock"]


async def write_some(store) -> None:
    await store.put_run(StoredRun("run-1", {"team": "a"}))
    await store.put_recovery(StoredRecovery(RecoveryState("run-1", "queued")))


async def test_open_store_creates_private_folders_and_files(tmp_path, umask):
    """Every folder it creates is 0700; the file, -wal, -shm and lock are 0600."""
    db = tmp_path / "a" / "b" / "state.db"
    async with open_store(db) as store:
        await write_some(store)
        modes = {path: mode(path) for path in state_files(db)}  # -wal, -shm live
    assert mode(tmp_path / "a") == 0o700
    assert mode(tmp_path / "a" / "b") == 0o700
    assert modes == dict.fromkeys(state_files(db), 0o600)


async def test_a_state_file_that_exists_keeps_its_owners_mode(tmp_path):
    """A file the owner opened to a group (0640), and its folder, stay as chosen."""
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o750)
    db = folder / "state.db"
    async with open_store(db) as store:
        await write_some(store)
    db.chmod(0o640)
    previous = os.umask(0o022)
    try:
        async with open_store(db) as store:
            await store.put_run(StoredRun("run-2"))
    finally:
        os.umask(previous)
    assert mode(db) == 0o640
    assert mode(folder) == 0o750


async def test_watch_keeps_its_default_state_private(tmp_path, umask):
    """watch with no --state creates $XDG_STATE_HOME/trio-tinkex-recovery/ 0700
    and state.db (with -wal, -shm and the lock) 0600, whatever the umask."""
    home = tmp_path / "xdg"
    folder = home / "trio-tinkex-recovery"
    db = folder / "state.db"
    fake = FakeTinker(api_key=KEY)
    fake.add_run("run-1", checkpoints=["ckpt-0001"])
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_tinker, fake)
            env = environ(TINKER_API_KEY=KEY, XDG_STATE_HOME=str(home))
            async with spawn(watch_argv(url, "run-1", "--json"), env) as watch:
                await watch.out.wait_for(r'"name": "polled".*"run-1"')
                modes = {path: mode(path) for path in state_files(db)}
                watch.process.send_signal(signal.SIGINT)
                assert await watch.wait() == 0, watch.err.text
            nursery.cancel_scope.cancel()
    assert mode(home) == 0o700
    assert mode(folder) == 0o700
    assert modes == dict.fromkeys(state_files(db), 0o600)
