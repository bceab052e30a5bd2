"""What ``GET /api/v1/cluster`` and ``artstore cluster status`` show: the cluster as one
node sees it."""

from __future__ import annotations

import time


def status_of(cluster) -> dict:
    """Members with their states, incarnations, the document version each holds and how
    recently each was heard from; this node's own state, refusals, gossip and replication
    counters; on the authority, the join requests."""
    now = time.monotonic()
    doc = cluster.doc
    members = []
    view = cluster.membership.members() if cluster.membership is not None else {}
    for member, m in sorted((doc.roster if doc else {}).items()):
        info = view.get(member)
        held = doc.version if member == cluster.id else cluster.peer_doc_version.get(member)
        heard = cluster.peer_heard_at.get(member)
        members.append({
            "node_id": member, "name": m["name"], "address": m["address"],
            "role": m["role"], "weight": m.get("weight", 1.0),
            "state": info.state if info else "unknown",
            "incarnation": info.incarnation if info else None,
            # since == 0: the state it started in, never changed
            "state_for_seconds": round(now - info.since, 3)
            if info and info.since and member != cluster.id else None,
            "document_version": held,
            "document_lag": None if held is None else doc.version - held,
            "last_heard_seconds_ago": None if heard is None else round(now - heard, 3),
        })
    out = {"enabled": True, "node_id": cluster.id, "role": cluster.role,
           "state": cluster.state,
           "authority": cluster.is_authority, "address": cluster.advertise,
           "document": doc.summary() if doc else None, "members": members,
           "mode_from_cluster": cluster.mode_result,
           "refused": dict(cluster.refused), "transport": dict(cluster.transport.stats),
           "replication": cluster.replicator.status() if cluster.replicator else None,
           "swim": cluster.membership.statistics() if cluster.membership else None}
    if cluster.is_authority:
        cluster.authority.expire_joins(time.time())
        out["join_requests"] = [r.as_dict() for r in cluster.authority.joins.values()]
    return out
