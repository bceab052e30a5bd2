"""Garbage collection of temporary files whose ``expires_at`` has passed.

Runs in ``edit`` and ``rw`` elements only: ``ro`` and ``ar`` are frozen, and a file that
expires there stays until an operator decides. Each removal is an ordinary durable delete
recorded in the WAL with reason ``expired``.
"""

from __future__ import annotations

import logging
import time

from . import catalog
from . import modes as M
from . import wal as W
from .errors import FileNotFound

log = logging.getLogger("artstored.engine.retention")

GC_ACTOR = W.Actor("system:gc", "retention-gc")


def collect_expired(store, *, now: float | None = None, limit: int = 10_000,
                    progress=None) -> dict:
    """Delete up to ``limit`` expired temporary files; returns {removed, bytes, skipped}.

    ``now`` (epoch seconds) defaults to the current time. ``progress(done, total)`` is
    called after each file when given.
    """
    report = {"removed": 0, "bytes": 0, "skipped": None}
    if store.mode not in (M.EDIT, M.RW):
        report["skipped"] = f"mode {store.mode}: retention GC runs in edit and rw only"
        return report
    now_us = int((time.time() if now is None else now) * 1_000_000)
    with store.env.read() as txn:
        due = catalog.expired(txn, store.env, now_us, limit)
    for done, file_id in enumerate(due, 1):
        try:
            size = store.get(file_id).size
            store.delete(file_id, GC_ACTOR, reason="expired", check_mode=False)
        except FileNotFound:
            continue  # deleted meanwhile
        report["removed"] += 1
        report["bytes"] += size
        if progress:
            progress(done, len(due))
    if report["removed"]:
        log.info("retention GC removed %d files (%d bytes)", report["removed"], report["bytes"])
    return report
