"""The index follows the WAL: creates, metadata changes and deletes, in WAL order, in batches.

Each Tantivy commit carries, in a state document, the WAL sequence it has applied, so the
index and its position can never disagree: after a crash the follower resumes from there.
Applying a record is idempotent (an upsert deletes the file's document and adds it again in
the same commit), so replaying a record already applied never doubles an entry.

One thread owns the index writer. It wakes when the store commits (``Store.add_commit_
listener``) or once a second, applies what is new, commits (~30 ms whatever the batch),
and reloads the searcher. Following a busy store it waits ``COMMIT_GAP_SECONDS`` after a
commit before the next, so that records gather; a backlog is committed batch by batch.
An index that is missing, unreadable or of another schema version is rebuilt from the
catalog; ``reindex()`` does the same on request. It reads the store only
through the engine's ReadView (the WAL after a sequence, the catalog in one snapshot).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time

import tantivy

from ..engine import wal as W
from ..engine.view import ReadView
from . import documents as D
from .schema import KIND_FILE, KIND_STATE, SCHEMA_VERSION, build_schema, open_index

log = logging.getLogger("artstored.index")

VERSION_FILE = "artstore-index.json"
APPLY_BATCH = 5000
WRITER_HEAP = 64 * 1024 * 1024
WRITER_THREADS = 2
IDLE_WAKE_SECONDS = 1.0
# Between commits while following. A commit costs ~30 ms and several fsyncs on the data
# filesystem whatever it holds; committing after every upload batch made the group
# commit's own flushes wait behind Tantivy's (single-client 4 KiB PUT: 129/s with a
# commit per batch, 235/s with one per 0.25 s). Search lags the catalog by this much more.
COMMIT_GAP_SECONDS = 0.25


class IndexFollower:
    """The index of one store, kept up to date from its WAL by a background thread.

    ``searcher()`` is thread-safe and cheap; the searcher it returns is a snapshot that
    stays valid (and unchanged) for as long as the caller holds it.
    """

    def __init__(self, store, path: str, *, view: ReadView | None = None):
        """``store``: the Store whose commits wake the follower; ``view``: how it reads
        that store (default ``ReadView.of_store(store)``)."""
        self.store = store
        self.view = view or ReadView.of_store(store)
        self.path = path
        self.schema = build_schema()
        self.applied_seq = 0
        self.commits = 0
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()          # around the writer: follower vs reindex
        self._needs_rebuild = False
        self._thread: threading.Thread | None = None
        self._last_commit = 0.0                # time.monotonic() of the last commit
        self._open()
        store.add_commit_listener(self._wake.set)

    # --- opening --------------------------------------------------------------------------

    def _open(self) -> None:
        version_path = os.path.join(self.path, VERSION_FILE)
        try:
            with open(version_path) as f:
                version = json.load(f).get("schema_version")
        except (OSError, ValueError):
            version = None
        if version != SCHEMA_VERSION or not tantivy.Index.exists(self.path):
            # Built from the catalog by the follower thread, so that the daemon is ready
            # (serving everything but complete search results) while it runs.
            if os.path.isdir(self.path):
                log.warning("index at %s is missing or of another version: rebuilding",
                            self.path)
                shutil.rmtree(self.path)
            os.makedirs(self.path)
            self.index = open_index(self.path, self.schema)
            self.writer = self.index.writer(heap_size=WRITER_HEAP, num_threads=WRITER_THREADS)
            self._needs_rebuild = True
        else:
            self.index = open_index(self.path, self.schema)
            self.writer = self.index.writer(heap_size=WRITER_HEAP, num_threads=WRITER_THREADS)
            self.applied_seq = self._read_state()
        self.index.reload()

    def _read_state(self) -> int:
        self.index.reload()
        searcher = self.index.searcher()
        query = tantivy.Query.term_query(self.schema, "kind", KIND_STATE)
        hits = searcher.search(query, 1).hits
        if not hits:
            return 0
        return int(searcher.doc(hits[0][1])["wal_seq"][0])

    # --- the thread -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="index-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self.writer.wait_merging_threads()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(IDLE_WAKE_SECONDS)
            # Let a busy store's records gather into one commit (see COMMIT_GAP_SECONDS).
            gap = self._last_commit + COMMIT_GAP_SECONDS - time.monotonic()
            if gap > 0 and self._stop.wait(gap):
                break
            self._wake.clear()
            try:
                if self._needs_rebuild:
                    self.reindex()
                while self.catch_up_once() and not self._stop.is_set():
                    pass
                self.last_error = None
            except Exception as exc:  # keep following; the next wake retries
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("index follower failed; retrying")
                time.sleep(0.5)

    def catch_up_once(self) -> bool:
        """Apply up to APPLY_BATCH new WAL records and commit; True if there may be more."""
        records = self.view.wal_after(self.applied_seq, APPLY_BATCH)
        if not records:
            return False
        with self._lock:
            rebuild = False
            for record in records:
                rebuild |= self._apply(record)
            last = records[-1]["seq"]
            if rebuild:
                self._rebuild(progress=None)
            else:
                self._commit(last)
        return len(records) == APPLY_BATCH

    def _apply(self, record: dict) -> bool:
        """Add one record's effect to the writer; True if it asks for a full rebuild."""
        if record["state"] != W.COMMITTED:
            return False
        kind, file_id = record["kind"], record.get("file_id")
        if kind in (W.FILE_CREATE, W.FILE_UPDATE) and record["data"].get("attr"):
            self.writer.delete_documents_by_term("file_id", file_id)
            self.writer.add_document(D.file_document(record["data"]["attr"]))
        elif kind in (W.FILE_DELETE, W.FILE_RELEASE):
            self.writer.delete_documents_by_term("file_id", file_id)
        elif kind == W.CATALOG_REBUILD:
            return True
        return False

    def _commit(self, seq: int) -> None:
        self.writer.delete_documents_by_term("file_id", D.STATE_ID)
        self.writer.add_document(D.state_document(seq))
        self.writer.commit()
        self._last_commit = time.monotonic()
        self.index.reload()
        self.applied_seq = seq
        self.commits += 1

    # --- rebuilding -----------------------------------------------------------------------

    def _rebuild(self, progress) -> dict:
        """Replace every document with the catalog's records (caller holds the writer).
        The catalog and the WAL position are read in one snapshot, so records committed
        meanwhile are applied afterwards by the follower."""
        started = time.perf_counter()
        self.writer.delete_all_documents()
        count = 0
        try:
            with self.view.snapshot() as snap:
                seq = snap.wal_head().seq
                total = snap.stats()["files"]
                for entry in snap.entries():
                    self.writer.add_document(D.file_document(entry.attr))
                    count += 1
                    if progress and count % 1000 == 0:
                        progress(count, total)  # may raise: a cancelled job
        except BaseException:
            self.writer.rollback()   # the index stays as it was, never half rebuilt
            raise
        self._commit(seq)
        if progress:
            progress(count, total)
        seconds = time.perf_counter() - started
        log.info("index rebuilt: %d files in %.1f s", count, seconds)
        return {"files": count, "seconds": round(seconds, 3), "wal_seq": seq}

    def reindex(self, progress=None) -> dict:
        """Rebuild the index from the catalog now (blocking; safe while following)."""
        with self._lock:
            report = self._rebuild(progress)
            if self._needs_rebuild:
                with open(os.path.join(self.path, VERSION_FILE), "w") as f:
                    json.dump({"schema_version": SCHEMA_VERSION}, f)
                self._needs_rebuild = False
            return report

    # --- reading --------------------------------------------------------------------------

    def searcher(self) -> tantivy.Searcher:
        return self.index.searcher()

    def lag(self) -> dict:
        """How far the index is behind the WAL: records, and seconds since the oldest
        record it has not applied was written (``rebuilding`` while built from scratch)."""
        with self.view.snapshot() as snap:
            head = snap.wal_head().seq
            pending = snap.wal_after(self.applied_seq, 1)
        seconds = 0.0
        if pending:
            seconds = max(0.0, time.time() - pending[0]["ts"] / 1e6)
        return {"wal_seq": head, "index_seq": self.applied_seq,
                "records_behind": head - self.applied_seq, "seconds_behind": round(seconds, 3),
                "rebuilding": self._needs_rebuild, "commits": self.commits,
                "error": self.last_error}

    def count(self) -> int:
        searcher = self.searcher()
        # limit 0 makes tantivy panic ("Limit must be greater than 0").
        return searcher.search(tantivy.Query.term_query(self.schema, "kind", KIND_FILE), 1).count
