"""The audit trail: the WAL read as a list of events, filtered and paged, and its hash chain
checked (see ``engine.wal``). Plain synchronous code over the engine's ReadView: it works
beside a running daemon (``ReadView.open``), in the daemon, and offline.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from .engine.errors import BadRequest
from .engine.view import ReadView

MAX_SCAN = 200_000   # records one page may look at before it answers with a cursor


def _jsonable(value):
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# PREMIS 3 event types of the records that are preservation events in themselves; a
# ``preservation`` record (fixity check, quarantine, validation, replication) names its own.
PREMIS_EVENT_TYPES = {"file.create": "ingestion", "file.delete": "deletion",
                      "file.update": "metadata modification"}


def event(record: dict) -> dict:
    """A WAL record as an audit event (JSON-ready), with its PREMIS event type and outcome
    where it is a preservation event."""
    moment = datetime.fromtimestamp(record["ts"] / 1e6, tz=timezone.utc)
    data = record.get("data") or {}
    out = {"seq": record["seq"], "time": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
           "kind": record["kind"], "state": record["state"], "actor": record["actor"],
           "file_id": record.get("file_id"), "data": _jsonable(data),
           "prev": record["prev"].hex()}
    premis = data.get("premis_event_type") if isinstance(data, dict) else None
    if premis is None and record["kind"] == "file.create" and isinstance(data, dict) \
            and data.get("origin"):
        premis = "replication"      # a copy of a file first stored on another node
    premis = premis or PREMIS_EVENT_TYPES.get(record["kind"])
    if premis:
        out["premis"] = {"event_type": premis,
                         "outcome": (data.get("outcome") if isinstance(data, dict) else None)
                         or ("success" if record["state"] == "COMMITTED" else "failure")}
    return out


def _matches(record: dict, actor, kind, file_id, since_us, until_us) -> bool:
    if actor and actor not in (record["actor"].get("id"), record["actor"].get("name")):
        return False
    if kind and not (record["kind"] == kind or
                     (kind.endswith(".") and record["kind"].startswith(kind))):
        return False
    if file_id and record.get("file_id") != file_id:
        return False
    if since_us is not None and record["ts"] < since_us:
        return False
    if until_us is not None and record["ts"] >= until_us:
        return False
    return True


def _to_us(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1_000_000)


def page(view: ReadView, *, actor: str | None = None, kind: str | None = None,
         file_id: str | None = None, since: datetime | None = None,
         until: datetime | None = None, cursor: str | None = None, limit: int = 100,
         order: str = "desc") -> tuple[list[dict], str | None]:
    """Events matching every filter given, newest first (``desc``) or oldest first. ``kind``
    is exact, or a prefix when it ends in a dot (``file.``). The cursor is the sequence
    number to continue from; a page that scanned MAX_SCAN records without filling up
    answers early with a cursor."""
    if order not in ("asc", "desc"):
        raise BadRequest("order must be asc or desc", code="invalid_order")
    start = None
    if cursor is not None:
        if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 18:
            raise BadRequest(f"invalid cursor {cursor[:40]!r}", code="invalid_cursor")
        start = int(cursor)  # < 10**18 < 2**63: fits the WAL's 8-byte keys
    since_us, until_us = _to_us(since), _to_us(until)
    items: list[dict] = []
    scanned = 0
    next_seq = None
    with view.snapshot() as snap:
        # desc: from the newest record at or before ``start``; asc: from ``start`` up.
        for record in snap.wal_records(start, order):
            if len(items) >= limit or scanned >= MAX_SCAN:
                next_seq = record["seq"]
                break
            scanned += 1
            if _matches(record, actor, kind, file_id, since_us, until_us):
                items.append(event(record))
    return items, (str(next_seq) if next_seq is not None else None)


def verify(view: ReadView) -> dict:
    """Check the hash chain: {"records", "head", "ok", "broken_seq"}."""
    with view.snapshot() as snap:
        broken = snap.verify_wal()
        head = snap.wal_head().seq
        count = snap.wal_count()
    return {"records": count, "head": head, "ok": broken is None, "broken_seq": broken}


def export(view: ReadView, out, **filters) -> int:
    """Write every matching event, oldest first, as JSON lines to ``out``; returns how many."""
    cursor, n = None, 0
    while True:
        items, cursor = page(view, cursor=cursor, limit=1000, order="asc", **filters)
        for item in items:
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
            n += 1
        if cursor is None:
            return n
