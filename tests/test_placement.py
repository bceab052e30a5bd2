"""Rendezvous placement: deterministic, balanced by weight, and a roster change moves only
the files whose owners changed."""

import collections

from artstored.replication import placement as P

FILES = [f"f-{i:06d}" for i in range(20_000)]


def test_owners_are_deterministic_distinct_and_ranked():
    weights = {f"n{i}": 1.0 for i in range(5)}
    for f in FILES[:200]:
        first = P.owners(f, weights, 3)
        assert first == P.owners(f, dict(reversed(list(weights.items()))), 3)
        assert len(set(first)) == 3
        assert P.owners(f, weights, 2) == first[:2]
    assert P.owners("x", {"a": 1.0}, 3) == ["a"]
    assert P.owners("x", {"a": 1.0, "b": 0.0}, 2) == ["a"]


def test_load_follows_the_weights():
    weights = {"a": 1.0, "b": 1.0, "c": 2.0}
    firsts = collections.Counter(P.owners(f, weights, 1)[0] for f in FILES)
    share = {n: firsts[n] / len(FILES) for n in weights}
    assert abs(share["c"] - 0.5) < 0.02 and abs(share["a"] - 0.25) < 0.02, share


def test_a_join_moves_about_rf_over_n_plus_one_and_nothing_else():
    before = {f"n{i}": 1.0 for i in range(4)}
    after = dict(before, n4=1.0)
    rf = 2
    changed = P.moved(FILES, before, after, rf)
    expected = rf / 5
    assert abs(len(changed) / len(FILES) - expected) < 0.02, len(changed) / len(FILES)
    for f in changed:
        # Each changed file gained the new node and lost exactly one old owner.
        old, new = set(P.owners(f, before, rf)), set(P.owners(f, after, rf))
        assert "n4" in new and len(old - new) == 1


def test_a_removal_moves_only_the_removed_nodes_files():
    before = {f"n{i}": 1.0 for i in range(5)}
    after = {n: w for n, w in before.items() if n != "n2"}
    for f in FILES[:5000]:
        old, new = P.owners(f, before, 3), P.owners(f, after, 3)
        if "n2" not in old:
            assert old == new
        else:
            assert set(old) - {"n2"} <= set(new)


def test_quorum():
    assert [P.quorum(rf) for rf in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
