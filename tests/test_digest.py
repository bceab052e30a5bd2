"""Anti-entropy digests (replication/digest.py): equal sets agree whatever their order; a
missing file or a different version shows in exactly its bucket, and the comparison of
those buckets names it."""

import random

from artstored.replication import digest as G

FILES = {f"01a2{i:04x}-0000-7000-8000-{i:012x}": 1 + i % 3 for i in range(5000)}


def test_equal_sets_agree_in_any_order():
    items = list(FILES.items())
    shuffled = items[:]
    random.Random(3).shuffle(shuffled)
    assert G.digests(items, 256) == G.digests(shuffled, 256)
    assert G.differing(G.digests(items, 256), G.digests(shuffled, 256)) == []


def test_a_missing_file_and_a_version_change_are_found():
    theirs = dict(FILES)
    lost = sorted(FILES)[123]
    changed = sorted(FILES)[4000]
    del theirs[lost]
    theirs[changed] += 1
    mine_d, theirs_d = G.digests(FILES.items(), 256), G.digests(theirs.items(), 256)
    buckets = G.differing(mine_d, theirs_d)
    assert set(buckets) == {G.bucket_of(lost, 256), G.bucket_of(changed, 256)}

    def in_buckets(listing):
        return {f: v for f, v in listing.items() if G.bucket_of(f, 256) in buckets}

    diff = G.compare(in_buckets(FILES), in_buckets(theirs))
    assert diff == {"they_lack": [lost], "we_lack": [], "versions": [changed]}


def test_buckets_are_spread():
    counts = [0] * 64
    for f in FILES:
        counts[G.bucket_of(f, 64)] += 1
    assert min(counts) > 0.6 * len(FILES) / 64 and max(counts) < 1.4 * len(FILES) / 64
    assert G.differing([1, 2], [1, 2, 3]) == [0, 1, 2]
