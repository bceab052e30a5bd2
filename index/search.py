"""Search: a query in Tantivy's syntax plus filters, sorted, paged, with snippets.

Cursors stay correct while files arrive:

- ``sort=created_at``: a keyset cursor (the last hit's creation key). Stateless; a page
  continues strictly after the previous one, so nothing is returned twice and nothing that
  existed when the walk began is skipped.
- ``sort=relevance``: scores shift as documents arrive, so the walk keeps the searcher
  snapshot of its first page (for ``SNAPSHOT_TTL`` seconds) and pages through it by offset.
  An expired snapshot is a 400 ``cursor_expired``.

Errors are BadRequest with a stable code: ``invalid_query`` (the parser's message says what
and where), ``unknown_field``, ``invalid_filter``, ``invalid_cursor``, ``cursor_expired``.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone

import tantivy

from ..engine.errors import BadRequest
from . import documents as D
from .pairs import rewrite_phrases
from .schema import DEFAULT_FIELDS, FIELD_BOOSTS, KIND_FILE, QUERY_FIELDS

RELEVANCE, CREATED_AT = "relevance", "created_at"
ASC, DESC = "asc", "desc"
SNAPSHOT_TTL = 600.0
SNAPSHOT_MAX = 256
_ATTR_KEY_RE = re.compile(r"^[\w\-]{1,64}$")


@dataclass
class SearchRequest:
    q: str = ""
    created_from: datetime | None = None
    created_to: datetime | None = None
    content_type: str | None = None
    created_by: str | None = None
    size_min: int | None = None
    size_max: int | None = None
    attrs: dict[str, str] = field(default_factory=dict)
    sort: str | None = None       # default: relevance with a query, created_at without
    order: str = DESC
    limit: int = 20
    cursor: str | None = None

    @property
    def effective_sort(self) -> str:
        return self.sort or (RELEVANCE if self.q.strip() else CREATED_AT)


@dataclass
class Hit:
    file_id: str
    score: float | None
    address: object


@dataclass
class SearchPage:
    hits: list[Hit]
    total: int
    next_cursor: str | None
    searcher: tantivy.Searcher
    query: tantivy.Query       # the user's query as written (what snippets highlight)


_AND_NOT = re.compile(r"\bAND\s+NOT\s+")


def normalize_query(text: str) -> str:
    """``a AND NOT b`` as ``a AND -b``, outside quoted phrases.

    Tantivy parses ``a AND NOT b`` as ``+a +(NOT b)``, and a clause made only of NOT matches
    nothing, so the query would find nothing at all; ``-b`` excludes as the user meant.
    """
    parts = re.split(r'("(?:[^"\\]|\\.)*")', text)
    return "".join(p if i % 2 else _AND_NOT.sub("AND -", p) for i, p in enumerate(parts))


def parse_time_param(name: str, value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 date or time, not {value[:40]!r}",
                         code="invalid_filter") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


class SearchService:
    def __init__(self, follower):
        self.follower = follower
        self.schema = follower.schema
        # snapshot id -> (deadline, searcher, query run, the user's query as written)
        self._snapshots: OrderedDict[str, tuple] = OrderedDict()
        self._lock = threading.Lock()

    # --- building the query ---------------------------------------------------------------

    def user_query(self, text: str, *, phrases_as_pairs: bool = True) -> tantivy.Query:
        """The query ``text`` means; BadRequest ``invalid_query``/``unknown_field`` if it
        cannot be read. ``phrases_as_pairs``: two-word phrases looked up as word pairs
        (``index.pairs``: the same documents, found faster); without it, as written (what
        snippets highlight)."""
        if not text.strip():
            return tantivy.Query.all_query()
        text = normalize_query(text)
        if phrases_as_pairs:
            rewritten = rewrite_phrases(text)
            if rewritten != text:
                try:
                    return self._parse(rewritten)
                except ValueError:
                    pass        # reported below, in the user's own terms
        try:
            return self._parse(text)
        except ValueError as exc:
            message = str(exc)
            unknown = re.match(r"Field does not exist: '(.*)'", message)
            if unknown:
                name = unknown.group(1)
                raise BadRequest(
                    f"unknown field {name!r} in the query; fields are "
                    f"{', '.join(QUERY_FIELDS)}, and a custom attribute is attr.{name}",
                    code="unknown_field", field=name) from None
            # The lenient parser says where: "expected ')' at position 12".
            _, problems = self.follower.index.parse_query_lenient(text, DEFAULT_FIELDS)
            details = [str(p).removeprefix("Syntax Error: ") for p in problems] or [message]
            raise BadRequest(f"cannot parse the query {text[:200]!r}: {'; '.join(details)}",
                             code="invalid_query", errors=details) from None

    def _parse(self, text: str) -> tantivy.Query:
        return self.follower.index.parse_query(text, DEFAULT_FIELDS, field_boosts=FIELD_BOOSTS)

    def _term(self, field_name: str, value) -> tantivy.Query:
        return tantivy.Query.term_query(self.schema, field_name, value)

    def filters(self, req: SearchRequest) -> list[tantivy.Query]:
        # Only an empty query matches the state document (it has no text): intersecting
        # every query with kind:file would cost a pass over every document.
        out = [] if req.q.strip() else [self._term("kind", KIND_FILE)]
        if req.created_from or req.created_to:
            # [created_from, created_to): from inclusive, to exclusive.
            out.append(tantivy.Query.range_query(
                self.schema, "created_us", tantivy.FieldType.Integer,
                D.to_us(req.created_from) if req.created_from else -(2 ** 63),
                D.to_us(req.created_to) - 1 if req.created_to else 2 ** 63 - 1))
        if req.content_type:
            out.append(self._term("content_type_exact", req.content_type.strip().lower()))
        if req.created_by:
            out.append(self._term("creator", req.created_by))
        if req.size_min is not None or req.size_max is not None:
            out.append(tantivy.Query.range_query(
                self.schema, "size", tantivy.FieldType.Unsigned, req.size_min or 0,
                req.size_max if req.size_max is not None else 2 ** 63))
        for key, value in req.attrs.items():
            out.append(self._attr_filter(key, value))
        return out

    def _attr_filter(self, key: str, value: str) -> tantivy.Query:
        if not _ATTR_KEY_RE.match(key):
            raise BadRequest(f"attr.{key[:60]} is not a valid attribute name",
                             code="invalid_filter")
        quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        clauses = [f"attr_exact.{key}:{quoted}"]
        if re.fullmatch(r"-?\d+(\.\d+)?", value) or value in ("true", "false"):
            clauses.append(f"attr_exact.{key}:{value}")  # numbers and booleans as such
        try:
            return self.follower.index.parse_query(" OR ".join(clauses), [])
        except ValueError as exc:
            raise BadRequest(f"bad attribute filter attr.{key}: {exc}",
                             code="invalid_filter") from None

    # --- running it -----------------------------------------------------------------------

    def search(self, req: SearchRequest) -> SearchPage:
        sort = req.effective_sort
        if sort not in (RELEVANCE, CREATED_AT):
            raise BadRequest("sort must be relevance or created_at", code="invalid_sort")
        if req.order not in (ASC, DESC):
            raise BadRequest("order must be asc or desc", code="invalid_sort")
        if sort == RELEVANCE:
            return self._search_relevance(req)
        return self._search_created(req)

    def _combined(self, req: SearchRequest, extra: list | None = None) -> tantivy.Query:
        user = self.user_query(req.q)
        must = [(tantivy.Occur.Must, user)]
        # Filters do not score: const_score keeps relevance the user query's alone.
        for f in self.filters(req) + (extra or []):
            must.append((tantivy.Occur.Must, tantivy.Query.const_score_query(f, 0.0)))
        return tantivy.Query.boolean_query(must)

    def _search_created(self, req: SearchRequest) -> SearchPage:
        extra = []
        if req.cursor:
            key = _decode_keyset(req.cursor, req.order)
            lower, upper = (key + 1, 2 ** 63 - 1) if req.order == ASC else (-(2 ** 63), key - 1)
            extra.append(tantivy.Query.range_query(self.schema, "order_key",
                                                   tantivy.FieldType.Integer, lower, upper))
        query = self._combined(req, extra)
        searcher = self.follower.searcher()
        order = tantivy.Order.Asc if req.order == ASC else tantivy.Order.Desc
        result = searcher.search(query, req.limit + 1, count=not req.cursor,
                                 order_by_field="order_key", order=order)
        total = result.count if not req.cursor else \
            searcher.search(self._combined(req), 1, count=True).count
        hits = [Hit(_file_id(searcher, addr), None, addr) for _, addr in result.hits]
        more = len(hits) > req.limit
        hits = hits[: req.limit]
        next_cursor = None
        if more and hits:
            next_cursor = f"k{req.order[0]}{D.order_key(hits[-1].file_id)}"
        return SearchPage(hits, total, next_cursor, searcher, self._as_written(req))

    def _as_written(self, req: SearchRequest) -> tantivy.Query:
        return self.user_query(req.q, phrases_as_pairs=False)

    def _search_relevance(self, req: SearchRequest) -> SearchPage:
        if req.cursor:
            snapshot_id, offset = _decode_snapshot(req.cursor)
            with self._lock:
                self._expire()
                found = self._snapshots.get(snapshot_id)
            if found is None:
                raise BadRequest("the cursor's result set has expired; start the search again",
                                 code="cursor_expired")
            _, searcher, query, written = found
        else:
            snapshot_id, offset = secrets.token_urlsafe(9), 0
            searcher = self.follower.searcher()
            query, written = self._combined(req), self._as_written(req)
        result = searcher.search(query, req.limit + 1, count=True, offset=offset)
        hits = [Hit(_file_id(searcher, addr), float(score), addr)
                for score, addr in result.hits]
        more = len(hits) > req.limit
        hits = hits[: req.limit]
        next_cursor = None
        if more:
            with self._lock:
                self._snapshots[snapshot_id] = (time.monotonic() + SNAPSHOT_TTL, searcher, query,
                                                written)
                self._snapshots.move_to_end(snapshot_id)
                while len(self._snapshots) > SNAPSHOT_MAX:
                    self._snapshots.popitem(last=False)
            next_cursor = f"r{snapshot_id}.{offset + len(hits)}"
        return SearchPage(hits, result.count, next_cursor, searcher, written)

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, (deadline, *_) in self._snapshots.items() if deadline < now]:
            del self._snapshots[key]

    # --- snippets -------------------------------------------------------------------------

    def snippets(self, page: SearchPage, attrs: dict[str, dict]) -> dict[str, dict]:
        """file_id → {field: highlighted HTML} for the hits whose text matched."""
        out: dict[str, dict] = {}
        generators = {}
        for name in ("filename", "description"):
            try:
                generators[name] = tantivy.SnippetGenerator.create(
                    page.searcher, page.query, self.schema, name)
            except ValueError:
                continue
        for hit in page.hits:
            attr = attrs.get(hit.file_id)
            if attr is None:
                continue
            doc = D.snippet_document(attr)
            found = {}
            for name, generator in generators.items():
                snippet = generator.snippet_from_doc(doc)
                if snippet.highlighted():
                    found[name] = snippet.to_html()
            if found:
                out[hit.file_id] = found
        return out


def _file_id(searcher: tantivy.Searcher, address) -> str:
    return searcher.doc(address)["file_id"][0]


def _decode_keyset(cursor: str, order: str) -> int:
    if len(cursor) < 3 or cursor[0] != "k" or cursor[1] != order[0]:
        raise BadRequest(f"invalid cursor {cursor[:60]!r}", code="invalid_cursor")
    try:
        return int(cursor[2:])
    except ValueError:
        raise BadRequest(f"invalid cursor {cursor[:60]!r}", code="invalid_cursor") from None


def _decode_snapshot(cursor: str) -> tuple[str, int]:
    snapshot_id, sep, offset = cursor[1:].partition(".")
    if cursor[:1] != "r" or not sep or not offset.isdigit() or not snapshot_id:
        raise BadRequest(f"invalid cursor {cursor[:60]!r}", code="invalid_cursor")
    return snapshot_id, int(offset)
