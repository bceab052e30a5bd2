"""Operations on a stored object's pair of files (data + attr.json)."""

from __future__ import annotations

import hashlib
import os

from . import durable
from . import layout as L


def remove_object_files(data_path: str) -> None:
    """Remove a stored object: sidecar first (so a crash never leaves content a rebuild
    would bring back), then the data, then make the removal durable."""
    attr_path = data_path + L.ATTR_SUFFIX
    for path in (attr_path, durable.temp_name_for(attr_path), data_path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    durable.fsync_dir(os.path.dirname(data_path))


def hash_file(path: str, chunk: int = 1 << 20) -> tuple[int, str]:
    """(size, sha256 hex) of a file, read in large chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(chunk)
        view = memoryview(buf)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            size += n
    return size, h.hexdigest()
