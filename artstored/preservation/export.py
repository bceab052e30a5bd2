"""Export files as a BagIt bag (RFC 8493) to hand them to another institution.

``export_bag(view, items, dest, source=...)`` is one synchronous function over a ReadView, run
by ``artstore export --bagit`` beside a daemon (the view opened read-only) and, later, as a
daemon job (``progress`` and ``cancelled`` are for that). The bag::

    dest/
      bagit.txt                     BagIt-Version: 1.0, UTF-8
      bag-info.txt                  source node, Bagging-Date, Payload-Oxum, counts, query
      manifest-sha256.txt           every payload file
      tagmanifest-sha256.txt        every tag file below
      data/<name>                   the files, under their original names made safe
      metadata/<file_id>.attr.json  each file's signed attr.json record, as stored
      metadata/node.json            the source node's id and Ed25519 public key
      metadata/files.jsonl          one line per file: file_id, path in the bag, original name

``artstore fixity verify <bag>/metadata/*.attr.json`` checks the records' signatures with
``metadata/node.json`` and re-hashes their payload files, at the receiving end too.

Rules:

- ``dest`` must not exist, or be an empty directory: nothing is ever overwritten. A bag that
  does not exist yet is built in a hidden sibling (``.<name>.bag-in-progress-<random>``) and
  renamed to ``dest`` at the end, so ``dest`` appears complete or not at all; into an
  existing empty directory (a mount point, say) it is written in place, a
  ``BAG-IN-PROGRESS`` file saying so until the end, and ``bagit.txt`` written last. On any
  error or cancellation what was written is removed.
- Every byte is verified while it is copied: the SHA-256 of what was read must be the
  catalogued ``checksum_sha256`` (and the size ``file_size``), else the export stops with
  ChecksumMismatch naming the file. A bag never carries damaged bytes, and never silently
  lacks a selected file: a missing data file (StoreCorrupt) or an offline disk
  (DiskOffline) stops it too. Only ids that are not in the catalog (deleted since they were
  selected) and repeats are skipped, and the report lists them.
- Payload names: ``original_filename`` with its path parts joined by ``_``, characters that
  are unsafe on some filesystem (``/\\<>:"|?*``, controls, format characters) and ``%``
  (which RFC 8493 manifests would have to percent-encode) as ``_``, no leading dot, dash or
  space, no trailing dot or whitespace, Windows device names (``CON``, ``NUL``...) given a
  ``_``, at most 255 bytes with the extension kept. Names are compared as a case-insensitive
  filesystem would (NFC, case-folded); the first file (in the order given: creation order
  from the CLI) keeps a name, a later one gets `` [<last 8 hex digits of its id>]`` before
  the extension, as in the FUSE view (the first 8 digits of a UUIDv7 are its timestamp,
  shared by files uploaded together). ``metadata/files.jsonl`` maps each name to its file.
- Files and directories are fsynced before the bag is declared complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import unicodedata
from datetime import datetime, timezone
from typing import Callable, Iterable

from .. import __version__
from ..engine import attrs as A
from ..engine import ids
from ..engine import layout as L
from ..engine import modes as M
from ..engine.catalog import CatalogEntry
from ..engine.durable import fsync_dir, write_all
from ..engine.errors import ArtStoreError, ChecksumMismatch, Conflict, NotFound, StoreCorrupt
from ..engine.view import ReadView

CHUNK = 4 * 1024 * 1024
NAME_MAX = 255
IN_PROGRESS = "BAG-IN-PROGRESS"
DATA, METADATA = "data", "metadata"
NODE_JSON = "node.json"
FILES_INDEX = "files.jsonl"
BAGIT_TXT = "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"
_TOP_LEVEL = (IN_PROGRESS, DATA, METADATA, "bag-info.txt", "manifest-sha256.txt",
              "tagmanifest-sha256.txt", "bagit.txt")
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                    *(f"LPT{i}" for i in range(1, 10))}


class ExportCancelled(ArtStoreError):
    code = "export_cancelled"
    status = 409
    title = "The export was cancelled"


# --- names ------------------------------------------------------------------------------------


def safe_payload_name(original_filename: str) -> str:
    """``original_filename`` as one safe file name (see the module docstring); never empty."""
    name = L.flatten_path(original_filename or "").replace("%", "_")
    name = L.safe_component(name).strip()
    name = name.rstrip(". \t").strip()
    if not name:
        name = "file"
    stem, ext = L.split_extension(name)
    if stem.split(".")[0].upper() in _WINDOWS_DEVICES:
        stem += "_"
    return _fit(stem, ext)


def _fit(stem: str, ext: str, suffix: str = "") -> str:
    budget = NAME_MAX - len((suffix + ext).encode("utf-8"))
    stem = L.cut_utf8(stem, budget).rstrip(". \t") or "file"
    return stem + suffix + ext


def _clash_key(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


class PayloadNames:
    """Assigns each file a payload name no earlier file has (deterministic in the order
    files are given)."""

    def __init__(self):
        self._used: set[str] = set()

    def assign(self, original_filename: str, file_id: str) -> tuple[str, bool]:
        """(name, whether it had to be changed from the plain safe name)."""
        name = safe_payload_name(original_filename)
        renamed = False
        if _clash_key(name) in self._used:
            renamed = True
            stem, ext = L.split_extension(name)
            digits = file_id.replace("-", "")
            for tag in (digits[-8:], digits):
                name = _fit(stem, ext, f" [{tag}]")
                if _clash_key(name) not in self._used:
                    break
            else:  # cannot happen: the full id is unique among the files given
                raise Conflict(f"no unique payload name for file {file_id}")
        self._used.add(_clash_key(name))
        return name, renamed


# --- writing ----------------------------------------------------------------------------------


def _tag_value(value) -> str:
    """One line of bag-info.txt: no CR or LF inside a value."""
    return re.sub(r"[\r\n]+", " ", str(value)).strip()


class _Bag:
    """The directory being written: every file it creates, fsynced, with its SHA-256."""

    def __init__(self, work_dir: str):
        self.root = work_dir
        self.tag_digests: dict[str, str] = {}   # tag file path in the bag → sha256

    def path(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/"))

    def write_tag(self, rel: str, data: bytes) -> None:
        self._write_new(rel, data)
        self.tag_digests[rel] = hashlib.sha256(data).hexdigest()

    def _write_new(self, rel: str, data: bytes) -> None:
        fd = os.open(self.path(rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                     0o644)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


def _check_dest(dest: str) -> bool:
    """Whether ``dest`` exists (as an empty directory); Conflict if it exists otherwise,
    NotFound if its parent does not."""
    try:
        names = os.listdir(dest)
    except FileNotFoundError:
        parent = os.path.dirname(dest)
        if not os.path.isdir(parent):
            raise NotFound(f"{parent}: no such directory (for the bag {dest})",
                           code="export_parent_missing") from None
        return False
    except NotADirectoryError:
        raise Conflict(f"{dest} exists and is not a directory: the bag is written only "
                       "into a new or empty directory", code="export_dest_exists") from None
    if names:
        raise Conflict(f"{dest} is not empty ({len(names)} entries): the bag is written "
                       "only into a new or empty directory, nothing is overwritten",
                       code="export_dest_not_empty")
    return True


def _copy_verified(view: ReadView, entry: CatalogEntry, out_path: str,
                   cancelled: Callable[[], bool] | None) -> int:
    """Copy ``entry``'s content to ``out_path`` (a new file), hashing what is read;
    ChecksumMismatch naming the file if it is not what the catalog says. Returns its size."""
    src = view.open_content(entry)
    try:
        dst = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            sha = hashlib.sha256()
            size = since_poll = 0
            buf = bytearray(CHUNK)
            view_buf = memoryview(buf)
            try:
                while True:
                    n = os.readv(src, [buf])
                    if n == 0:
                        break
                    chunk = view_buf[:n]
                    sha.update(chunk)
                    write_all(dst, chunk)
                    size += n
                    since_poll += n
                    if cancelled is not None and since_poll >= 64 * CHUNK:
                        since_poll = 0
                        if cancelled():
                            raise ExportCancelled("the export was cancelled")
            finally:
                view_buf.release()
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    expected_sha = str(entry.attr.get("checksum_sha256") or "").lower()
    actual_sha = sha.hexdigest()
    if size != entry.size or actual_sha != expected_sha:
        name = entry.attr.get("original_filename")
        raise ChecksumMismatch(
            f"file {entry.file_id} ({name!r}, on disk {entry.disk} at {entry.rel}) is "
            f"damaged: its stored bytes ({size} bytes, SHA-256 {actual_sha}) are not what "
            f"the catalog records ({entry.size} bytes, SHA-256 {expected_sha}); export "
            "aborted, no bag written", code="export_checksum_mismatch",
            file_id=entry.file_id, expected=expected_sha, actual=actual_sha)
    return size


def _sidecar_bytes(view: ReadView, entry: CatalogEntry) -> tuple[bytes, bool]:
    """(the attr.json record as stored beside the data file, True) or, if no sidecar can be
    read there, (the catalog's copy encoded, False). StoreCorrupt if the sidecar is about
    another file or other bytes."""
    data = None
    for path in (view.content_location(entry), view.final_path(entry)):
        try:
            with open(path + L.ATTR_SUFFIX, "rb") as f:
                data = f.read(1 << 20)
            break
        except FileNotFoundError:
            continue
    if data is None:
        return A.encode(entry.attr), False
    attr = A.decode(data, source=f"the attr.json of file {entry.file_id}")
    for key in ("file_id", "file_size", "checksum_sha256", "created_at"):
        if str(attr.get(key)) != str(entry.attr.get(key)):
            raise StoreCorrupt(
                f"the attr.json of file {entry.file_id} says {key} {attr.get(key)!r}, the "
                f"catalog {entry.attr.get(key)!r}: run artstore verify; export aborted",
                file_id=entry.file_id)
    return data, True


def export_bag(view: ReadView, items: Iterable[CatalogEntry | str], dest: str, *,
               source: str, selection: str = "all files",
               bag_info: dict[str, str] | None = None,
               progress: Callable[[int, int], None] | None = None,
               cancelled: Callable[[], bool] | None = None) -> dict:
    """Write the files ``items`` names (catalog entries, or file ids looked up in ``view``)
    as a complete BagIt bag at ``dest``; see the module docstring for the rules.

    ``source``: the source node as it should appear in bag-info.txt (``External-
    Description``, ``ArtStore-Source-Node``); ``selection``: how the files were chosen (the
    query); ``bag_info``: more bag-info.txt fields (``Source-Organization``...).
    ``progress(files, bytes)`` after each file; ``cancelled()`` is polled between files and
    every 256 MiB (True: ExportCancelled). Anything it raises stops the export, the partial
    bag removed.

    Raises Conflict (``dest`` exists and is not an empty directory), NotFound (its parent is
    missing), ModeNotAllowed (the element is ``ar``: content offline), ChecksumMismatch
    (damaged stored bytes, naming the file), StoreCorrupt, DiskOffline, OSError.

    Returns ``{bag, files, bytes, payload_oxum, bagging_date, renamed: [{file_id,
    original_filename, name}], skipped: [{file_id, reason}], metadata_from_catalog:
    [file_id]}``.
    """
    M.require(view.mode(), M.READ_CONTENT)
    dest = os.path.abspath(dest)
    dest_exists = _check_dest(dest)
    parent, base = os.path.split(dest)
    if dest_exists:
        work_dir = dest
    else:
        work_dir = os.path.join(parent, f".{base}.bag-in-progress-{secrets.token_hex(4)}")
        os.mkdir(work_dir, 0o755)
    try:
        bag = _Bag(work_dir)
        bag._write_new(IN_PROGRESS, b"This bag is being written by artstore export; it is "
                                    b"not complete until this file is gone.\n")
        for d in (DATA, METADATA):
            os.mkdir(bag.path(d), 0o755)
        report = _fill(view, bag, items, source=source, selection=selection,
                       bag_info=bag_info or {}, progress=progress, cancelled=cancelled)
        for d in (DATA, METADATA):
            fsync_dir(bag.path(d))
        os.unlink(bag.path(IN_PROGRESS))
        fsync_dir(work_dir)
        if work_dir != dest:
            try:
                os.rename(work_dir, dest)   # fails rather than replace a non-empty dest
            except OSError as exc:
                raise Conflict(f"{dest} appeared while the bag was written ({exc.strerror}); "
                               "nothing overwritten", code="export_dest_not_empty") from None
        fsync_dir(parent)
    except BaseException:
        if work_dir != dest:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:   # dest was empty: everything of these names in it is this export's
            for name in _TOP_LEVEL:
                path = os.path.join(dest, name)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
        raise
    report["bag"] = dest
    return report


def _fill(view: ReadView, bag: _Bag, items, *, source: str, selection: str,
          bag_info: dict, progress, cancelled) -> dict:
    names = PayloadNames()
    seen: set[str] = set()
    renamed, skipped, from_catalog = [], [], []
    files = total = 0
    manifest_path = bag.path("manifest-sha256.txt")
    manifest_sha = hashlib.sha256()
    index_sha = hashlib.sha256()
    with open(manifest_path, "x", encoding="utf-8", newline="\n") as manifest, \
            open(bag.path(f"{METADATA}/{FILES_INDEX}"), "x", encoding="utf-8",
                 newline="\n") as index:
        for item in items:
            if cancelled is not None and cancelled():
                raise ExportCancelled("the export was cancelled")
            entry = view.entry(item) if isinstance(item, str) else item
            file_id = item if isinstance(item, str) else item.file_id
            if entry is None:
                skipped.append({"file_id": file_id, "reason": "not in the catalog (deleted?)"})
                continue
            if file_id in seen:
                skipped.append({"file_id": file_id, "reason": "selected twice"})
                continue
            if not ids.is_file_id(file_id):
                raise StoreCorrupt(f"catalog entry with a malformed file id {file_id!r}")
            seen.add(file_id)
            original = entry.attr.get("original_filename") or file_id
            name, was_renamed = names.assign(original, file_id)
            size = _copy_verified(view, entry, bag.path(f"{DATA}/{name}"), cancelled)
            sidecar, from_disk = _sidecar_bytes(view, entry)
            bag.write_tag(f"{METADATA}/{file_id}{L.ATTR_SUFFIX}", sidecar)
            if not from_disk:
                from_catalog.append(file_id)
            line = f"{entry.attr['checksum_sha256'].lower()}  {DATA}/{name}\n"
            manifest.write(line)
            manifest_sha.update(line.encode("utf-8"))
            row = json.dumps({"file_id": file_id, "path": f"{DATA}/{name}",
                              "original_filename": original, "size": size,
                              "sha256": entry.attr["checksum_sha256"].lower()},
                             ensure_ascii=False) + "\n"
            index.write(row)
            index_sha.update(row.encode("utf-8"))
            if was_renamed:
                renamed.append({"file_id": file_id, "original_filename": original,
                                "name": name})
            files += 1
            total += size
            if progress is not None:
                progress(files, total)
        for f in (manifest, index):
            f.flush()
            os.fsync(f.fileno())
    bag.tag_digests["manifest-sha256.txt"] = manifest_sha.hexdigest()
    bag.tag_digests[f"{METADATA}/{FILES_INDEX}"] = index_sha.hexdigest()

    try:
        with open(os.path.join(view.data_dir, NODE_JSON), "rb") as f:
            bag.write_tag(f"{METADATA}/{NODE_JSON}", f.read(1 << 20))
        key_note = f"{METADATA}/{NODE_JSON} holds the Ed25519 public key that signs them"
    except FileNotFoundError:
        key_note = "the source node's node.json was not found: no public key included"

    now = datetime.now(timezone.utc)
    oxum = f"{total}.{files}"
    info = {
        "Source-Organization": None,
        "External-Description":
            f"ArtStore export of {files} files from node {source}; "
            f"{METADATA}/<file_id>.attr.json are their signed metadata records, {key_note}, "
            f"{METADATA}/{FILES_INDEX} maps payload names to file ids",
        "Bagging-Date": now.strftime("%Y-%m-%d"),
        "Payload-Oxum": oxum,
        "Bag-Count": "1 of 1",
        "Bag-Software-Agent": f"ArtStore {__version__} (artstore export --bagit)",
        "ArtStore-Source-Node": source,
        "ArtStore-Selection": selection,
        "ArtStore-Exported-At": A.format_time(now),
        "ArtStore-File-Count": str(files),
        "ArtStore-Renamed-Count": str(len(renamed)),
        "ArtStore-Skipped-Count": str(len(skipped)),
    }
    info.update(bag_info)
    lines = "".join(f"{k}: {_tag_value(v)}\n" for k, v in info.items()
                    if v is not None and _tag_value(v) != "")
    bag.write_tag("bag-info.txt", lines.encode("utf-8"))
    # The tag manifest lists every tag file but itself; bagit.txt, which makes the
    # directory a bag, is written last.
    bagit_txt = BAGIT_TXT.encode("utf-8")
    bag.tag_digests["bagit.txt"] = hashlib.sha256(bagit_txt).hexdigest()
    tagmanifest = "".join(f"{digest}  {rel}\n"
                          for rel, digest in sorted(bag.tag_digests.items()))
    bag._write_new("tagmanifest-sha256.txt", tagmanifest.encode("utf-8"))
    bag._write_new("bagit.txt", bagit_txt)
    return {"files": files, "bytes": total, "payload_oxum": oxum,
            "bagging_date": info["Bagging-Date"], "renamed": renamed, "skipped": skipped,
            "metadata_from_catalog": from_catalog}
