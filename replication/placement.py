"""Where each file lives: weighted rendezvous hashing (highest random weight) over the roster.

Pure functions of (file id, roster, weights): every node computes the same owners with no
coordination, and a roster change moves only the files whose owner set changed — on a join
of one node to N, about ``replication_factor / (N + 1)`` of the files gain it as an owner,
and nothing else moves.

Weights are capacities (e.g. total bytes of a node's disks); a node with twice the weight
owns about twice the files. The score is the logarithmic method of Schindelhauer and
Schomaker ("Weighted distributed hash tables", 2005), as used by Ceph's straw2 and Tahoe:
``-weight / ln(h)`` with ``h`` uniform in (0, 1), which makes the probability of coming
first exactly proportional to the weight.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import xxhash

_SCALE = float(1 << 64)


def _uniform(file_id: str, node: str) -> float:
    """A hash of (file, node) as a float strictly inside (0, 1)."""
    h = xxhash.xxh3_64_intdigest(f"{node}\x00{file_id}".encode("utf-8"))
    return (h + 0.5) / _SCALE


def scores(file_id: str, weights: Mapping[str, float]) -> dict[str, float]:
    """node → its score for this file (higher wins). Nodes of weight 0 never win."""
    out = {}
    for node, weight in weights.items():
        if weight > 0:
            out[node] = -weight / math.log(_uniform(file_id, node))
    return out


def owners(file_id: str, weights: Mapping[str, float], replication_factor: int) -> list[str]:
    """The ``replication_factor`` owners of ``file_id``, best first (fewer if the roster is
    smaller). Ties cannot depend on dict order: they are broken by node id."""
    ranked = sorted(scores(file_id, weights).items(), key=lambda kv: (-kv[1], kv[0]))
    return [node for node, _ in ranked[:max(0, replication_factor)]]


def quorum(replication_factor: int) -> int:
    """Copies that must be durable before an ``ack=quorum`` upload is answered."""
    return replication_factor // 2 + 1


def moved(file_ids: Sequence[str], before: Mapping[str, float], after: Mapping[str, float],
          replication_factor: int) -> list[str]:
    """The files whose owner set differs between two rosters (what a change must move)."""
    return [f for f in file_ids
            if set(owners(f, before, replication_factor))
            != set(owners(f, after, replication_factor))]
