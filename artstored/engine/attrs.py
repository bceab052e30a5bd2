"""attr.json: the metadata sidecar beside every stored file, and the source of truth.

Schema v2.0 (what ``encode`` writes)::

    schema_version      "2.0"
    file_id             UUIDv7 string
    original_filename   the name the client gave, unchanged (any Unicode)
    storage_filename    the name on disk (see ``layout.storage_filename``)
    file_size           bytes
    content_type        as declared by the client, or application/octet-stream
    created_at          ISO 8601 UTC with microseconds, "Z"
    created_by_id       the account's client id
    created_by_username the account's name
    description         ≤ 1000 characters
    version             1 at creation, +1 per metadata change
    checksum_sha256     hex
    custom_attributes   a JSON object (keys: letters, digits, '_' and '-'; no '.')
    bucket, object_key  only for a file stored under an S3 name (engine.buckets); fixed
    xxh3_128            hex, for fast fixity checks and replication digests
    origin_node         id of the node that ingested the file
    retention_policy    "permanent" | "temporary"
    expires_at          ISO 8601 UTC, or null for permanent files
    updated_at, updated_by_id, updated_by_username     last metadata change (or null)
    signature           {"alg": "Ed25519", "key_id", "value"} over ``fixity_payload``
    change_signature    the same, over ``record_payload``: the whole record as it is now,
                        signed by the node that made this version (its upload or its PATCH),
                        so that no node that relays a record can change it unnoticed

A v1.0 file (no ``schema_version``, no ``custom_attributes``) is read and migrated in memory
by ``decode``; it is written as v2.0 at its next change. The whole document is at most
4 KiB of UTF-8. Everything here is pure: no I/O.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from datetime import datetime, timezone

from .errors import AttrTooLarge, StoreCorrupt, ValidationError

SCHEMA_VERSION = "2.0"
MAX_ATTR_BYTES = 4096
MAX_DESCRIPTION_CHARS = 1000
MAX_FILENAME_BYTES = 1024
MAX_CONTENT_TYPE_CHARS = 255
MAX_ATTR_KEY_CHARS = 64
MAX_ATTR_DEPTH = 4
DEFAULT_CONTENT_TYPE = "application/octet-stream"

# Only these may change after creation (PATCH); everything else is fixed forever.
MUTABLE_FIELDS = ("description", "custom_attributes")

FIELD_ORDER = (
    "schema_version", "file_id", "original_filename", "storage_filename", "file_size",
    "content_type", "created_at", "created_by_id", "created_by_username", "description",
    "version", "checksum_sha256", "custom_attributes", "bucket", "object_key", "xxh3_128", "origin_node",
    "retention_policy", "expires_at", "updated_at", "updated_by_id", "updated_by_username",
    "signature", "change_signature",
)
REQUIRED_FIELDS = ("file_id", "original_filename", "storage_filename", "file_size",
                   "created_at", "checksum_sha256")

_ATTR_KEY_RE = re.compile(r"^[\w\-]{1,%d}$" % MAX_ATTR_KEY_CHARS)
_CONTENT_TYPE_RE = re.compile(r"^[A-Za-z0-9!#$&^_.+\-]+/[A-Za-z0-9!#$&^_.+\-]+"
                              r"(\s*;\s*[A-Za-z0-9!#$&^_.+\-]+=(\"[^\"\x00-\x1f]*\"|[^\s;\"]+))*$")


def format_time(moment: datetime) -> str:
    """ISO 8601 UTC with microseconds and a ``Z``: sorts as text in time order."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)


# --- validation of what a client sends -----------------------------------------------------


def validate_original_filename(name: str | None) -> str:
    if name is None or name == "":
        raise ValidationError("the file part needs a filename", code="invalid_filename")
    if not isinstance(name, str):
        raise ValidationError("the filename must be a string", code="invalid_filename")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in name):
        raise ValidationError("filename is not valid Unicode", code="invalid_filename")
    if len(name.encode("utf-8")) > MAX_FILENAME_BYTES:
        raise ValidationError(f"filename longer than {MAX_FILENAME_BYTES} bytes of UTF-8",
                              code="invalid_filename")
    return name


def validate_description(text: str | None) -> str:
    if text is None:
        return ""
    if not isinstance(text, str):
        raise ValidationError("description must be a string", code="invalid_description")
    if len(text) > MAX_DESCRIPTION_CHARS:
        raise ValidationError(
            f"description has {len(text)} characters; at most {MAX_DESCRIPTION_CHARS}",
            code="description_too_long")
    if any(unicodedata.category(c) == "Cc" and c not in "\t\n\r" for c in text):
        raise ValidationError("description contains control characters",
                              code="invalid_description")
    return text


def validate_content_type(value: str | None) -> str:
    if value is None or value == "":
        return DEFAULT_CONTENT_TYPE
    if not isinstance(value, str):
        raise ValidationError("the content type must be a string", code="invalid_content_type")
    value = value.strip()
    if len(value) > MAX_CONTENT_TYPE_CHARS or not _CONTENT_TYPE_RE.match(value):
        raise ValidationError(f"invalid content type {value[:80]!r}",
                              code="invalid_content_type")
    return value


def _validate_attr_value(value, depth: int, path: str) -> None:
    if depth > MAX_ATTR_DEPTH:
        raise ValidationError(f"custom_attributes nested deeper than {MAX_ATTR_DEPTH} at {path}",
                              code="invalid_custom_attributes")
    if isinstance(value, dict):
        for k, v in value.items():
            _validate_attr_key(k, path)
            _validate_attr_value(v, depth + 1, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _validate_attr_value(v, depth + 1, f"{path}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        # NaN and infinities are not JSON (1e999 parses as infinity): they never round-trip.
        raise ValidationError(f"custom_attributes value at {path} is not a finite number",
                              code="invalid_custom_attributes")
    elif isinstance(value, int) and not isinstance(value, bool) and \
            not -(1 << 63) <= value < (1 << 64):
        # The catalog and the WAL (msgpack) hold 64-bit integers: a larger one would fail
        # the whole group commit it is in.
        raise ValidationError(f"custom_attributes value at {path} is outside the 64-bit "
                              "integer range", code="invalid_custom_attributes")


def _validate_attr_key(key, path: str) -> None:
    if not isinstance(key, str) or not _ATTR_KEY_RE.match(key):
        where = f" in {path}" if path else ""
        raise ValidationError(
            f"custom attribute key {str(key)[:80]!r}{where} must be 1-{MAX_ATTR_KEY_CHARS} "
            "letters, digits, '_' or '-'", code="invalid_custom_attributes")


def validate_custom_attributes(value) -> dict:
    """A JSON object whose keys can be searched as ``attr.<key>`` (so no dots)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError("custom_attributes must be a JSON object",
                              code="custom_attributes_not_object")
    for k, v in value.items():
        _validate_attr_key(k, "")
        _validate_attr_value(v, 1, k)
    return value


def _no_constant(name: str):
    # NaN and Infinity are not JSON (RFC 8259): attr.json must stay readable by anyone.
    raise ValueError(f"{name} is not a JSON value")


def parse_custom_attributes(text: str | None) -> dict:
    """``custom_attributes`` as sent in a multipart field: a JSON object as text."""
    if text is None or text.strip() == "":
        return {}
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise ValidationError(f"custom_attributes is not valid JSON: {exc}",
                              code="invalid_json") from None
    return validate_custom_attributes(value)


# --- the document ----------------------------------------------------------------------------


def ordered(attr: dict) -> dict:
    """``attr`` with the schema's fields first, in schema order (stable, readable files)."""
    out = {k: attr[k] for k in FIELD_ORDER if k in attr}
    out.update((k, v) for k, v in attr.items() if k not in out)
    return out


def encode(attr: dict) -> bytes:
    """The bytes of attr.json (one field per line, nested values on their field's line);
    raises AttrTooLarge past 4 KiB."""
    # json.dumps with indent= runs the pure-Python encoder; this uses the C one per field
    # (one encoder for all: json.dumps with options builds a new one per call).
    lines = [f"  {_dumps(k)}: {_dumps(v)}" for k, v in ordered(attr).items()]
    data = ("{\n" + ",\n".join(lines) + "\n}\n").encode("utf-8")
    if len(data) > MAX_ATTR_BYTES:
        raise AttrTooLarge(
            f"attr.json would be {len(data)} bytes; at most {MAX_ATTR_BYTES} "
            "(shorten the description or custom_attributes)",
            size=len(data), limit=MAX_ATTR_BYTES)
    return data


_FIELD_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "))
_dumps = _FIELD_ENCODER.encode


def migrate(attr: dict) -> dict:
    """Bring a decoded document to the current schema (v1.0 → v2.0)."""
    if "schema_version" not in attr:  # v1.0
        attr = dict(attr)
        attr["schema_version"] = SCHEMA_VERSION
        attr.setdefault("custom_attributes", {})
        attr.setdefault("description", "")
        attr.setdefault("version", 1)
        attr.setdefault("content_type", DEFAULT_CONTENT_TYPE)
        attr.setdefault("retention_policy", "permanent")
        attr.setdefault("expires_at", None)
    return attr


def decode(data: bytes, *, source: str = "attr.json") -> dict:
    """Parse attr.json bytes (v1 or v2) into a v2 dict; raises StoreCorrupt if unusable."""
    try:
        attr = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreCorrupt(f"{source}: not valid JSON: {exc}") from None
    if not isinstance(attr, dict):
        raise StoreCorrupt(f"{source}: not a JSON object")
    major = str(attr.get("schema_version", "1.0")).split(".")[0]
    if major not in ("1", "2"):
        raise StoreCorrupt(f"{source}: unknown schema_version {attr.get('schema_version')!r}")
    missing = [f for f in REQUIRED_FIELDS if f not in attr]
    if missing:
        raise StoreCorrupt(f"{source}: missing fields {', '.join(missing)}")
    return ordered(migrate(attr))


def fixity_payload(attr: dict) -> bytes:
    """The canonical bytes the node signs: what must never change about a stored file.
    Canonical JSON (sorted keys, no spaces, UTF-8), so anyone can recompute it offline."""
    core = {k: attr.get(k) for k in
            ("file_id", "file_size", "checksum_sha256", "created_at", "origin_node")}
    return json.dumps(core, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def record_payload(attr: dict) -> bytes:
    """The canonical bytes of the whole record but its ``change_signature`` (sorted keys,
    no spaces, UTF-8): what the node that made this version signs."""
    core = {k: v for k, v in attr.items() if k != "change_signature"}
    return json.dumps(core, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def delete_payload(file_id: str) -> bytes:
    """What the node that takes a client's delete signs (carried by the delete's record)."""
    return json.dumps({"delete": file_id}, separators=(",", ":")).encode("utf-8")


def apply_merge_patch(target, patch):
    """RFC 7396 JSON merge patch: returns a new value; ``target`` is not modified."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def patched(attr: dict, patch, *, actor_id: str, actor_name: str, now: datetime) -> dict:
    """The document after a client's merge patch; only MUTABLE_FIELDS may appear in it.

    Raises ValidationError for anything else; the result has ``version`` + 1. Does not
    check the size (``encode`` does).
    """
    if not isinstance(patch, dict):
        raise ValidationError("a merge patch must be a JSON object", code="invalid_patch")
    fixed = sorted(set(patch) - set(MUTABLE_FIELDS))
    if fixed:
        raise ValidationError(
            f"only {', '.join(MUTABLE_FIELDS)} can change; not {', '.join(fixed)}",
            code="field_not_patchable", fields=fixed)
    new = dict(attr)
    if "description" in patch:
        new["description"] = validate_description(patch["description"] or "")
    if "custom_attributes" in patch:
        merged = apply_merge_patch(attr.get("custom_attributes") or {},
                                   patch["custom_attributes"])
        if patch["custom_attributes"] is None:
            merged = {}
        new["custom_attributes"] = validate_custom_attributes(merged)
    new["version"] = int(attr.get("version", 1)) + 1
    new["schema_version"] = SCHEMA_VERSION
    new["updated_at"] = format_time(now)
    new["updated_by_id"] = actor_id
    new["updated_by_username"] = actor_name
    return ordered(new)
