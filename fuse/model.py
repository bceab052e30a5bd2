"""The archive as a read-only tree: what ``artstore mount`` shows, without FUSE.

::

    README                          what this tree is
    by-id/<file_id><.ext>           every file
    by-date/YYYY/MM/DD/<name>       by creation day (UTC); clashing names get " [xxxxxxxx]"
                                    (the id's last 8 hex digits) before the extension, the
                                    oldest file keeping the plain name
    search/<query>/<name>           the hits of a query (Tantivy syntax), best first

It reads the store through the engine's ReadView (read-only LMDB transactions; each sees
the latest commit) and the data files directly: no daemon needed, and a daemon never waits
on it. Inode numbers are derived from
what they name (a file's id, a directory's path), so they are stable across remounts, and a
file has the same inode under by-id/, by-date/ and search/ (st_nlink 2).

Errors are FsError carrying an errno; the pyfuse3 adapter turns them into FUSEError.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from ..engine import attrs as A
from ..engine import ids
from ..engine import modes as M
from ..engine.catalog import CatalogEntry
from ..engine.errors import BadRequest, DiskOffline, StoreCorrupt
from ..engine.view import ReadView
from ..index.reader import open_reader
from ..index.search import SearchRequest, SearchService
from .names import by_id_name, dir_ino, file_ino, unique_names

ROOT_INO = 1
SEARCH_LIMIT = 1000
SEARCH_CACHE_SECONDS = 2.0
# Reading a file of an ``ar`` element: its content is offline.
ARCHIVED_ERRNO = errno.ENOMEDIUM

DIR, FILE, TEXT = "dir", "file", "text"

README = """ArtStore archive (read-only)

by-id/<file_id><.ext>          every file, by its id
by-date/YYYY/MM/DD/<name>      by creation day (UTC), under its original name; when two
                               files of a day share a name, the later one gets " [xxxxxxxx]"
                               (the last 8 hex digits of its id) before the extension
search/<query>/                the hits of a query, best first, e.g.
                               ls 'search/invoice AND attr.department:finance'

Extended attributes (getfattr -d FILE) carry the metadata: user.artstore.file_id, .sha256,
.content_type, .description, .created_by, .created_at, .retention, .expires_at, .mode,
.version, .original_filename, and user.artstore.attr.<key> for each custom attribute.

Nothing here can be changed (EROFS). In an element in mode 'ar' the content is offline:
reading a file fails with ENOMEDIUM ("No medium found"); metadata stays readable.
"""

SEARCH_README = """search/<query>/ lists the files matching <query> (Tantivy syntax: words,
"phrases", AND/OR/NOT, field:value, attr.<key>:value, size:[1000 TO *]), best first, at
most 1000. A malformed query gives EINVAL.
"""


class FsError(Exception):
    def __init__(self, err: int, detail: str = ""):
        self.errno = err
        super().__init__(detail or os.strerror(err))


@dataclass(frozen=True)
class Node:
    ino: int
    kind: str       # DIR, FILE or TEXT
    role: str       # root, by-id, by-date, year, month, day, search, query, readme, file
    key: tuple = ()


@dataclass(frozen=True)
class Stat:
    ino: int
    mode: int
    size: int
    nlink: int
    mtime_ns: int


def _day(attr: dict) -> tuple[int, int, int]:
    moment = A.parse_time(attr["created_at"])
    return moment.year, moment.month, moment.day


class ArchiveModel:
    """The tree over one data directory. Thread-safe for reading."""

    def __init__(self, data_dir: str, disk_roots: list[str] | None = None, *,
                 view: ReadView | None = None):
        """``view``: a view over a store this process has open already (py-lmdb allows one
        environment per path per process; ``ReadView.of_store``), left open by ``close``;
        by default the store in ``data_dir`` opened read-only (``ReadView.open``)."""
        self.data_dir = os.path.abspath(data_dir)
        self._own_view = view is None
        self.view = view or ReadView.open(self.data_dir, disk_roots)
        self._nodes: dict[int, Node] = {}
        self._lock = threading.Lock()
        self._listing_cache: dict[tuple, tuple[object, list]] = {}
        self._search = None
        self._search_checked = -10.0
        self._search_reloaded = 0.0
        self.root = self._remember(Node(ROOT_INO, DIR, "root"))
        self.readme = self._remember(Node(dir_ino("README"), TEXT, "readme"))
        self.by_id = self._remember(Node(dir_ino("by-id"), DIR, "by-id"))
        self.by_date = self._remember(Node(dir_ino("by-date"), DIR, "by-date"))
        self.search_dir = self._remember(Node(dir_ino("search"), DIR, "search"))
        self.search_readme = self._remember(Node(dir_ino("search/README"), TEXT,
                                                 "search-readme"))
        created = (self.view.element() or {}).get("created_at")
        self.epoch_ns = int(A.parse_time(created).timestamp() * 1e9) if created else \
            time.time_ns()

    def close(self) -> None:
        if self._own_view:
            self.view.close()

    # --- plumbing ---------------------------------------------------------------------------

    def _remember(self, node: Node) -> Node:
        with self._lock:
            self._nodes[node.ino] = node
        return node

    def node(self, ino: int) -> Node:
        with self._lock:
            node = self._nodes.get(ino)
        if node is None:
            raise FsError(errno.ENOENT, f"unknown inode {ino}")
        return node

    def forget(self, ino: int) -> None:
        if ino in (ROOT_INO, self.readme.ino, self.by_id.ino, self.by_date.ino,
                   self.search_dir.ino, self.search_readme.ino):
            return
        with self._lock:
            self._nodes.pop(ino, None)

    def wal_seq(self) -> int:
        return self.view.wal_head().seq

    def mode(self) -> str:
        return self.view.mode()

    # --- entries ----------------------------------------------------------------------------

    def entry(self, file_id: str) -> CatalogEntry:
        found = self.view.entry(file_id)
        if found is None:
            raise FsError(errno.ENOENT, f"no file {file_id}")
        return found

    def _file_node(self, file_id: str) -> Node:
        return self._remember(Node(file_ino(file_id), FILE, "file", (file_id,)))

    def _entries_between(self, start: datetime, end: datetime) -> list[CatalogEntry]:
        """Catalog entries whose id falls in [start, end) (a second of slack each side,
        filtered by created_at by the caller)."""
        return self.view.entries(start - timedelta(seconds=1), end + timedelta(seconds=1))

    def _any_between(self, start: datetime, end: datetime) -> bool:
        return self.view.any_between(start, end)

    def _year_span(self) -> tuple[int, int] | None:
        with self.view.snapshot() as snap:
            first, last = snap.first_entry(), snap.last_entry()
        if first is None:
            return None
        return _day(first.attr)[0], _day(last.attr)[0]

    # --- the tree ---------------------------------------------------------------------------

    def readdir_plus(self, ino: int) -> list[tuple[str, Node, Stat]]:
        """``readdir`` with each entry's Stat, from the records the listing read anyway."""
        node = self.node(ino)
        if node.role == "day":
            listing = self._day_listing(*node.key)
        elif node.role == "query":
            listing = self._query_listing(node.key[0])
        elif node.role == "by-id":
            listing = [(by_id_name(e), e) for e in self.view.entries()]
        else:
            return [(name, child, self.stat(child)) for name, child in self.readdir(ino)]
        return [(name, self._file_node(e.file_id), self._file_stat(e)) for name, e in listing]

    def readdir(self, ino: int) -> list[tuple[str, Node]]:
        """The entries of directory ``ino`` (without . and ..), in a stable order."""
        node = self.node(ino)
        if node.kind != DIR:
            raise FsError(errno.ENOTDIR)
        role = node.role
        if role == "root":
            return [("README", self.readme), ("by-date", self.by_date), ("by-id", self.by_id),
                    ("search", self.search_dir)]
        if role == "search":
            return [("README", self.search_readme)]
        if role == "by-id":
            return self._by_id_listing()
        if role in ("by-date", "year", "month"):
            return self._date_dirs(node)
        if role == "day":
            return [(name, self._file_node(e.file_id)) for name, e in self._day_listing(*node.key)]
        if role == "query":
            return [(name, self._file_node(e.file_id)) for name, e in self._query_listing(node.key[0])]
        raise FsError(errno.ENOTDIR)

    def lookup(self, parent: int, name: str) -> Node:
        node = self.node(parent)
        if node.kind != DIR:
            raise FsError(errno.ENOTDIR)
        role = node.role
        if role == "by-id":
            file_id = name[:36]
            if not ids.is_file_id(file_id):
                raise FsError(errno.ENOENT)
            entry = self.entry(file_id)
            if by_id_name(entry) != name:
                raise FsError(errno.ENOENT)
            return self._file_node(file_id)
        if role == "day":
            for entry_name, entry in self._day_listing(*node.key):
                if entry_name == name:
                    return self._file_node(entry.file_id)
            raise FsError(errno.ENOENT)
        if role == "search" and name != "README":
            if not name.strip():
                raise FsError(errno.ENOENT)
            self._query_listing(name)  # EINVAL now for a malformed query
            return self._remember(Node(dir_ino("search/" + name), DIR, "query", (name,)))
        for entry_name, child in self.readdir(parent):
            if entry_name == name:
                return child
        raise FsError(errno.ENOENT)

    def _by_id_listing(self) -> list[tuple[str, Node]]:
        return [(name, node) for name, node, _ in self.readdir_plus(self.by_id.ino)]

    def _date_dirs(self, node: Node) -> list[tuple[str, Node]]:
        out = []
        if node.role == "by-date":
            span = self._year_span()
            if span is None:
                return []
            for year in range(span[0], span[1] + 1):
                if self._any_between(datetime(year, 1, 1, tzinfo=timezone.utc),
                                     datetime(year + 1, 1, 1, tzinfo=timezone.utc)):
                    out.append((f"{year:04d}", self._remember(
                        Node(dir_ino(f"by-date/{year:04d}"), DIR, "year", (year,)))))
        elif node.role == "year":
            (year,) = node.key
            for month in range(1, 13):
                start = datetime(year, month, 1, tzinfo=timezone.utc)
                end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=timezone.utc)
                if self._any_between(start, end):
                    out.append((f"{month:02d}", self._remember(
                        Node(dir_ino(f"by-date/{year:04d}/{month:02d}"), DIR, "month",
                             (year, month)))))
        else:
            year, month = node.key
            day = datetime(year, month, 1, tzinfo=timezone.utc)
            while day.month == month:
                if self._any_between(day, day + timedelta(days=1)):
                    out.append((f"{day.day:02d}", self._remember(
                        Node(dir_ino(f"by-date/{year:04d}/{month:02d}/{day.day:02d}"), DIR,
                             "day", (year, month, day.day)))))
                day += timedelta(days=1)
        return out

    def _day_listing(self, year: int, month: int, day: int) -> list[tuple[str, CatalogEntry]]:
        version = self.wal_seq()
        key = ("day", year, month, day)
        cached = self._listing_cache.get(key)
        if cached and cached[0] == version:
            return cached[1]
        start = datetime(year, month, day, tzinfo=timezone.utc)
        entries = [e for e in self._entries_between(start, start + timedelta(days=1))
                   if _day(e.attr) == (year, month, day)]
        listing = unique_names(entries)
        self._listing_cache[key] = (version, listing)
        return listing

    # --- search -----------------------------------------------------------------------------

    def _searcher(self):
        """The search service over the index, opened read-only (None while there is none);
        reloaded at most twice a second to see the daemon's new commits."""
        now = time.monotonic()
        if self._search is None:
            if now - self._search_checked < 5:
                return None
            self._search_checked = now
            reader = open_reader(os.path.join(self.data_dir, "index"))
            if reader is None:
                return None
            self._search = SearchService(reader)
            self._search_reloaded = now
        elif now - self._search_reloaded > 0.5:
            self._search.follower.index.reload()
            self._search_reloaded = now
        return self._search

    def _query_listing(self, query: str) -> list[tuple[str, CatalogEntry]]:
        key = ("query", query)
        cached = self._listing_cache.get(key)
        if cached and time.monotonic() - cached[0] < SEARCH_CACHE_SECONDS:
            return cached[1]
        service = self._searcher()
        if service is None:
            return []
        try:
            page = service.search(SearchRequest(q=query, limit=SEARCH_LIMIT))
        except BadRequest as exc:
            raise FsError(errno.EINVAL, exc.detail) from None
        with self.view.snapshot() as snap:
            found = [snap.entry(hit.file_id) for hit in page.hits]
        listing = unique_names([e for e in found if e is not None])
        self._listing_cache[key] = (time.monotonic(), listing)
        return listing

    # --- attributes and content ---------------------------------------------------------------

    def stat(self, node: Node) -> Stat:
        if node.kind == DIR:
            return Stat(node.ino, stat.S_IFDIR | 0o555, 0, 2, self.epoch_ns)
        if node.kind == TEXT:
            size = len(self.text(node))
            return Stat(node.ino, stat.S_IFREG | 0o444, size, 1, self.epoch_ns)
        return self._file_stat(self.entry(node.key[0]))

    def _file_stat(self, entry: CatalogEntry) -> Stat:
        created = A.parse_time(entry.attr["created_at"])
        mtime_ns = int(created.timestamp()) * 1_000_000_000 + created.microsecond * 1000
        return Stat(file_ino(entry.file_id), stat.S_IFREG | 0o444, entry.size, 2, mtime_ns)

    def text(self, node: Node) -> bytes:
        return (README if node.role == "readme" else SEARCH_README).encode("utf-8")

    def _content_entry(self, node: Node) -> CatalogEntry:
        if node.kind != FILE:
            raise FsError(errno.EISDIR if node.kind == DIR else errno.EINVAL)
        if self.mode() == M.AR:
            raise FsError(ARCHIVED_ERRNO, "the element is archived: its content is offline")
        return self.entry(node.key[0])

    def content_path(self, node: Node) -> str:
        """The data file of a file node (in objects/, or in tmp/ while a commit moves it);
        FsError(ENOMEDIUM) if the element is archived, EIO if its disk is not here."""
        entry = self._content_entry(node)
        try:
            return self.view.content_location(entry)
        except DiskOffline as exc:
            raise FsError(errno.EIO, exc.detail) from None

    def open_content(self, node: Node) -> int:
        """A read-only file descriptor on a file node's data, wherever the file is while a
        commit moves it; FsError(ENOMEDIUM) if archived, EIO if missing or not here."""
        entry = self._content_entry(node)
        try:
            return self.view.open_content(entry)
        except (DiskOffline, StoreCorrupt) as exc:
            raise FsError(errno.EIO, exc.detail) from None

    def xattrs(self, node: Node) -> dict[str, bytes]:
        mode = self.mode()
        if node.kind != FILE:
            return {"user.artstore.mode": mode.encode()}
        attr = self.entry(node.key[0]).attr
        fields = {
            "file_id": attr["file_id"], "sha256": attr.get("checksum_sha256"),
            "content_type": attr.get("content_type"), "description": attr.get("description"),
            "created_by": attr.get("created_by_username"),
            "created_by_id": attr.get("created_by_id"), "created_at": attr.get("created_at"),
            "original_filename": attr.get("original_filename"),
            "size": str(attr.get("file_size")), "version": str(attr.get("version")),
            "retention": attr.get("retention_policy"), "expires_at": attr.get("expires_at"),
            "mode": mode, "archived": "yes" if mode == M.AR else "no",
        }
        out = {f"user.artstore.{k}": str(v).encode("utf-8") for k, v in fields.items()
               if v not in (None, "")}
        for key, value in (attr.get("custom_attributes") or {}).items():
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            out[f"user.artstore.attr.{key}"] = text.encode("utf-8")
        return out

    def statfs(self) -> dict:
        total = free = 0
        seen = set()
        for root in self.view.disk_roots().values():
            st = os.statvfs(root)
            if st.f_fsid in seen:
                continue
            seen.add(st.f_fsid)
            total += st.f_blocks * st.f_frsize
            free += st.f_bavail * st.f_frsize
        files = self.view.stats()["files"]
        return {"total": total, "free": free, "files": files}
