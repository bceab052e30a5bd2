"""Group commit: uploads that finish while a batch is being made durable join the next one.

A batch costs two LMDB commits and one flush of the filesystem(s), however many uploads it
holds:

1. one transaction records a PENDING intent for every upload in the batch;
2. each data file is renamed from ``tmp/`` into ``objects/…`` and its attr.json written
   beside it (data files were already fdatasync'd by their uploader, in parallel);
3. the sidecars and directory entries are flushed: one ``syncfs()`` per filesystem
   (``sync_method="syncfs"``) or an fsync per sidecar and per directory (``"fsync"``);
4. one transaction adds the catalog entries, appends the COMMITTED WAL records and drops
   the intents.

Only then is each upload's future resolved: nobody is answered before their batch is
durable. A crash at any point leaves PENDING intents that recovery resolves (roll forward
if the files are complete, otherwise remove them).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from . import catalog, durable, ids
from . import layout as L
from . import modes as M
from . import wal as W
from .catalog import CatalogEntry
from .ingest import UploadWriter

log = logging.getLogger("artstored.engine.groupcommit")

SYNC_METHODS = ("syncfs", "fsync")


@dataclass
class PreparedUpload:
    """An upload whose bytes are durable in ``tmp/`` and whose attr record is final."""

    writer: UploadWriter
    entry: CatalogEntry
    attr_bytes: bytes
    actor: W.Actor
    future: Future = field(default_factory=Future)
    error: BaseException | None = None


@dataclass
class CommitStats:
    """What ``/metrics`` shows of the group commit (read without locking: counters only)."""

    batches: int = 0
    uploads: int = 0
    failed: int = 0
    largest_batch: int = 0
    last_batch: int = 0
    last_commit_seconds: float = 0.0
    total_commit_seconds: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)  # recent, for histograms

    def record(self, size: int, seconds: float) -> None:
        self.batches += 1
        self.uploads += size
        self.last_batch = size
        self.largest_batch = max(self.largest_batch, size)
        self.last_commit_seconds = seconds
        self.total_commit_seconds += seconds
        self.batch_sizes.append(size)
        del self.batch_sizes[:-1024]


class GroupCommitter:
    """Owns one thread that commits batches of PreparedUploads. Submit from any thread."""

    def __init__(self, store, *, max_batch: int = 256, sync_method: str = "syncfs"):
        if sync_method not in SYNC_METHODS:
            raise ValueError(f"sync_method must be one of {SYNC_METHODS}")
        self.store = store
        self.max_batch = max_batch
        self.sync_method = sync_method
        self.stats = CommitStats()
        self._queue: queue.SimpleQueue[PreparedUpload | None] = queue.SimpleQueue()
        self._fsync_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fsync")
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._stopped = False
        self._thread.start()

    def submit(self, item: PreparedUpload) -> Future:
        """Queue ``item``; its future gets the attr record once durable, or the error."""
        if self._stopped:
            raise RuntimeError("group committer is stopped")
        self._queue.put(item)
        return item.future

    def queue_depth(self) -> int:
        return self._queue.qsize()

    def stop(self) -> None:
        """Commit what is queued, then stop the thread."""
        if self._stopped:
            return
        self._stopped = True
        self._queue.put(None)
        self._thread.join()
        self._fsync_pool.shutdown()

    # --- the committer thread -------------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch = [] if first is None else [first]
            stop = first is None
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            if batch:
                started = time.perf_counter()
                try:
                    self._commit(batch)
                except BaseException as exc:  # never leave a caller waiting forever
                    log.exception("group commit failed")
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(exc)
                self.stats.record(len(batch), time.perf_counter() - started)
            if stop:
                return

    def _commit(self, batch: list[PreparedUpload]) -> None:
        store = self.store
        with store.mode_lock:
            try:
                M.require(store.mode, M.UPLOAD)
                self._record_intents(batch)
            except BaseException as exc:
                for item in batch:
                    self._fail(item, exc)
                    item.future.set_exception(exc)
                return
            live = [item for item in batch if self._place(item)]
            try:
                if live:
                    self._flush(live)
                self._record_outcomes(batch)
            except BaseException as exc:
                # Not committed: take the files away again and close the intents, so that
                # nothing the client was not told about appears later.
                log.error("committing a batch of %d failed: %s", len(batch), exc)
                for item in live:
                    self._unplace(item)
                    self._fail(item, exc)
                self._close_intents_after_failure(batch)
                raise
        store.notify_committed()
        for item in batch:
            if item.error is None:
                item.future.set_result(item.entry.attr)
            elif not item.future.done():
                item.future.set_exception(item.error)
        self.stats.failed += sum(1 for item in batch if item.error is not None)

    def _record_outcomes(self, batch: list[PreparedUpload]) -> None:
        env = self.store.env
        with env.write() as txn:
            for item in batch:
                if item.error is None:
                    catalog.put(txn, env, item.entry)
                    W.append(txn, env, W.FILE_CREATE, item.actor, file_id=item.entry.file_id,
                             data={"attr": item.entry.attr, "disk": item.entry.disk,
                                   "rel": item.entry.rel})
                else:
                    W.append(txn, env, W.FILE_CREATE, item.actor, state=W.ROLLED_BACK,
                             file_id=item.entry.file_id,
                             data={"error": type(item.error).__name__})
                W.drop_intent(txn, env, ids.file_id_key(item.entry.file_id))

    def _close_intents_after_failure(self, batch: list[PreparedUpload]) -> None:
        env = self.store.env
        try:
            with env.write() as txn:
                for item in batch:
                    W.append(txn, env, W.FILE_CREATE, item.actor, state=W.ROLLED_BACK,
                             file_id=item.entry.file_id, data={"error": "batch failed"})
                    W.drop_intent(txn, env, ids.file_id_key(item.entry.file_id))
        except Exception:
            # Recovery at the next start finds the intents and, the files being gone,
            # rolls them back.
            log.exception("cannot record the rollback; recovery will at next start")

    def _record_intents(self, batch: list[PreparedUpload]) -> None:
        env = self.store.env
        with env.write() as txn:
            for item in batch:
                W.put_intent(txn, env, ids.file_id_key(item.entry.file_id), W.FILE_CREATE,
                             item.actor, file_id=item.entry.file_id, disk=item.entry.disk,
                             rel=item.entry.rel, tmp=item.writer.tmp_path,
                             size=item.entry.size, sha256=item.entry.attr["checksum_sha256"])

    def _place(self, item: PreparedUpload) -> bool:
        """Move the data into objects/ and write its sidecar (not yet flushed)."""
        disk = self.store.disks.get(item.entry.disk)
        data_path = disk.data_path(item.entry.rel)
        try:
            durable.makedirs_durable(os.path.dirname(data_path), disk.objects)
            os.rename(item.writer.tmp_path, data_path)
            attr_path = data_path + L.ATTR_SUFFIX
            tmp = durable.write_unsynced(attr_path, item.attr_bytes)
            os.rename(tmp, attr_path)
            return True
        except OSError as exc:
            log.error("placing %s failed: %s", item.entry.file_id, exc)
            self._unplace(item)
            self._fail(item, exc)
            return False

    def _unplace(self, item: PreparedUpload) -> None:
        disk = self.store.disks.get(item.entry.disk)
        data_path = disk.data_path(item.entry.rel)
        for path in (data_path + L.ATTR_SUFFIX, durable.temp_name_for(data_path + L.ATTR_SUFFIX),
                     data_path, item.writer.tmp_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:  # reported; recovery will retry at next start
                log.error("cannot remove %s: %s", path, exc)

    def _flush(self, live: list[PreparedUpload]) -> None:
        disks = {self.store.disks.get(item.entry.disk) for item in live}
        if self.sync_method == "syncfs":
            for dev_root in {d.dev: d.objects for d in disks}.values():
                durable.syncfs(dev_root)
            return
        paths = [self.store.disks.get(i.entry.disk).data_path(i.entry.rel) + L.ATTR_SUFFIX
                 for i in live]
        dirs = {os.path.dirname(p) for p in paths}
        list(self._fsync_pool.map(_fsync_path, paths))
        list(self._fsync_pool.map(durable.fsync_dir, dirs))

    def _fail(self, item: PreparedUpload, exc: BaseException) -> None:
        item.error = exc
        item.writer.abort()


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
