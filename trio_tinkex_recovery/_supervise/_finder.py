"""How the supervisor learns which run its child trains.

Three sources, in any combination: the announce file the child appends
run ids to (`trio_tinkex_recovery.supervised.announce`); tinker-cookbook's
``LOG_PATH/checkpoints.jsonl`` (the run of the newest ``state_path``); and
discovery, any run of the key's owner first seen after the child started
(one job per key).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from .._types import Checkpoint

if TYPE_CHECKING:
    from .._protocols import RestClientProtocol

__all__ = ["AnnounceFile", "CookbookLog", "list_run_ids"]


class AnnounceFile:
    """The lines the child appends, read from where the supervisor started."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._offset = os.path.getsize(path)
        except OSError:
            self._offset = 0

    def read_new(self) -> list[str]:
        """The run ids announced since the last read (complete lines only)."""
        try:
            with open(self.path, "rb") as file:
                file.seek(self._offset)
                data = file.read()
        except OSError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self._offset += end + 1
        lines = data[:end].decode("utf-8", "replace").splitlines()
        return [line.strip() for line in lines if line.strip()]


class CookbookLog:
    """tinker-cookbook's ``checkpoints.jsonl`` in a log folder."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, "checkpoints.jsonl")
        #: The ``batch`` of each ``state_path`` read so far.
        self.batches: dict[str, int] = {}

    def newest_run(self) -> str | None:
        """The run of the newest record's ``state_path``, if any."""
        newest: str | None = None
        for record in self._records():
            state_path = record.get("state_path")
            if not isinstance(state_path, str):
                continue
            try:
                newest = Checkpoint.from_path(state_path).run_id
            except ValueError:
                continue
            batch = record.get("batch")
            if isinstance(batch, int) and not isinstance(batch, bool):
                self.batches[state_path] = batch
        return newest

    def _records(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, encoding="utf-8") as file:
                lines = file.readlines()
        except OSError:
            return []
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written
            if isinstance(record, dict):
                records.append(record)
        return records


async def list_run_ids(rest: RestClientProtocol) -> list[str]:
    """The ids of the key's own runs, newest first as listed (first page)."""
    lister = getattr(rest, "list_training_runs", None)
    if lister is None:
        return []
    page = await lister(limit=100, offset=0)
    ids = (item.get("training_run_id") for item in page.items)
    return [run_id for run_id in ids if isinstance(run_id, str)]
