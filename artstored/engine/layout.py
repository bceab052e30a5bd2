"""Where things live on disk, and the rules for the names of stored files.

A disk root holds::

    objects/YYYY/MM/DD/HH/<storage_filename>            the content, never modified
    objects/YYYY/MM/DD/HH/<storage_filename>.attr.json  its metadata (source of truth)
    tmp/                                                 uploads in flight

``storage_filename`` is ``{stem}_{username}_{YYYYmmddTHHMMSS}_{file_id}{.ext}``, at most
200 bytes of UTF-8. Everything here is pure: no I/O.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime

MAX_STORAGE_NAME_BYTES = 200
MAX_USERNAME_BYTES = 64
MAX_EXT_CHARS = 16
ATTR_SUFFIX = ".attr.json"
OBJECTS = "objects"
TMP = "tmp"

# Characters that are unsafe or awkward in a file name on any filesystem an archive may
# be copied to (POSIX separators and NUL, Windows' reserved set).
_UNSAFE = set('/\\<>:"|?*')
_EXT_RE = re.compile(r"^[A-Za-z0-9]{1,%d}$" % MAX_EXT_CHARS)
_RUNS = re.compile(r"_{2,}")


def _is_unsafe_char(ch: str) -> bool:
    if ch in _UNSAFE:
        return True
    # Cc: C0/C1 controls incl. NUL; Cf: format chars such as U+202E RIGHT-TO-LEFT OVERRIDE,
    # which can make a name display as something else; Zl/Zp: line/paragraph separators.
    return unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs")


def safe_component(text: str) -> str:
    """``text`` made safe as part of a file name: unsafe characters become ``_``, runs of
    ``_`` collapse; no leading dot, dash, underscore or space (hidden files, names a shell
    tool would take for an option); no trailing dots or spaces (Windows drops them)."""
    text = unicodedata.normalize("NFC", text)
    out = "".join("_" if _is_unsafe_char(ch) else ch for ch in text)
    out = _RUNS.sub("_", out)
    out = out.lstrip("._- \t").rstrip(". \t")
    return out


def cut_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 form fits ``max_bytes``; never splits a
    character."""
    if max_bytes <= 0:
        return ""
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", errors="ignore")


def split_extension(original_filename: str) -> tuple[str, str]:
    """(stem, ext) of the last path component; ext includes the dot, or is ''.

    Only a short alphanumeric suffix counts as an extension,
    and ``notes.final version`` gives no extension; ``a.tar.gz`` gives ``.tar.gz``.
    """
    base = re.split(r"[/\\]", original_filename)[-1]
    head, dot, tail = base.rpartition(".")
    if dot and head.strip(".") and _EXT_RE.match(tail):
        prefix = original_filename[: len(original_filename) - len(base)]
        ext = "." + tail
        if head.lower().endswith(".tar") and head[:-4].strip("."):  # a.tar.gz keeps .tar.gz
            head, ext = head[:-4], head[-4:] + ext
        return prefix + head, ext
    return original_filename, ""


def flatten_path(name: str) -> str:
    """A client's name with its path parts joined by ``_``; empty, ``.`` and ``..`` parts
    dropped (``../../etc/passwd`` → ``etc_passwd``)."""
    parts = [p for p in re.split(r"[/\\]", name) if p.strip(". ")]
    return "_".join(parts)


def storage_filename(original_filename: str, username: str, created_at: datetime,
                     file_id: str) -> str:
    """The on-disk name of a new file; ≤ 200 bytes of UTF-8, safe on any filesystem."""
    stem, ext = split_extension(original_filename)
    stem = flatten_path(stem)
    user = cut_utf8(safe_component(username), MAX_USERNAME_BYTES) or "unknown"
    stamp = created_at.strftime("%Y%m%dT%H%M%S")
    tail = f"_{user}_{stamp}_{file_id}{ext}"
    budget = MAX_STORAGE_NAME_BYTES - len(tail.encode("utf-8"))
    stem = cut_utf8(safe_component(stem), budget).rstrip(". \t") or "file"
    name = stem + tail
    assert len(name.encode("utf-8")) <= MAX_STORAGE_NAME_BYTES, name
    return name


def object_dir(created_at: datetime) -> str:
    """The directory of an object relative to ``objects/``: ``YYYY/MM/DD/HH``."""
    return created_at.strftime("%Y/%m/%d/%H")


def object_relpath(created_at: datetime, name: str) -> str:
    return f"{object_dir(created_at)}/{name}"


def is_attr_file(name: str) -> bool:
    return name.endswith(ATTR_SUFFIX) and not name.startswith(".")
