"""``GET /api/v1/search?scope=cluster``: the same query on every live member, merged and
paged.

The client's token is valid on every node (the admin's cluster document carries the keys),
so each member is asked through its public search with the client's own Authorization:
what a client may not see on one node it does not see through another.

Paging: each node's answer is a stream in the order asked; a page is a k-way merge of them
(created_at: by file id, the UUIDv7 whose leading bits are the nodes' own order key;
relevance: by score), cut at ``limit``. The cluster cursor (``c`` + base64url JSON) holds,
for each node still to be read, where its stream stands, as a cursor of that node's own:
in created_at order a keyset cursor made from the last hit taken from it, so a page
neither skips nor repeats a hit whatever was added or deleted meanwhile; in relevance
order the node's snapshot cursor moved to the first hit not taken (a node whose whole
answer fit one page, which hands out no snapshot, is asked again and the hits already
taken are skipped). A file held by several nodes appears once: in created_at order its
copies are adjacent and are taken together; in relevance order (each node scores by its
own statistics) once per page. A node that does not answer keeps its place for
``RETRIES`` pages, then is left out (the answer says so under ``nodes``); a node that
refuses the request (400: its cursor expired, a bad query) makes the whole answer that.
``total_hits`` is the sum of the nodes' own counts: a file held by several nodes counts
once per node.
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import json
import logging
import re

import aiohttp

from ..engine.errors import ArtStoreError, BadRequest
from ..index.documents import order_key

log = logging.getLogger("artstored.cluster.search")

TIMEOUT_SECONDS = 10.0
MAX_CURSOR_CHARS = 16384
MAX_NODE_LIMIT = 1000
RETRIES = 3
_SNAPSHOT = re.compile(r"^r([A-Za-z0-9_-]{1,64})\.([0-9]{1,12})$")


class NodeRefused(ArtStoreError):
    """A node answered the cluster search with a client error: it is the client's."""
    status = 400
    code = "invalid_query"
    title = "Search refused"


def _invalid(detail: str) -> BadRequest:
    return BadRequest(f"invalid cluster cursor: {detail}", code="invalid_cursor")


def decode_cursor(cursor: str, node_cursor_ok) -> dict:
    """{node id: [its cursor or None, hits of that page to skip, failures so far]};
    BadRequest ``invalid_cursor`` for anything else (``node_cursor_ok`` checks each
    node's)."""
    if not cursor.startswith("c") or len(cursor) > MAX_CURSOR_CHARS:
        raise _invalid("not a cluster cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor[1:] + "=" * (-len(cursor[1:]) % 4))
        state = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _invalid("does not decode") from None
    if not isinstance(state, dict) or not state or len(state) > 10_000:
        raise _invalid("no nodes")
    for node, entry in state.items():
        if not (isinstance(entry, list) and len(entry) == 3
                and (entry[0] is None or (isinstance(entry[0], str)
                                          and node_cursor_ok(entry[0])))
                and all(isinstance(n, int) and not isinstance(n, bool) for n in entry[1:])
                and 0 <= entry[1] < MAX_NODE_LIMIT and 0 <= entry[2] <= RETRIES):
            raise _invalid(f"bad entry for node {str(node)[:40]!r}")
    return state


def encode_cursor(state: dict) -> str:
    raw = json.dumps(state, separators=(",", ":"), sort_keys=True).encode()
    return "c" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


class _Desc:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __lt__(self, other):
        return self.value > other.value

    def __eq__(self, other):
        return self.value == other.value


def _sort_key(sort: str, order: str):
    if sort == "relevance":
        return lambda item: (-(item.get("score") or 0.0), item.get("file_id") or "")
    if order == "desc":
        return lambda item: _Desc(item.get("file_id") or "")
    return lambda item: item.get("file_id") or ""


def _next_place(entry: list, used: int, items: list, node_next, *, sort: str, order: str):
    """Where a node's stream stands after ``used`` of ``items`` (the hits after those
    skipped) were taken: [cursor, skip, 0], or None when it has nothing more."""
    cursor, skip, _ = entry
    if used >= len(items):
        return [node_next, 0, 0] if node_next else None
    if used == 0:
        return [cursor, skip, 0]
    if sort != "relevance":
        return [f"k{order[0]}{order_key(items[used - 1]['file_id'])}", 0, 0]
    snap = _SNAPSHOT.match(node_next or "") or _SNAPSHOT.match(cursor or "")
    if snap is not None:
        start = int(_SNAPSHOT.match(cursor).group(2)) if cursor and _SNAPSHOT.match(cursor) \
            else 0
        return [f"r{snap.group(1)}.{start + skip + used}", 0, 0]
    return [cursor, skip + used, 0]


async def fan_out(cluster, session: aiohttp.ClientSession, query: list[tuple[str, str]],
                  authorization: str, ask_local, *, sort: str, order: str, limit: int,
                  cursor: str | None, node_cursor_ok) -> dict:
    """One page of the merged answer. ``ask_local(node_cursor, node_limit)`` runs the query
    here; every other node is asked over HTTP. ``nodes`` in the answer says what each node
    answered (its total hits, or an error)."""
    if cursor is None:
        state = {node: [None, 0, 0] for node in cluster.membership.live_members()}
        state.setdefault(cluster.id, [None, 0, 0])
    else:
        state = decode_cursor(cursor, node_cursor_ok)
    plain = [(k, v) for k, v in query if k not in ("cursor", "limit")]

    async def ask(node: str):
        node_cursor, skip, _ = state[node]
        node_limit = min(MAX_NODE_LIMIT, limit + skip)
        if node == cluster.id:
            return await ask_local(node_cursor, node_limit)
        params = plain + [("limit", str(node_limit))] + \
            ([("cursor", node_cursor)] if node_cursor else [])
        return await _ask(cluster, session, node, params, authorization)

    nodes = list(state)
    answers = await asyncio.gather(*(ask(n) for n in nodes), return_exceptions=True)
    key = _sort_key(sort, order)
    heads, report, streams, gone = [], {}, {}, set()
    for node, answer in zip(nodes, answers):
        if isinstance(answer, (BadRequest, NodeRefused)):
            raise answer
        if isinstance(answer, BaseException):
            answer = type(answer).__name__
        if answer is None:
            report[node] = {"error": "not on the roster"}
            gone.add(node)
            continue
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
    # Copies of the last files handed out that stand at a stream's head are taken too.
    for node, (items, at, _) in streams.items():
        while at < len(items) and items[at].get("file_id") in seen:
            at += 1
        streams[node][1] = at
    next_state = {}
    for node in nodes:
        if node in gone:
            continue
        if node not in streams:
            failures = state[node][2] + 1
            if failures <= RETRIES:
                next_state[node] = [state[node][0], state[node][1], failures]
            else:
                report[node]["error"] += f"; left out after {RETRIES} pages"
            continue
        items, used, node_next = streams[node]
        place = _next_place(state[node], used, items, node_next, sort=sort, order=order)
        if place is not None:
            next_state[node] = place
    return {"items": page, "next_cursor": encode_cursor(next_state) if next_state else None,
            "total_hits": sum(r.get("total_hits") or 0 for r in report.values()),
            "scope": "cluster", "nodes": report}


async def _ask(cluster, session, node: str, query, authorization: str):
    address = cluster.doc.address(node)
    if address is None:
        return None
    try:
        async with session.get(f"http://{address}/api/v1/search", params=query,
                               headers={"Authorization": authorization},
                               timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)) as resp:
            if 400 <= resp.status < 500 and resp.status not in (401, 403, 404, 408, 429):
                problem = await resp.json(content_type=None)
                if not isinstance(problem, dict):
                    problem = {}
                raise NodeRefused(f"{node}: {problem.get('detail', resp.status)}",
                                  code=problem.get("code") or "invalid_query")
            if resp.status != 200:
                return f"HTTP {resp.status}"
            return await resp.json()
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
        log.info("cluster search: %s did not answer: %s", node, exc)
        return type(exc).__name__
