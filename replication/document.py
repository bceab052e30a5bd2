"""The cluster document: what the admin decides, signed, for every member to apply.

Pure functions and values: no I/O, no clock (every time is passed in). The document is
small, travels by the gossip (``Membership.publish_document``) and is kept by each node in
``<data_dir>/cluster/document.bin``. A signed document is::

    msgpack([1, body, signer, signature])
    body      = msgpack({...})            (the fields below, canonical key order)
    signature = Ed25519(signer's node key, DOMAIN + body)

Body fields (``Document`` exposes them):

- ``version`` (int, grows by one per change), ``issued_at`` (admin's clock, seconds),
  ``signer`` (the admin node that signed), ``token_issuer`` (the ``iss`` of every token);
- ``roster``: node id → {``key`` (32-byte Ed25519 public key), ``address`` (HOST:PORT),
  ``role`` (admin | member), ``name``, ``joined_at``, ``weight`` (its capacity in TB when
  it joined: placement gives it files in proportion)};
- ``modes``: node id → {``mode``, ``by`` {id, name}, ``at``}: a mode the admin set for
  that element (each element applies and records it, with who and when);
- ``policy``: {``replication_factor``};
- ``token_keys``: kid → {``x`` (32-byte public key), ``verify_until`` (None: active)};
- ``accounts``: client id → {``status``, ``generation``, ``role``}: what a member needs to
  refuse a suspended, deleted or revoked account's tokens without asking anyone;
- ``revoked``: jti → exp of tokens revoked one by one (dropped once expired).

Trust (``accept``): a node that holds no document takes the first one whose signer is an
admin *of that document* and, if ``pinned`` keys are configured, one of them; after that a
document is accepted only if it is newer and signed by an admin of the document the node
already holds. So a roster member cannot forge one, and an old one cannot be replayed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import msgpack
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from artstored.engine.errors import ArtStoreError

FORMAT = 1
DOMAIN = b"artstore/cluster-document/v1\x00"
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
ROLES = ("admin", "member")
MODES = ("edit", "rw", "ro", "ar")


class DocumentError(ArtStoreError):
    """A cluster document was refused; nothing was applied."""
    status = 409
    code = "cluster_document_refused"


class MalformedDocument(DocumentError):
    status = 400
    code = "cluster_document_malformed"


class ForgedDocument(DocumentError):
    status = 403
    code = "cluster_document_forged"


class StaleDocument(DocumentError):
    status = 409
    code = "cluster_document_stale"


@dataclass(frozen=True)
class Document:
    """One signed, parsed cluster document. ``blob`` is exactly what was signed and sent."""

    blob: bytes
    body: dict
    signer: str
    signature: bytes

    @property
    def version(self) -> int:
        return self.body["version"]

    @property
    def roster(self) -> dict[str, dict]:
        return self.body["roster"]

    @property
    def modes(self) -> dict[str, dict]:
        return self.body["modes"]

    @property
    def accounts(self) -> dict[str, dict]:
        return self.body["accounts"]

    @property
    def revoked(self) -> dict[str, int]:
        return self.body["revoked"]

    @property
    def token_keys(self) -> dict[str, dict]:
        return self.body["token_keys"]

    @property
    def token_issuer(self) -> str:
        return self.body["token_issuer"]

    @property
    def replication_factor(self) -> int:
        return self.body["policy"]["replication_factor"]

    def admins(self) -> list[str]:
        return sorted(n for n, m in self.roster.items() if m["role"] == "admin")

    def public_keys(self) -> dict[str, bytes]:
        """node id → public key of every roster member (for envelope checks)."""
        return {n: m["key"] for n, m in self.roster.items()}

    def address(self, node: str) -> str | None:
        member = self.roster.get(node)
        return None if member is None else member["address"]

    def signed_by_admin_of(self, other: "Document") -> bool:
        """Whether this document's signature verifies with a key ``other`` names as an
        admin's (``other`` may be this document itself, for a first document)."""
        member = other.roster.get(self.signer)
        if member is None or member["role"] != "admin":
            return False
        try:
            VerifyKey(member["key"]).verify(DOMAIN + _body_bytes(self.blob), self.signature)
        except (BadSignatureError, ValueError, TypeError):
            return False
        return True

    def summary(self) -> dict:
        """What `GET /api/v1/cluster` shows of it (no keys)."""
        return {"version": self.version, "issued_at": self.body["issued_at"],
                "signer": self.signer, "replication_factor": self.replication_factor,
                "admins": self.admins(), "modes": self.modes,
                "suspended_accounts": sorted(c for c, a in self.accounts.items()
                                             if a["status"] != "active"),
                "revoked_tokens": len(self.revoked)}


def empty_body(*, token_issuer: str, replication_factor: int) -> dict:
    """The body of a cluster's first document, before anyone is on it (version 0: the
    admin's first change makes version 1)."""
    return {"format": FORMAT, "version": 0, "issued_at": 0.0, "token_issuer": token_issuer,
            "roster": {}, "modes": {}, "policy": {"replication_factor": replication_factor},
            "token_keys": {}, "accounts": {}, "revoked": {}}


def sign(body: dict, signer: str, key: SigningKey) -> Document:
    """Sign ``body`` (checked first: ValueError names what is wrong) as ``signer``."""
    _check_body(body)
    body_bytes = msgpack.packb(_canonical(body), use_bin_type=True)
    signature = key.sign(DOMAIN + body_bytes).signature
    blob = msgpack.packb([FORMAT, body_bytes, signer, signature], use_bin_type=True)
    return Document(blob, body, signer, signature)


def parse(blob: Any) -> Document:
    """Parse a signed document without trusting it (``accept`` decides that). Raises
    MalformedDocument."""
    if not isinstance(blob, (bytes, bytearray)) or len(blob) > MAX_DOCUMENT_BYTES:
        raise MalformedDocument("a cluster document is bytes, at most 4 MiB")
    blob = bytes(blob)
    try:
        outer = msgpack.unpackb(blob, raw=False, use_list=True)
        if (not isinstance(outer, list) or len(outer) != 4 or outer[0] != FORMAT
                or not isinstance(outer[1], bytes) or not isinstance(outer[2], str)
                or not isinstance(outer[3], bytes)):
            raise ValueError("not a version-1 signed document")
        body = msgpack.unpackb(outer[1], raw=False, use_list=True, strict_map_key=True)
        _check_body(body)
    except MalformedDocument:
        raise
    except Exception as exc:      # msgpack raises several unrelated types on garbage
        raise MalformedDocument(f"cluster document: {exc}") from None
    return Document(blob, body, outer[2], outer[3])


def accept(current: Document | None, blob: Any, *,
           pinned: Mapping[str, bytes] | None = None) -> Document:
    """The document in ``blob`` if a node holding ``current`` may apply it; otherwise
    raise MalformedDocument, StaleDocument (not newer) or ForgedDocument (bad signature,
    or a signer that is not an admin of ``current`` / not pinned). Changes nothing."""
    doc = parse(blob)
    if current is not None and doc.version <= current.version:
        raise StaleDocument(f"version {doc.version} is not newer than {current.version}")
    authority = current if current is not None else doc
    if not doc.signed_by_admin_of(authority):
        raise ForgedDocument(f"version {doc.version}: not signed by an admin of "
                             f"{'the document held' if current else 'itself'}")
    if current is None and pinned:
        key = doc.roster[doc.signer]["key"]
        if pinned.get(doc.signer) != key:
            raise ForgedDocument("the first document's signer is not a pinned admin")
    return doc


def evolve(current: Document | dict, now: float, **changes) -> dict:
    """A new body: ``current``'s (a Document or a body) with ``changes`` and the next
    version. The caller signs it."""
    body = dict(current.body if isinstance(current, Document) else current)
    body.update(changes)
    body["version"] = body["version"] + 1
    body["issued_at"] = float(now)
    return body


# --- validation: everything a reader may assume ----------------------------------------------

def _body_bytes(blob: bytes) -> bytes:
    return msgpack.unpackb(blob, raw=False, use_list=True)[1]


def _canonical(value):
    if isinstance(value, dict):
        return {k: _canonical(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def _is_uint(x) -> bool:
    return type(x) is int and 0 <= x < 2 ** 63


def _is_time(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < 2 ** 40


def _text(x, limit: int = 256) -> bool:
    return isinstance(x, str) and 0 < len(x) <= limit


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise MalformedDocument(f"cluster document: {what}")


def _check_body(body) -> None:
    _require(isinstance(body, dict) and body.get("format") == FORMAT, "unknown format")
    _require(_is_uint(body.get("version")), "version")
    _require(_is_time(body.get("issued_at")), "issued_at")
    _require(_text(body.get("token_issuer")), "token_issuer")
    roster = body.get("roster")
    _require(isinstance(roster, dict), "roster")
    for node, m in roster.items():
        _require(_text(node, 64) and isinstance(m, dict), "roster entry")
        _require(isinstance(m.get("key"), bytes) and len(m["key"]) == 32, f"{node}: key")
        _require(_text(m.get("address")) and ":" in m["address"], f"{node}: address")
        _require(m.get("role") in ROLES, f"{node}: role")
        _require(isinstance(m.get("name"), str), f"{node}: name")
        _require(_is_time(m.get("joined_at")), f"{node}: joined_at")
        _require("weight" not in m or (isinstance(m["weight"], (int, float))
                                       and not isinstance(m["weight"], bool)
                                       and 0 < m["weight"] < 1e9), f"{node}: weight")
    modes = body.get("modes")
    _require(isinstance(modes, dict), "modes")
    for node, m in modes.items():
        _require(_text(node, 64) and isinstance(m, dict) and m.get("mode") in MODES,
                 "mode entry")
        by = m.get("by")
        _require(isinstance(by, dict) and _text(by.get("id")) and isinstance(by.get("name"),
                                                                             str), "mode by")
        _require(_is_time(m.get("at")), "mode at")
    policy = body.get("policy")
    _require(isinstance(policy, dict) and _is_uint(policy.get("replication_factor"))
             and policy["replication_factor"] >= 1, "policy")
    keys = body.get("token_keys")
    _require(isinstance(keys, dict), "token_keys")
    for kid, k in keys.items():
        _require(_text(kid) and isinstance(k, dict) and isinstance(k.get("x"), bytes)
                 and len(k["x"]) == 32, "token key")
        _require(k.get("verify_until") is None or _is_time(k["verify_until"]),
                 "token key verify_until")
    accounts = body.get("accounts")
    _require(isinstance(accounts, dict), "accounts")
    for client, a in accounts.items():
        _require(_text(client) and isinstance(a, dict) and _text(a.get("status"), 32)
                 and _is_uint(a.get("generation")) and _text(a.get("role"), 32), "account")
    revoked = body.get("revoked")
    _require(isinstance(revoked, dict) and all(_text(j) and _is_uint(e)
                                               for j, e in revoked.items()), "revoked")
