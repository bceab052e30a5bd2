"""Group commit: uploads that finish while a batch is being made durable join the next one.

A batch costs one filesystem flush and one LMDB commit, however many uploads it holds:

1. each upload's sidecar is written beside its data in ``tmp/``; small uploads arrive as
   bytes in memory and their data file is written here too (so a small upload costs its
   request no disk I/O at all); data files of 1 MiB or more were fdatasync'd by their own
   uploader, in parallel. A submitter with a thread of its own (a bundle receiver) may
   have done this step already (``PreparedUpload.stage``), so that it is not done in this
   one thread;
2. one flush makes every new file in ``tmp/`` durable — one ``syncfs()`` per filesystem, or
   an fsync per file and directory (``sync_method="fsync"``) — and with them the renames of
   the batch before (step 4), which is why step 3 may forget that batch's intents;
3. one LMDB transaction adds the catalog entries, appends the COMMITTED WAL records, records
   a ``file.place`` intent per upload ("move from tmp/ to objects/") and drops the intents
   of the previous batch;
4. data and sidecar are renamed into ``objects/…``; then the futures are resolved.

Nobody is answered before step 3 has committed: an acknowledged upload is in the catalog
and its bytes are durable in ``tmp/`` or ``objects/``. A crash before step 3 leaves only
files in ``tmp/`` (removed at start: nobody was told); after it, recovery finishes the
renames the intents name. Readers in this process that race step 4 find the file through
``placing()``.
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
from . import lmdb_schema as S
from .errors import Busy, FileDeleted, storage_error
from . import layout as L
from . import modes as M
from . import wal as W
from .catalog import CatalogEntry
from .ingest import BufferedUpload, UploadWriter
from .stats import Histogram

log = logging.getLogger("artstored.engine.groupcommit")

SYNC_METHODS = ("syncfs", "fsync")
IDLE_SETTLE_SECONDS = 0.05


@dataclass
class PreparedUpload:
    """An upload whose bytes are in ``tmp/`` and whose attr record is final."""

    writer: UploadWriter | BufferedUpload
    entry: CatalogEntry
    attr_bytes: bytes
    actor: W.Actor
    future: Future = field(default_factory=Future)
    error: BaseException | None = None
    # A replica of a file first stored on another node: {"node": id, "seq": its WAL seq}.
    # Committing one that is already here (or was deleted here) changes nothing.
    origin: dict | None = None
    seq: int | None = None       # this node's WAL sequence of the record, once committed
    staged: bool = False         # its data and sidecar are written in tmp/ (not synced)

    @property
    def tmp_data(self) -> str:
        return self.writer.tmp_path

    @property
    def tmp_attr(self) -> str:
        return self.writer.tmp_path + L.ATTR_SUFFIX

    def stage(self) -> None:
        """Step 1 for this upload: write its bytes (if still in memory) and its sidecar in
        ``tmp/``, not synced (the batch's flush does that). A caller with a thread of its
        own may do this before ``submit``, so that the committer does not; a second call
        does nothing. Raises StorageError (or StorageFull); the caller then ``discard``s."""
        if self.staged:
            return
        self.writer.materialize()
        try:
            fd = os.open(self.tmp_attr, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         0o644)
            try:
                durable.write_all(fd, self.attr_bytes)
            finally:
                os.close(fd)
        except OSError as exc:
            durable.unlink_quietly(self.tmp_attr)
            raise storage_error(exc) from exc
        self.staged = True

    def discard(self) -> None:
        """Remove what it has in ``tmp/`` and give back its disk claim: for an upload that
        will not be committed. Final (it cannot be staged again); a second call does
        nothing."""
        self.writer.abort()
        durable.unlink_quietly(self.tmp_attr)
        self.staged = False


@dataclass
class CommitStats:
    """What ``/metrics`` shows of the group commit (plain counters: read without locking)."""

    batches: int = 0
    uploads: int = 0
    failed: int = 0
    largest_batch: int = 0
    commit_seconds: Histogram = field(default_factory=lambda: Histogram(
        (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)))
    batch_sizes: Histogram = field(default_factory=lambda: Histogram(
        (1, 2, 4, 8, 16, 32, 64, 128, 256)))

    def record(self, size: int, seconds: float) -> None:
        self.batches += 1
        self.uploads += size
        self.largest_batch = max(self.largest_batch, size)
        self.commit_seconds.observe(seconds)
        self.batch_sizes.observe(size)


def place_intent(entry: CatalogEntry, tmp_data: str) -> dict:
    """The ``file.place`` intent: where the committed file is, by disk identity and names
    inside that disk (never an absolute path: a root may be mounted elsewhere next time)."""
    return {"file_id": entry.file_id, "disk": entry.disk, "rel": entry.rel,
            "tmp_name": os.path.basename(tmp_data)}


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
        # Placed by the last batch, not yet known durable: intent keys and their dirs.
        self._placed_ops: list[bytes] = []
        self._placed_dirs: set[str] = set()
        # file_id -> tmp data path, while a committed file is between tmp/ and objects/.
        self._placing: dict[str, str] = {}
        self._placed = threading.Condition()
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

    def placing(self, file_id: str) -> str | None:
        """The tmp/ path of a committed file whose rename into objects/ is under way."""
        return self._placing.get(file_id)

    def wait_placed(self, file_id: str, timeout: float = 30.0) -> None:
        """Return once ``file_id`` is not between tmp/ and objects/ (at once for a file that
        never was, or is placed). A PATCH or DELETE calls this after it has seen the catalog
        entry, so it never writes beside a rename that would then undo it. Raises Busy if
        the move has not finished in ``timeout`` (its rename failed: recovery will do it)."""
        with self._placed:
            if not self._placed.wait_for(lambda: file_id not in self._placing, timeout):
                raise Busy(f"file {file_id} is still being moved into place; try again later",
                           file_id=file_id)

    def stop(self) -> None:
        """Commit what is queued, make the last renames durable, stop the thread."""
        if self._stopped:
            return
        self._stopped = True
        self._queue.put(None)
        self._thread.join()
        try:
            self._settle()
        finally:
            self._fsync_pool.shutdown()

    # --- the committer thread -------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                # Idle for a moment with renames not yet known durable: settle them, so an
                # idle store holds no intents.
                first = self._queue.get(timeout=IDLE_SETTLE_SECONDS if self._placed_ops
                                        else None)
            except queue.Empty:
                try:
                    with self.store.mode_lock:
                        self._settle()
                except Exception:
                    log.exception("settling the last batch failed; recovery will")
                continue
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
        with self.store.mode_lock:
            try:
                M.require(self.store.mode, M.UPLOAD)
            except BaseException as exc:
                for item in batch:
                    self._fail(item, exc)
                return
            live = self.stage(self._drop_known_replicas(batch))
            if live:
                try:
                    self.flush(live)
                    self.commit_txn(live)
                except BaseException as exc:
                    # Nothing committed: nobody may be told, and the tmp files go.
                    for item in live:
                        self._fail(item, exc)
                    raise
                self.place(live)
        self.store.notify_committed()
        for item in batch:
            if item.error is None and not item.future.done():
                item.future.set_result(item.entry.attr)
        self.stats.failed += sum(1 for item in batch if item.error is not None)

    def _drop_known_replicas(self, batch: list[PreparedUpload]) -> list[PreparedUpload]:
        """Replicas of files already catalogued (or deleted) here are answered with what is
        here and go no further. Race-free: this thread is the only one that creates files."""
        if not any(item.origin is not None for item in batch):
            return batch
        env, out, seen = self.store.env, [], set()
        with env.read() as txn:
            for item in batch:
                fid = item.entry.file_id
                if item.origin is None:
                    out.append(item)
                    continue
                existing = catalog.get(txn, env, fid)
                tombstone = txn.get(ids.file_id_key(fid), db=env.db(S.DB_TOMBSTONES))
                if existing is None and tombstone is None and fid not in seen:
                    seen.add(fid)
                    out.append(item)
                    continue
                item.discard()
                if tombstone is not None:
                    self._fail(item, FileDeleted(f"file {fid} was deleted here; it is not "
                                                 "brought back", file_id=fid))
                elif not item.future.done():   # (its waiter may have given up)
                    item.future.set_result(existing.attr if existing else item.entry.attr)
        return out

    # The steps, public so that tests can stop between them as a crash would.

    def stage(self, batch: list[PreparedUpload]) -> list[PreparedUpload]:
        """Step 1: write each sidecar (and the data of buffered small uploads) in tmp/,
        unless its submitter did (``PreparedUpload.stage``). Returns the uploads that made
        it (the others are failed and cleaned up)."""
        live = []
        for item in batch:
            try:
                item.stage()
                live.append(item)
            except BaseException as exc:  # StorageError, StorageFull, or a bug
                log.error("staging %s failed: %s", item.entry.file_id, exc)
                self._fail(item, exc)
        return live

    def flush(self, live: list[PreparedUpload]) -> None:
        """Step 2: make the staged files, and the previous batch's renames, durable."""
        disks = {self.store.disks.get(item.entry.disk) for item in live}
        if self.sync_method == "syncfs":
            roots = {d.dev: d.tmp for d in disks}
            for path in self._placed_dirs:
                roots.setdefault(os.stat(path).st_dev, path)
            for root in roots.values():
                durable.syncfs(root)
        else:
            files = [i.tmp_attr for i in live]
            files += [i.tmp_data for i in live if not i.writer.synced]
            dirs = {d.tmp for d in disks} | self._placed_dirs
            list(self._fsync_pool.map(durable.fsync_file, files))
            list(self._fsync_pool.map(durable.fsync_dir, dirs))
        self._placed_dirs = set()

    def commit_txn(self, live: list[PreparedUpload]) -> None:
        """Step 3: the one LMDB transaction; durable when it returns."""
        for item in live:  # before the commit, so no reader sees the entry without it
            self._placing[item.entry.file_id] = item.tmp_data
        try:
            self._write_txn(live)
        except BaseException:
            with self._placed:
                for item in live:
                    self._placing.pop(item.entry.file_id, None)
                self._placed.notify_all()
            raise
        self._placed_ops = []

    def _write_txn(self, live: list[PreparedUpload]) -> None:
        env = self.store.env
        with env.write() as txn:
            for item in live:
                catalog.put(txn, env, item.entry)
                data = {"attr": item.entry.attr, "disk": item.entry.disk,
                        "rel": item.entry.rel}
                if item.origin is not None:
                    data["origin"] = item.origin
                item.seq = W.append(txn, env, W.FILE_CREATE, item.actor,
                                    file_id=item.entry.file_id, data=data)
                W.put_intent(txn, env, ids.file_id_key(item.entry.file_id), W.FILE_PLACE,
                             item.actor, **place_intent(item.entry, item.tmp_data))
            for op in self._placed_ops:
                W.drop_intent(txn, env, op)

    def place(self, live: list[PreparedUpload]) -> None:
        """Step 4: rename into objects/. A failure here is logged, not returned: the upload
        is committed, and recovery retries the rename from its intent at the next start."""
        for item in live:
            disk = self.store.disks.get(item.entry.disk)
            data_path = disk.data_path(item.entry.rel)
            try:
                durable.makedirs_durable(os.path.dirname(data_path), disk.objects)
                os.rename(item.tmp_data, data_path)
                os.rename(item.tmp_attr, data_path + L.ATTR_SUFFIX)
            except OSError as exc:
                log.error("moving %s into objects/ failed (recovery retries it): %s",
                          item.entry.file_id, exc)
                continue
            with self._placed:
                self._placing.pop(item.entry.file_id, None)
                self._placed.notify_all()
            self._placed_ops.append(ids.file_id_key(item.entry.file_id))
            self._placed_dirs.add(os.path.dirname(data_path))

    def _settle(self) -> None:
        """Make the last renames durable and drop their intents (at a clean stop)."""
        if not self._placed_ops:
            return
        if self.sync_method == "syncfs":
            for root in {os.stat(p).st_dev: p for p in self._placed_dirs}.values():
                durable.syncfs(root)
        else:
            for path in self._placed_dirs:
                durable.fsync_dir(path)
        env = self.store.env
        with env.write() as txn:
            for op in self._placed_ops:
                W.drop_intent(txn, env, op)
        self._placed_ops = []
        self._placed_dirs = set()

    def _fail(self, item: PreparedUpload, exc: BaseException) -> None:
        item.error = exc
        item.discard()
        if not item.future.done():
            item.future.set_exception(exc)

