"""File identifiers: UUIDv7 (RFC 9562), so that byte order is creation order.

The catalog is keyed by the 16 raw bytes of the id, which makes a catalog scan a scan in
time order without a second index.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

from .errors import FileNotFound

_lock = threading.Lock()
_last_ms = 0
_seq = 0


def new_file_id(now: float | None = None) -> str:
    """A new UUIDv7 string. Ids made in one process are strictly increasing."""
    global _last_ms, _seq
    ms = int((time.time() if now is None else now) * 1000)
    with _lock:
        # Monotonic within a millisecond: a 12-bit counter in rand_a (RFC 9562 §6.2 method 1).
        if ms <= _last_ms:
            ms = _last_ms
            _seq += 1
            if _seq >= 0x1000:
                ms += 1
                _seq = 0
        else:
            _seq = int.from_bytes(os.urandom(2), "big") & 0x3FF
        _last_ms = ms
        seq = _seq
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))


def file_id_key(file_id: str) -> bytes:
    """The catalog key of ``file_id``; raises FileNotFound for anything that is not a UUID."""
    try:
        return uuid.UUID(file_id).bytes
    except (ValueError, AttributeError, TypeError):
        raise FileNotFound(f"no file with id {file_id!r}") from None


def key_file_id(key: bytes) -> str:
    return str(uuid.UUID(bytes=bytes(key)))


def canonical(value) -> str | None:
    """``value`` as a file id is written (lower-case, hyphenated UUID); None if it is none."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        return None


def is_file_id(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except (ValueError, AttributeError, TypeError):
        return False


def moment_key(ms: int) -> bytes:
    """The smallest catalog key of an id made at or after ``ms`` (milliseconds since the
    epoch; negative counts as 0): the 48-bit timestamp of UUIDv7, then zeros."""
    return max(0, ms).to_bytes(6, "big") + b"\x00" * 10
