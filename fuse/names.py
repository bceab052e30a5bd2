"""Names and inode numbers of the FUSE tree (pure: no I/O).

Inode numbers are hashes of what they name, so they are the same on every mount: a file's
of its id (top bit set), a directory's of its path (top bit clear).
"""

from __future__ import annotations

import re
import unicodedata
import uuid

import xxhash

from ..engine import layout as L
from ..engine.catalog import CatalogEntry

FILE_BIT = 1 << 63
NAME_MAX = 255


def dir_ino(path: str) -> int:
    return (xxhash.xxh64_intdigest(b"dir:" + path.encode("utf-8")) & ~FILE_BIT) | 2


def file_ino(file_id: str) -> int:
    return xxhash.xxh64_intdigest(uuid.UUID(file_id).bytes) | FILE_BIT


def display_name(original: str) -> str:
    """A name the kernel accepts for a file's original name: its last path part, controls
    and NUL replaced, at most 255 bytes with the extension kept."""
    base = re.split(r"[/\\]", original)[-1]
    base = "".join("_" if unicodedata.category(c) in ("Cc", "Cs") else c for c in base)
    if base.strip(".") == "":
        base = "unnamed"
    return fit_name(base)


def fit_name(name: str, suffix: str = "") -> str:
    stem, ext = L.split_extension(name)
    budget = NAME_MAX - len((suffix + ext).encode("utf-8"))
    return L.cut_utf8(stem, budget) + suffix + ext


def unique_names(entries: list[CatalogEntry]) -> list[tuple[str, CatalogEntry]]:
    """Names for a listing in creation order: the first holder of a name keeps it, later
    ones get " [<last 8 hex digits of the id>]" before the extension."""
    used: set[str] = set()
    out = []
    for entry in entries:
        name = display_name(entry.attr.get("original_filename") or entry.file_id)
        if name in used:
            name = fit_name(name, f" [{entry.file_id.replace('-', '')[-8:]}]")
        used.add(name)
        out.append((name, entry))
    return out


def by_id_name(entry: CatalogEntry) -> str:
    _, ext = L.split_extension(entry.attr.get("original_filename") or "")
    return entry.file_id + ext
