"""``GET /api/v1/search?scope=cluster``: the same query on every live member, merged and
paged.

The client's token is valid on every node (the admin's cluster document carries the keys),
so each member is asked through its public search with the client's own Authorization:
what a client may not see on one node it does not see through another.

Paging: each node's answer is a stream in the order asked; a page is a k-way merge of them
(relevance: by score; created_at: by creation time, then file id), cut at ``limit``. The
cluster cursor (``c`` + base64url JSON) holds, for each node of the first page, where its
stream stands: its own cursor and how many hits of that page were already handed out. A
node is asked for ``limit + skipped`` hits, so no node's page runs dry inside a merge while
it has more. A file held by several nodes appears once: in created_at order its copies are
adjacent and are consumed together; in relevance order (each node scores by its own
statistics) a file appears once per page, but may come back on a later page.
``total_hits`` is the sum of the nodes' own counts: a file held by several nodes counts once
per node (``nodes`` gives each).
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import json
import logging

import aiohttp

from ..engine.errors import BadRequest

log = logging.getLogger("artstored.cluster.search")

TIMEOUT_SECONDS = 10.0
MAX_CURSOR_CHARS = 16384
MAX_NODE_LIMIT = 1000


def _invalid(detail: str) -> BadRequest:
    return BadRequest(f"invalid cluster cursor: {detail}", code="invalid_cursor")


def decode_cursor(cursor: str, node_cursor_ok) -> dict:
    """{node id: [its cursor or None, hits of that page handed out]}; BadRequest
    ``invalid_cursor`` for anything else (``node_cursor_ok`` checks each node's)."""
    if not cursor.startswith("c") or len(cursor) > MAX_CURSOR_CHARS:
        raise _invalid("not a cluster cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor[1:] + "=" * (-len(cursor[1:]) % 4))
        state = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _invalid("does not decode") from None
    if not isinstance(state, dict) or not state:
        raise _invalid("no nodes")
    for node, entry in state.items():
        if not (isinstance(entry, list) and len(entry) == 2
                and (entry[0] is None or (isinstance(entry[0], str)
                                          and node_cursor_ok(entry[0])))
                and isinstance(entry[1], int) and not isinstance(entry[1], bool)
                and 0 <= entry[1] < MAX_NODE_LIMIT):
            raise _invalid(f"bad entry for node {str(node)[:40]!r}")
    return state


def encode_cursor(state: dict) -> str:
    raw = json.dumps(state, separators=(",", ":"), sort_keys=True).encode()
    return "c" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _sort_key(sort: str, order: str):
    if sort == "relevance":
        return lambda item: (-(item.get("score") or 0.0), item.get("file_id") or "")
    if order == "desc":
        # Newest first; ties by file id, descending too (as a node orders them).
        return lambda item: _Desc((item.get("created_at") or "", item.get("file_id") or ""))
    return lambda item: (item.get("created_at") or "", item.get("file_id") or "")


class _Desc:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __lt__(self, other):
        return self.value > other.value

    def __eq__(self, other):
        return self.value == other.value


async def fan_out(cluster, session: aiohttp.ClientSession, query: list[tuple[str, str]],
                  authorization: str, ask_local, *, sort: str, order: str, limit: int,
                  cursor: str | None, node_cursor_ok) -> dict:
    """One page of the merged answer. ``ask_local(node_cursor, node_limit)`` runs the query
    here; every other node is asked over HTTP. ``nodes`` in the answer says what each node
    answered (its total hits, or an error); a node that fails keeps its place in the cursor
    and is asked again for the next page."""
    if cursor is None:
        state = {node: [None, 0] for node in cluster.membership.live_members()}
        state.setdefault(cluster.id, [None, 0])
    else:
        state = decode_cursor(cursor, node_cursor_ok)
    plain = [(k, v) for k, v in query if k not in ("cursor", "limit")]

    async def ask(node: str):
        node_cursor, skip = state[node]
        node_limit = min(MAX_NODE_LIMIT, limit + skip)
        if node == cluster.id:
            return await ask_local(node_cursor, node_limit)
        params = plain + [("limit", str(node_limit))] + \
            ([("cursor", node_cursor)] if node_cursor else [])
        return await _ask(cluster, session, node, params, authorization)

    nodes = list(state)
    answers = await asyncio.gather(*(ask(n) for n in nodes), return_exceptions=True)
    key = _sort_key(sort, order)
    heads, report = [], {}
    streams: dict[str, list] = {}
    for node, answer in zip(nodes, answers):
        if isinstance(answer, BaseException):
            if isinstance(answer, BadRequest):
                raise answer
            answer = type(answer).__name__
        if isinstance(answer, str):
            report[node] = {"error": answer}
            continue
        report[node] = {"total_hits": answer.get("total_hits")}
        items = list(answer.get("items", []))[state[node][1]:]
        streams[node] = [items, 0, answer.get("next_cursor")]
        if items:
            heapq.heappush(heads, (key(items[0]), node))
    page, seen = [], set()
    while heads and len(page) < limit:
        _, node = heapq.heappop(heads)
        items, at, _ = streams[node]
        item = items[at]
        streams[node][1] = at + 1
        if at + 1 < len(items):
            heapq.heappush(heads, (key(items[at + 1]), node))
        if item.get("file_id") in seen:
            continue              # another node's copy of a file already on this page
        seen.add(item.get("file_id"))
        page.append(item)
    # Copies of the last files handed out that stand at a stream's head are consumed too.
    for node, (items, at, _) in streams.items():
        while at < len(items) and items[at].get("file_id") in seen:
            at += 1
        streams[node][1] = at
    next_state = {}
    for node in nodes:
        if node not in streams:
            next_state[node] = state[node]           # failed: ask again next time
            continue
        items, used, node_next = streams[node]
        if used < len(items):
            next_state[node] = [state[node][0], state[node][1] + used]
        elif node_next:
            next_state[node] = [node_next, 0]
    return {"items": page, "next_cursor": encode_cursor(next_state) if next_state else None,
            "total_hits": sum(r.get("total_hits") or 0 for r in report.values()),
            "scope": "cluster", "nodes": report}


async def _ask(cluster, session, node: str, query, authorization: str):
    address = cluster.doc.address(node)
    if address is None:
        return "not on the roster"
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
