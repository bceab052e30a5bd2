"""``GET /api/v1/search?scope=cluster``: the same query on every live member, merged.

The client's token is valid on every node (the admin's cluster document carries the keys),
so each member is asked through its public search with the client's own Authorization:
what a client may not see on one node it does not see through another. Hits are merged by
file id (a file held by several nodes appears once), ordered as asked (relevance: by
score; created_at: by creation time), and cut to ``limit``. One page only: a cursor is
per node, so cluster-wide results are not paged (ask a narrower query instead).
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

log = logging.getLogger("artstored.cluster.search")

TIMEOUT_SECONDS = 10.0


async def fan_out(cluster, session: aiohttp.ClientSession, query: list[tuple[str, str]],
                  authorization: str, local: dict, *, sort: str, order: str,
                  limit: int) -> dict:
    """Merge ``local`` (this node's answer) with every other live member's answer to
    ``query``. ``nodes`` in the answer says what each member answered (hits or error)."""
    members = [n for n in cluster.membership.live_members() if n != cluster.id]
    answers = await asyncio.gather(*(_ask(cluster, session, n, query, authorization)
                                     for n in members))
    items, seen = [], set()
    nodes = {cluster.id: {"total_hits": local["total_hits"]}}
    for node, answer in [(cluster.id, local)] + list(zip(members, answers)):
        if isinstance(answer, str):
            nodes[node] = {"error": answer}
            continue
        nodes[node] = {"total_hits": answer.get("total_hits")}
        for item in answer.get("items", []):
            if item.get("file_id") not in seen:
                seen.add(item.get("file_id"))
                items.append(item)
    if sort == "relevance":
        items.sort(key=lambda i: -(i.get("score") or 0.0))
    else:
        items.sort(key=lambda i: i.get("created_at") or "", reverse=(order == "desc"))
    return {"items": items[:limit], "next_cursor": None, "total_hits": len(seen),
            "scope": "cluster", "nodes": nodes}


async def _ask(cluster, session, node: str, query, authorization: str):
    address = cluster.doc.address(node)
    try:
        async with session.get(f"http://{address}/api/v1/search", params=query,
                               headers={"Authorization": authorization},
                               timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)) as resp:
            if resp.status != 200:
                return f"HTTP {resp.status}"
            return await resp.json()
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
        log.info("cluster search: %s did not answer: %s", node, exc)
        return type(exc).__name__
