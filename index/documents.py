"""From an attr record to an index document (pure: no I/O)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import tantivy

from ..engine import attrs as A
from .pairs import PAIRS_FIELD, pairs_of
from .schema import KIND_FILE, KIND_STATE

STATE_ID = "__index_state__"


def order_key(file_id: str) -> int:
    """The first 64 bits of a UUIDv7 (48-bit milliseconds, version, 12-bit sequence) as a
    signed integer: increasing with creation, unique within a node."""
    return int.from_bytes(uuid.UUID(file_id).bytes[:8], "big", signed=True)


def _texts(value) -> list[str]:
    if isinstance(value, dict):
        return [t for v in value.values() for t in _texts(v)]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    if value is None or isinstance(value, bool):
        return []
    return [str(value)]


def to_us(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def created_datetime(attr: dict) -> datetime:
    return A.parse_time(attr["created_at"]).astimezone(timezone.utc)


def file_document(attr: dict) -> tantivy.Document:
    doc = tantivy.Document()
    doc.add_text("file_id", attr["file_id"])
    doc.add_text("kind", KIND_FILE)
    texts = {"filename": attr.get("original_filename") or ""}
    if attr.get("description"):
        texts["description"] = attr["description"]
    attrs = attr.get("custom_attributes") or {}
    if attrs:
        doc.add_json("attr", attrs)
        doc.add_json("attr_exact", attrs)
        texts["attr_text"] = " ".join(_texts(attrs))
    content_type = attr.get("content_type") or ""
    texts["content_type"] = content_type
    for field, text in texts.items():
        doc.add_text(field, text)
        for pair in pairs_of(field, text):
            doc.add_text(PAIRS_FIELD, pair)
    doc.add_text("content_type_exact", content_type.split(";")[0].strip().lower())
    for creator in {attr.get("created_by_id"), attr.get("created_by_username")}:
        if creator:
            doc.add_text("creator", creator)
    doc.add_text("retention", attr.get("retention_policy") or "permanent")
    created = created_datetime(attr)
    doc.add_date("created_at", created)
    doc.add_integer("created_us", to_us(created))
    doc.add_unsigned("size", int(attr.get("file_size") or 0))
    doc.add_integer("order_key", order_key(attr["file_id"]))
    return doc


def state_document(wal_seq: int) -> tantivy.Document:
    doc = tantivy.Document()
    doc.add_text("file_id", STATE_ID)
    doc.add_text("kind", KIND_STATE)
    doc.add_unsigned("wal_seq", wal_seq)
    return doc


def snippet_document(attr: dict) -> tantivy.Document:
    """The text fields of a record, to cut highlighted snippets from."""
    doc = tantivy.Document()
    doc.add_text("filename", attr.get("original_filename") or "")
    doc.add_text("description", attr.get("description") or "")
    return doc
