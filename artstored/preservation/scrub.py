"""``scrub``: re-hash every stored object, oldest check first, at a bounded rate.

A pass covers every file catalogued before the pass began whose last check is older than
the pass's start (uploads arriving meanwhile wait for the next pass, so a pass ends):
first the files never checked (in catalog order), then the others, the check longest ago
first. Each check is recorded at once (``engine.fixity``: last_verified, outcome, and a
PREMIS ``fixity check`` event), so a pass interrupted by a restart or a cancel resumes
where it stopped without re-hashing what was done. A file whose size or SHA-256 differs
from its record, or whose data is gone, is quarantined (moved aside, never deleted) and
reported.

The rate (MB/s) is a token bucket shared by ``concurrency`` hashing threads: uploads and
downloads keep their share of the disks.
"""

from __future__ import annotations

import copy
import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ..engine import attrs as A
from ..engine import fixity
from ..engine.errors import DiskOffline, StoreCorrupt
from .jobs import JobCancelled, background_priority

CHUNK = 1 << 20
BATCH = 64          # fixity records written per transaction, at most
FLUSH_SECONDS = 1.0  # and at least this often: a crash re-hashes at most that much
EXAMPLES = 20


class RateLimit:
    """A token bucket of bytes per second (0: unlimited); ``take(n)`` blocks as needed,
    returning early if ``stop`` is set."""

    def __init__(self, bytes_per_second: float, stop: threading.Event):
        self.rate = bytes_per_second
        self.stop = stop
        self._allowance = min(bytes_per_second, CHUNK * 4) if bytes_per_second else 0
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        if not self.rate:
            return
        while True:
            with self._lock:
                now = time.monotonic()
                self._allowance = min(max(self.rate, CHUNK),
                                      self._allowance + (now - self._last) * self.rate)
                self._last = now
                if self._allowance >= n or self._allowance >= CHUNK * 4:
                    self._allowance -= n
                    return
                wait = (n - self._allowance) / self.rate
            if self.stop.wait(min(wait, 0.5)):
                return


def _open(store, entry) -> int:
    # The common case in one syscall; the view knows the rest (tmp/, quarantine, offline).
    try:
        return os.open(store.view.final_path(entry), os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, DiskOffline):
        return store.view.open_content(entry)


def _hash(store, entry, limit: RateLimit) -> tuple[int, str]:
    """(size, SHA-256) of the file's data, read at the rate ``limit`` allows; JobCancelled
    as soon as the job is (a large file does not hold a cancel up)."""
    fd = _open(store, entry)
    try:
        if entry.size < CHUNK:
            # A small file: one read says everything (a short read of a regular file is
            # its end; one byte more than recorded means it grew).
            limit.take(max(1, entry.size))
            data = os.read(fd, entry.size + 1)
            return len(data), hashlib.sha256(data).hexdigest()
        h = hashlib.sha256()
        size = 0
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while True:
            # Charge what this read will bring, not a whole chunk.
            limit.take(max(1, min(CHUNK, entry.size - size)))
            if limit.stop.is_set():
                raise JobCancelled()
            n = os.readv(fd, [buf])
            if not n:
                break
            h.update(view[:n])
            size += n
        return size, h.hexdigest()
    finally:
        os.close(fd)


def check_one(store, entry, limit: RateLimit) -> tuple[str, dict | None, int]:
    """(outcome, fixity record to write or None, bytes read) for one file."""
    file_id = entry.file_id
    now_us = time.time_ns() // 1000
    try:
        size, sha = _hash(store, entry, limit)
    except fixity.Quarantined:
        return "quarantined", None, 0
    except DiskOffline:
        return "offline", None, 0
    except (StoreCorrupt, FileNotFoundError):
        if store.view.entry(file_id) is None:
            return "gone", None, 0   # deleted while we looked
        fixity.quarantine(store, entry, fixity.MISSING, "the data file is missing")
        return fixity.MISSING, None, 0
    if size != entry.size or sha != entry.attr.get("checksum_sha256"):
        if store.view.entry(file_id) is None:
            return "gone", None, size
        detail = (f"{size} bytes with SHA-256 {sha}; recorded {entry.size} bytes "
                  f"{entry.attr.get('checksum_sha256')}")
        fixity.quarantine(store, entry, fixity.CORRUPT, detail)
        return fixity.CORRUPT, None, size
    return fixity.OK, {"last_verified": now_us, "outcome": fixity.OK, "bytes": size}, size


def _created_us(entry) -> int:
    return int(A.parse_time(entry.attr["created_at"]).timestamp() * 1_000_000)


def _worklist(store, state: dict, ctx):
    """Entries to check in this pass: never checked (catalog order), then checked before
    the pass began, oldest first. Resuming walks the catalog again from the start rather
    than trusting a saved position: a check that finished but was not yet recorded when
    the daemon died must not be skipped (skipping a recorded one costs a lookup)."""
    pass_started = state["pass_started_us"]
    cursor = None
    while True:
        with store.view.snapshot() as snap:   # one read transaction a page
            entries, cursor = snap.page(limit=500, cursor=cursor, order="asc")
            todo = []
            for entry in entries:
                if _created_us(entry) >= pass_started:
                    cursor = None   # catalog order is creation order: the rest came later
                    break
                if snap.fixity(entry.file_id) is None:
                    todo.append(entry)
        yield from todo
        ctx.check()
        if cursor is None:
            break
    seen = set()
    while True:
        with store.view.snapshot() as snap:
            # Files seen but not re-recorded (offline, or not flushed yet) stay at the
            # front of the order: look past them.
            oldest = snap.oldest_checked(pass_started, 500 + len(seen))
            batch = [e for e in (snap.entry(f) for f in oldest if f not in seen)
                     if e is not None]
        if not batch:
            return
        for entry in batch:
            seen.add(entry.file_id)
            yield entry
        ctx.check()


def run(store, ctx, *, rate_mb_per_s: float = 50.0, concurrency: int = 2) -> dict:
    """The scrub job (see the module docstring); ``ctx`` is a preservation JobContext."""
    state = ctx.checkpoint or {}
    if not state:
        state = {"pass_started_us": time.time_ns() // 1000,
                 "checked": 0, "bytes": 0, "outcomes": {}, "problems": [],
                 "rate_mb_per_s": rate_mb_per_s, "concurrency": concurrency}
    stats = store.view.stats()
    limit = RateLimit(state["rate_mb_per_s"] * 1e6, ctx.cancelled)
    pending: list[tuple[str, dict]] = []
    lock = threading.Lock()

    def count(outcome: str, nbytes: int) -> None:
        state["outcomes"][outcome] = state["outcomes"].get(outcome, 0) + 1
        if outcome in (fixity.OK, fixity.CORRUPT, fixity.MISSING):
            state["checked"] += 1
        state["bytes"] += nbytes

    def record(file_id: str, outcome: str, rec: dict | None, nbytes: int) -> None:
        # Counted once on record (the checkpoint never counts a check a crash may lose):
        # a good check when its fixity record is written, a bad one at once (its
        # quarantine is durable already).
        with lock:
            if rec is not None:
                pending.append((file_id, rec, outcome, nbytes))
                return
            count(outcome, nbytes)
            if outcome in (fixity.CORRUPT, fixity.MISSING) and \
                    len(state["problems"]) < EXAMPLES:
                state["problems"].append({"file_id": file_id, "outcome": outcome})

    last_flush = [time.monotonic()]

    def flush() -> None:
        with lock:
            batch = list(pending)
            pending.clear()
            for _, _, outcome, nbytes in batch:
                count(outcome, nbytes)
            snapshot = copy.deepcopy(state)
        # The records and the counts that include them commit together.
        fixity.checked(store, [(file_id, rec) for file_id, rec, _, _ in batch],
                       also=lambda txn: ctx.save_in(txn, snapshot))
        last_flush[0] = time.monotonic()

    pool = ThreadPoolExecutor(max(1, int(state["concurrency"])), thread_name_prefix="scrub",
                              initializer=background_priority)
    window: list = []
    try:
        for entry in _worklist(store, state, ctx):
            window.append((entry.file_id, pool.submit(check_one, store, entry, limit)))
            if len(window) >= 2 * state["concurrency"]:
                file_id, future = window.pop(0)
                record(file_id, *future.result())
            if len(pending) >= BATCH or time.monotonic() - last_flush[0] >= FLUSH_SECONDS:
                flush()
            ctx.progress(done_files=state["checked"], total_files=stats["files"],
                         done_bytes=state["bytes"], total_bytes=stats["bytes"],
                         checkpoint=state)
        while window:
            file_id, future = window.pop(0)
            record(file_id, *future.result())
    finally:
        # Cancelled or stopping: keep every check that finished, so a resume skips it.
        pool.shutdown(wait=True)
        for file_id, future in window:
            if future.done() and future.exception() is None:
                record(file_id, *future.result())
        flush()
    ctx.progress(done_files=state["checked"], total_files=stats["files"],
                 done_bytes=state["bytes"], total_bytes=stats["bytes"], checkpoint=state)
    return {"pass_started_us": state["pass_started_us"], "checked": state["checked"],
            "bytes": state["bytes"], "outcomes": state["outcomes"],
            "problems": state["problems"], "complete": True}
