"""The change feed: this node's WAL records in order, after a sequence number, waiting for
the next one when there is none yet (long-poll). Peers follow it to replicate
(``/cluster/v1/changes``); clients follow it as a notification feed (``/api/v1/changes``,
JSON or Server-Sent Events). Both resume from the last sequence they saw.

Reads go through the engine's read view; a commit listener wakes the waiters, so a record
reaches a waiting follower within milliseconds of its commit.
"""

from __future__ import annotations

import asyncio
import time

from .engine import wal as W

# What a client sees of a record (peers get the whole record): the file events, with the
# attr as it was then, and who did it.
FILE_KINDS = (W.FILE_CREATE, W.FILE_UPDATE, W.FILE_DELETE)


class ChangeFeed:
    """Created on the daemon's event loop once the store is open."""

    def __init__(self, store):
        self.store = store
        self._loop = asyncio.get_running_loop()
        # One future per "generation": a commit resolves the current one and starts the
        # next. A waiter takes the current future *before* it reads, so a commit that
        # lands between its read and its wait is never missed (a shared Event that every
        # waiter clears would lose it).
        self._next: asyncio.Future = self._loop.create_future()
        store.add_commit_listener(lambda: self._loop.call_soon_threadsafe(self._committed))

    def _committed(self) -> None:
        done, self._next = self._next, self._loop.create_future()
        done.set_result(None)

    @property
    def head(self) -> int:
        """The newest sequence number."""
        return self.store.stats()["wal_seq"]

    async def after(self, seq: int, limit: int, wait: float) -> list[dict]:
        """Up to ``limit`` records with a sequence above ``seq``, in order; if there are
        none, wait up to ``wait`` seconds for one. Returns [] when the wait ends empty."""
        deadline = time.monotonic() + wait
        loop = asyncio.get_running_loop()
        while True:
            changed = self._next
            records = await loop.run_in_executor(None, self._read, seq, limit)
            remaining = deadline - time.monotonic()
            if records or remaining <= 0:
                return records
            try:
                await asyncio.wait_for(asyncio.shield(changed), remaining)
            except asyncio.TimeoutError:
                pass

    def _read(self, seq: int, limit: int) -> list[dict]:
        with self.store.view.snapshot() as snap:
            return snap.wal_after(seq, limit)


def client_view(record: dict) -> dict | None:
    """A record as the public feed shows it (None: not a file event, or one that did not
    happen — a rolled-back record)."""
    if record.get("kind") not in FILE_KINDS or record.get("state") != W.COMMITTED:
        return None
    data = record.get("data") or {}
    out = {"seq": record["seq"], "kind": record["kind"], "file_id": record.get("file_id"),
           "time_us": record.get("ts"), "actor": record.get("actor")}
    if "attr" in data:
        out["attr"] = data["attr"]
    if "origin" in data:
        out["origin"] = data["origin"]
    if record["kind"] == W.FILE_DELETE:
        out["reason"] = data.get("reason")
    return out
