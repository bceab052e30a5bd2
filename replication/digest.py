"""Digests for anti-entropy: two nodes compare what they hold without listing it.

Files are spread over ``buckets`` by a hash of their id; a bucket's digest is the XOR of
XXH3-64 of each member's ``file_id`` and metadata stamp (version and time of change). XOR
makes it independent of order (each side walks its catalog its own way) and cheap to
compute in one pass. Two
nodes exchange the bucket digests of the files they should both hold; only the buckets
that differ are then listed and compared, so a pass over a million files that agree costs
a few kilobytes on the wire.

Pure functions: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import xxhash

DEFAULT_BUCKETS = 1024


def bucket_of(file_id: str, buckets: int) -> int:
    return xxhash.xxh3_64_intdigest(file_id.encode("utf-8"), seed=1) % buckets


def item_hash(file_id: str, stamp) -> int:
    """One file's share of its bucket's digest; ``stamp`` is what must agree between
    copies (its metadata version, and when it was made)."""
    return xxhash.xxh3_64_intdigest(f"{file_id}\x00{stamp}".encode("utf-8"))


def digests(items: Iterable[tuple[str, object]], buckets: int) -> list[int]:
    """The digest of each bucket over (file_id, stamp) pairs (0 for an empty bucket)."""
    out = [0] * buckets
    for file_id, version in items:
        out[bucket_of(file_id, buckets)] ^= item_hash(file_id, version)
    return out


def differing(mine: list[int], theirs: list[int]) -> list[int]:
    """The buckets whose digests differ (all of them if the sizes do not match)."""
    if len(mine) != len(theirs):
        return list(range(max(len(mine), len(theirs))))
    return [b for b, (x, y) in enumerate(zip(mine, theirs)) if x != y]


def compare(mine: Mapping[str, object], theirs: Mapping[str, object]) -> dict[str, list[str]]:
    """What differs between two listings (file_id → stamp) of the same buckets:
    ``they_lack`` (here, not there), ``we_lack`` (there, not here) and ``versions``
    (both, at different versions)."""
    return {"they_lack": sorted(set(mine) - set(theirs)),
            "we_lack": sorted(set(theirs) - set(mine)),
            "versions": sorted(f for f in set(mine) & set(theirs) if mine[f] != theirs[f])}
