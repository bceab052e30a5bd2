"""The one read-only view of a store: entries, ranges, mode, content location, the WAL.

Everything outside the engine that reads what a store holds (the daemon's read routes, the
FUSE model, search, the index follower, the audit trail, offline tools) reads it here, so
only the engine knows the LMDB sub-databases and key layouts (``lmdb_schema``) and where a
file's bytes are while a commit moves them from ``tmp/`` into ``objects/``.

Two ways to get one:

- ``ReadView.open(data_dir)`` in a process that does not have the Store open (the FUSE
  mount, ``artstore audit``): LMDB opened read-only; it never blocks the daemon, and each
  new read sees the latest commit.
- ``ReadView.of_store(store)`` (or ``ReadView.over(env, roots)``) in the process that has
  the Store open (py-lmdb allows one open environment per path per process): a view over
  the environment the Store opened; closing the view leaves it open.

Reads come in two shapes. ``with view.snapshot() as snap:`` is one LMDB read transaction:
everything read through ``snap`` is one consistent state (as of the moment it began), however
many commits land meanwhile. Each method of the view itself (``view.entry(...)``,
``view.wal_after(...)``) is the same read in a snapshot of its own. A snapshot is cheap but
holds the pages it sees: keep it for one request, not for minutes.

Nothing here writes, and no method creates anything on disk.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime
from typing import Iterator, NamedTuple

import lmdb

from . import buckets, catalog, fixity, ids
from . import layout as L
from . import lmdb_schema as S
from . import modes as M
from . import wal as W
from .catalog import CatalogEntry
from .disks import ID_FILE
from .errors import DiskOffline, FileNotFound, NotFound, StoreCorrupt

LMDB_DIR = "store.lmdb"


class WalHead(NamedTuple):
    seq: int        # the newest record's sequence number, 0 for an empty log
    hash: bytes     # its hash (``wal.GENESIS`` for an empty log)


def _disk_id(root: str) -> str | None:
    """The id in ``root``'s identity file; None if it is missing or unreadable (a disk that
    is not mounted shows the bare mount point)."""
    try:
        with open(os.path.join(root, ID_FILE), "rb") as f:
            disk_id = json.load(f)["disk_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return disk_id if isinstance(disk_id, str) else None


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class Snapshot:
    """One read transaction: every read through it sees the same committed state.

    Made by ``ReadView.snapshot()``; valid inside its ``with`` block only (afterwards any
    read raises ``lmdb.Error``). Iterators it returns are valid as long as it is. Not to be
    shared between threads.
    """

    def __init__(self, view: "ReadView", txn):
        self._view = view
        self._env = view._env
        self._txn = txn

    def _db(self, name: bytes):
        """The handle of a sub-database, None if this (older) store lacks it."""
        return self._env.dbs.get(name)

    def _cursor(self, name: bytes):
        db = self._db(name)
        return None if db is None else self._txn.cursor(db=db)

    # --- the catalog ------------------------------------------------------------------------

    def buckets(self) -> buckets.Reader:
        """S3 bucket records and the object-key index, as of this snapshot."""
        return buckets.Reader(self._txn, self._env)

    def entry(self, file_id: str) -> CatalogEntry | None:
        """The catalog entry of ``file_id``; None if there is none (or it is no UUID)."""
        if self._db(S.DB_CATALOG) is None:
            return None
        try:
            return catalog.get(self._txn, self._env, file_id)
        except FileNotFound:
            return None

    def entries(self, start: datetime | None = None,
                end: datetime | None = None) -> Iterator[CatalogEntry]:
        """Entries in key order, which is creation order, whose id was made in
        [``start``, ``end``) (either bound may be None: open).

        The moment is the one in the id (UUIDv7, milliseconds): within a few ms of the
        entry's ``created_at`` for an id made here, but a caller that needs ``created_at``
        exactly widens the range a little and filters."""
        cur = self._cursor(S.DB_CATALOG)
        if cur is None:
            return
        hi = None if end is None else ids.moment_key(_ms(end))
        positioned = cur.first() if start is None else cur.set_range(
            ids.moment_key(_ms(start)))
        while positioned:
            if hi is not None and cur.key() >= hi:
                return
            yield CatalogEntry.decode(cur.value())
            positioned = cur.next()

    def any_between(self, start: datetime, end: datetime) -> bool:
        """Whether some entry's id was made in [``start``, ``end``); one seek."""
        cur = self._cursor(S.DB_CATALOG)
        return bool(cur is not None and cur.set_range(ids.moment_key(_ms(start)))
                    and cur.key() < ids.moment_key(_ms(end)))

    def first_entry(self) -> CatalogEntry | None:
        """The oldest entry (by id), None for an empty catalog."""
        cur = self._cursor(S.DB_CATALOG)
        return CatalogEntry.decode(cur.value()) if cur is not None and cur.first() else None

    def last_entry(self) -> CatalogEntry | None:
        """The newest entry (by id), None for an empty catalog."""
        cur = self._cursor(S.DB_CATALOG)
        return CatalogEntry.decode(cur.value()) if cur is not None and cur.last() else None

    def page(self, *, limit: int, cursor: str | None = None,
             order: str = catalog.DESC) -> tuple[list[CatalogEntry], str | None]:
        """One page of entries and the cursor of the next (None at the end), as
        ``catalog.page``: ``asc`` in creation order, ``desc`` newest first; a walk stays
        correct while files come and go. BadRequest (``invalid_cursor``) for a cursor that
        is malformed or made for the other order."""
        if self._db(S.DB_CATALOG) is None:
            return [], None
        return catalog.page(self._txn, self._env, limit=limit, cursor=cursor, order=order)

    def stats(self) -> dict:
        """{files, bytes, by_retention: {policy: files}, wal_seq, pending_intents}."""
        pending = self._db(S.DB_PENDING)
        return {**catalog.stats(self._txn, self._env), "wal_seq": self.wal_head().seq,
                "pending_intents": self._txn.stat(pending)["entries"] if pending else 0}

    # --- the element ------------------------------------------------------------------------

    def element(self) -> dict | None:
        """{mode, changed_by, changed_at, created_at, ...}; None before the first Store
        has opened this data directory."""
        raw = self._txn.get(S.META_ELEMENT, db=self._db(S.DB_META))
        return W.unpack(raw) if raw is not None else None

    def mode(self) -> str:
        """The element's mode (``modes.MODES``); ``rw`` before a Store has set one."""
        element = self.element()
        return element["mode"] if element else M.RW

    # --- intents ----------------------------------------------------------------------------

    def pending_intents(self) -> list[tuple[bytes, dict]]:
        """Every PENDING intent as (op id, intent), in op id order. Between commits of an
        idle store there are none; while a batch is placed, its ``file.place`` ones."""
        return W.intents(self._txn, self._env) if self._db(S.DB_PENDING) else []

    def place_intent(self, file_id: str) -> dict | None:
        """The pending ``file.place`` intent of ``file_id`` (its move from tmp/ into
        objects/ is not known durable yet), or None."""
        db = self._db(S.DB_PENDING)
        if db is None or not ids.is_file_id(file_id):
            return None
        raw = self._txn.get(ids.file_id_key(file_id), db=db)
        if raw is None:
            return None
        intent = W.unpack(raw)
        return intent if intent.get("kind", W.FILE_PLACE) == W.FILE_PLACE else None

    def deleted(self, file_id: str) -> bool:
        """Whether a tombstone says ``file_id`` was deleted here (it is never taken back)."""
        db = self._db(S.DB_TOMBSTONES)
        return db is not None and ids.is_file_id(file_id) and \
            self._txn.get(ids.file_id_key(file_id), db=db) is not None

    # --- fixity -----------------------------------------------------------------------------

    def fixity(self, file_id: str) -> dict | None:
        """The file's last fixity check: {last_verified (µs), outcome, bytes, detail,
        quarantine}; None if it was never checked."""
        return fixity.get(self._txn, self._env, file_id) if ids.is_file_id(file_id) else None

    def oldest_checked(self, before_us: int, limit: int) -> list[str]:
        """Files last checked before ``before_us``, the oldest check first."""
        return fixity.oldest(self._txn, self._env, before_us, limit)

    # --- the WAL ----------------------------------------------------------------------------

    def wal_head(self) -> WalHead:
        """The newest record's sequence and hash."""
        return WalHead(*W.head(self._txn, self._env))

    def wal_after(self, seq: int, limit: int = 1000) -> list[dict]:
        """At most ``limit`` records with a sequence number above ``seq``, in order (the
        bodies, see ``wal``; their hashes are not checked here), from the sealed segments
        where they are older than the LMDB tail."""
        return W.read_from(self._txn, self._env, seq, limit)

    def wal_records(self, start: int | None = None, order: str = "asc") -> Iterator[dict]:
        """Records one by one: ``asc`` from sequence ``start`` (default 1) up, ``desc``
        from the newest at or below ``start`` (default: the newest) down. Sealed segment
        files and the LMDB tail read as one log (``wal.records``); StoreCorrupt if a
        segment the log lists is missing."""
        return W.records(self._txn, self._env, start, order)

    def wal_count(self) -> int:
        """How many records the log holds (sealed and tail)."""
        return W.count(self._txn, self._env)

    def verify_wal(self) -> int | None:
        """The first record that breaks the hash chain, or None (``wal.verify_chain``)."""
        return W.verify_chain(self._txn, self._env)


class ReadView:
    """Read-only access to one store's LMDB and the whereabouts of its data files.

    Thread-safe: each read (or ``snapshot()``) is its own read transaction. Raises nothing
    of its own for a missing file id (None); ``lmdb.Error`` only if the environment is
    closed or broken.
    """

    def __init__(self, env: S.Env, disk_roots: list[str] | None = None, *,
                 data_dir: str | None = None, owns_env: bool = False):
        """Prefer ``open``, ``of_store`` or ``over``. ``disk_roots``: the disk roots to look
        in for data files (default: every directory in ``<data_dir>/disks/``)."""
        self._env = env
        self._owns_env = owns_env
        self.data_dir = os.path.abspath(data_dir or os.path.dirname(env.path))
        self._roots = [os.path.abspath(r) for r in disk_roots] if disk_roots else None
        self._disks: dict[str, str] = {}
        self._disks_lock = threading.Lock()
        self._scan_disks()

    @classmethod
    def open(cls, data_dir: str, disk_roots: list[str] | None = None) -> "ReadView":
        """A view of ``data_dir`` from a process that does not have its Store open: LMDB
        read-only, never a lock the daemon waits on. NotFound (``no_store``) if there is no
        store there; ``close()`` when done."""
        path = os.path.join(os.path.abspath(data_dir), LMDB_DIR)
        if not os.path.isdir(path):
            raise NotFound(f"{data_dir}: no ArtStore data directory (no {LMDB_DIR})",
                           code="no_store")
        return cls(S.Env(path, readonly=True), disk_roots, data_dir=data_dir, owns_env=True)

    @classmethod
    def over(cls, env: S.Env, disk_roots: list[str] | None = None) -> "ReadView":
        """A view over an environment this process has open (the Store's); the view's
        ``close()`` leaves it open, and it must outlive the view."""
        return cls(env, disk_roots)

    @classmethod
    def of_store(cls, store) -> "ReadView":
        """A view over an open Store's environment and disk roots."""
        return cls(store.env, [d.root for d in store.disks], data_dir=store.data_dir)

    def close(self) -> None:
        """Close the environment if ``open`` opened it. Idempotent."""
        if self._owns_env:
            self._owns_env = False
            self._env.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- reading ----------------------------------------------------------------------------

    def snapshot(self) -> "_SnapshotContext":
        """``with view.snapshot() as snap:``: one read transaction on the newest commit."""
        return _SnapshotContext(self)

    def _read(self):
        """The environment's read transaction (a context manager), through ``Env.read`` so
        that the writer's process never resizes its map under it."""
        try:
            return self._env.read()
        except lmdb.MapResizedError:
            # Another process grew the map since this one opened it: adopt its size.
            self._env.env.set_mapsize(0)
            return self._env.read()

    # Each of these is the Snapshot method of that name, in a snapshot of its own;
    # iterators are read to the end inside it and come back as lists.

    def entry(self, file_id: str) -> CatalogEntry | None:
        with self.snapshot() as snap:
            return snap.entry(file_id)

    def entries(self, start: datetime | None = None,
                end: datetime | None = None) -> list[CatalogEntry]:
        with self.snapshot() as snap:
            return list(snap.entries(start, end))

    def any_between(self, start: datetime, end: datetime) -> bool:
        with self.snapshot() as snap:
            return snap.any_between(start, end)

    def first_entry(self) -> CatalogEntry | None:
        with self.snapshot() as snap:
            return snap.first_entry()

    def last_entry(self) -> CatalogEntry | None:
        with self.snapshot() as snap:
            return snap.last_entry()

    def page(self, *, limit: int, cursor: str | None = None,
             order: str = catalog.DESC) -> tuple[list[CatalogEntry], str | None]:
        with self.snapshot() as snap:
            return snap.page(limit=limit, cursor=cursor, order=order)

    def stats(self) -> dict:
        with self.snapshot() as snap:
            return snap.stats()

    def element(self) -> dict | None:
        with self.snapshot() as snap:
            return snap.element()

    def mode(self) -> str:
        with self.snapshot() as snap:
            return snap.mode()

    def pending_intents(self) -> list[tuple[bytes, dict]]:
        with self.snapshot() as snap:
            return snap.pending_intents()

    def place_intent(self, file_id: str) -> dict | None:
        with self.snapshot() as snap:
            return snap.place_intent(file_id)

    def fixity(self, file_id: str) -> dict | None:
        with self.snapshot() as snap:
            return snap.fixity(file_id)

    def oldest_checked(self, before_us: int, limit: int) -> list[str]:
        with self.snapshot() as snap:
            return snap.oldest_checked(before_us, limit)

    def wal_head(self) -> WalHead:
        with self.snapshot() as snap:
            return snap.wal_head()

    def wal_after(self, seq: int, limit: int = 1000) -> list[dict]:
        with self.snapshot() as snap:
            return snap.wal_after(seq, limit)

    def wal_records(self, start: int | None = None, order: str = "asc") -> list[dict]:
        with self.snapshot() as snap:
            return list(snap.wal_records(start, order))

    def wal_count(self) -> int:
        with self.snapshot() as snap:
            return snap.wal_count()

    def verify_wal(self) -> int | None:
        with self.snapshot() as snap:
            return snap.verify_wal()

    # --- where the bytes are ----------------------------------------------------------------

    def disk_roots(self) -> dict[str, str]:
        """disk id → root directory, of the roots whose identity file could be read."""
        with self._disks_lock:
            return dict(self._disks)

    def _scan_disks(self) -> None:
        roots = self._roots
        if roots is None:
            base = os.path.join(self.data_dir, "disks")
            roots = [os.path.join(base, d) for d in sorted(os.listdir(base))] \
                if os.path.isdir(base) else []
        found = {}
        for root in roots:
            disk_id = _disk_id(root)
            if disk_id is not None:
                found.setdefault(disk_id, root)
        with self._disks_lock:
            self._disks = found

    def disk_root(self, disk_id: str) -> str:
        """The root of disk ``disk_id``; looks at the roots again if it is not known yet
        (a disk mounted after the view opened). DiskOffline if no root carries that id (not
        mounted, or not among the roots this view was given)."""
        with self._disks_lock:
            root = self._disks.get(disk_id)
        if root is None:
            self._scan_disks()
            with self._disks_lock:
                root = self._disks.get(disk_id)
        if root is None:
            raise DiskOffline(f"disk {disk_id} is not among the disk roots here (no root "
                              f"with that id in its {ID_FILE})", disk_id=disk_id)
        return root

    def final_path(self, entry: CatalogEntry) -> str:
        """Where ``entry``'s data file lives once placed: ``<root>/objects/<rel>``."""
        return os.path.join(self.disk_root(entry.disk), L.OBJECTS, entry.rel)

    def tmp_path(self, intent: dict) -> str | None:
        """The tmp/ data file a ``file.place`` intent names, None if it names none.

        Format ``{file_id, disk, rel, tmp_name}``: a name inside that disk's tmp/; the
        older ``tmp`` (an absolute path) is still read."""
        name = intent.get("tmp_name")
        if name:
            if name != os.path.basename(name) or name in (".", ".."):
                return None   # only a plain name inside tmp/ is believed
            try:
                return os.path.join(self.disk_root(intent["disk"]), L.TMP, name)
            except (KeyError, DiskOffline):
                return None
        return intent.get("tmp") or None

    def content_location(self, entry: CatalogEntry) -> str:
        """The path of ``entry``'s data file: the final one under the disk's objects/ if it
        exists, else the tmp/ file of its pending ``file.place`` intent (committed a moment
        ago, still being moved), else the final path again (the move may have finished in
        between; if it does not exist either, opening it fails with FileNotFoundError).

        No mode check: in an ``ar`` element the caller refuses content. A path can go stale
        (tmp/ renamed away) before it is opened: ``open_content`` does not have that race.
        DiskOffline if the entry's disk is not among the roots."""
        final = self.final_path(entry)
        if os.path.exists(final):
            return final
        intent = self.place_intent(entry.file_id)
        tmp = self.tmp_path(intent) if intent else None
        if tmp is not None and os.path.exists(tmp):
            return tmp
        return final

    def open_content(self, entry: CatalogEntry, flags: int = os.O_RDONLY) -> int:
        """A file descriptor on ``entry``'s data file (the caller closes it), wherever it
        is: objects/, or tmp/ while its commit moves it (tried again in objects/ if the
        rename won the race). StoreCorrupt if the file is in neither place, DiskOffline if
        its disk is not here, Quarantined if a fixity check moved it aside. No mode check
        (as ``content_location``)."""
        record = self.fixity(entry.file_id)
        if record is not None and record.get("quarantine"):
            raise fixity.Quarantined(
                f"file {entry.file_id} failed a fixity check and is in quarantine "
                f"({record['quarantine']['reason']})", file_id=entry.file_id)
        final = self.final_path(entry)
        flags |= os.O_CLOEXEC
        try:
            return os.open(final, flags)
        except FileNotFoundError:
            pass
        intent = self.place_intent(entry.file_id)
        tmp = self.tmp_path(intent) if intent else None
        for path in ((tmp, final) if tmp else (final,)):
            try:
                return os.open(path, flags)
            except FileNotFoundError:
                continue
        raise StoreCorrupt(f"the content of file {entry.file_id} is missing on disk "
                           f"{entry.disk}", file_id=entry.file_id)


class _SnapshotContext:
    def __init__(self, view: ReadView):
        self._view = view
        self._read = None

    def __enter__(self) -> Snapshot:
        self._read = self._view._read()
        return Snapshot(self._view, self._read.__enter__())

    def __exit__(self, *exc):
        read, self._read = self._read, None
        return read.__exit__(*exc)
