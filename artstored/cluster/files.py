"""What a node keeps of the cluster on disk, in ``<data_dir>/cluster/``:
``document.bin`` (the newest cluster document it accepted, exactly as signed) and
``state.json`` (small facts about applying it, e.g. which mode request was applied)."""

from __future__ import annotations

import asyncio
import json
import os

from ..engine import durable
from ..replication import document as D


class ClusterFiles:
    def __init__(self, directory: str):
        self.dir = directory
        self._persisted: int | None = None

    def load_document(self) -> D.Document | None:
        """The document on disk, checked (its signature must be its own admin's); None if
        there is none. Raises MalformedDocument / ForgedDocument for a damaged one."""
        try:
            with open(os.path.join(self.dir, "document.bin"), "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            return None
        doc = D.parse(blob)
        if not doc.signed_by_admin_of(doc):
            raise D.ForgedDocument(f"{self.dir}/document.bin: signature does not verify")
        self._persisted = doc.version
        return doc

    async def persist(self, doc: D.Document) -> None:
        """Write ``doc`` durably unless a version as new is already on disk."""
        if self._persisted is not None and doc.version <= self._persisted:
            return
        await asyncio.get_running_loop().run_in_executor(
            None, self._write, "document.bin", doc.blob)
        self._persisted = doc.version

    def read_state(self) -> dict:
        try:
            with open(os.path.join(self.dir, "state.json"), "rb") as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return {}

    async def write_state(self, changes: dict) -> None:
        """Merge ``changes`` into state.json, durably."""
        state = {**self.read_state(), **changes}
        await asyncio.get_running_loop().run_in_executor(
            None, self._write, "state.json", json.dumps(state).encode() + b"\n")

    def _write(self, name: str, data: bytes) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        durable.atomic_write(os.path.join(self.dir, name), data, mode=0o600)
