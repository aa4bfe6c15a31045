"""The in-memory store: the journal's semantics, kept only by this process."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import attrs
import trio

from ._base import HistoryEntry, Snapshot, history_entry

if TYPE_CHECKING:
    from collections.abc import Collection

    from ._base import LoadRecord, SessionRecord, StoredRecovery, StoredRun

__all__ = ["MemoryStore"]


class MemoryStore:
    """A `Store` in memory: survives nothing, for tests and ``--no-state``."""

    location = ":memory:"

    def __init__(self) -> None:
        self._runs: dict[str, StoredRun] = {}
        self._recoveries: dict[str, StoredRecovery] = {}
        self._session: SessionRecord | None = None
        self._loads: dict[str, LoadRecord] = {}
        self._history: list[HistoryEntry] = []

    def __repr__(self) -> str:
        return f"<MemoryStore runs={len(self._runs)}>"

    async def load(self) -> Snapshot:
        await trio.lowlevel.checkpoint()
        return Snapshot(
            runs=dict(self._runs),
            recoveries=dict(self._recoveries),
            session=self._session,
            open_loads=tuple(r for r in self._loads.values() if r.outcome is None),
        )

    async def put_run(self, run: StoredRun) -> None:
        await trio.lowlevel.checkpoint()
        self._runs[run.run_id] = run

    async def remove_runs(self, run_ids: Collection[str]) -> None:
        await trio.lowlevel.checkpoint()
        for run_id in run_ids:
            self._runs.pop(run_id, None)
            recovery = self._recoveries.get(run_id)
            if recovery is not None and not recovery.state.pending:
                del self._recoveries[run_id]

    async def put_recovery(self, recovery: StoredRecovery) -> None:
        await trio.lowlevel.checkpoint()
        state = recovery.state
        previous = self._recoveries.get(state.run_id)
        self._recoveries[state.run_id] = recovery
        run = self._runs.get(state.run_id)
        if state.phase == "done" and run is not None:
            self._runs[state.run_id] = attrs.evolve(
                run, recovered=True, successor=state.new_run_id
            )
        entry = history_entry(previous, recovery, time.time())
        if entry is not None:
            self._history.append(entry)

    async def put_session(self, session: SessionRecord) -> None:
        await trio.lowlevel.checkpoint()
        self._session = session

    async def put_load(self, load: LoadRecord) -> None:
        await trio.lowlevel.checkpoint()
        self._loads[load.key] = load

    async def history(self, run_id: str | None = None) -> list[HistoryEntry]:
        await trio.lowlevel.checkpoint()
        return [e for e in self._history if run_id is None or e.run_id == run_id]

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
