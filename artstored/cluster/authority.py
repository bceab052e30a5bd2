"""The admin's side of the cluster document: every change makes a new signed version.

Plain synchronous code over ``replication.document``: no I/O of its own, no clock (``now``
is passed in). The caller (``ClusterNode`` on an admin) persists each new document before
it publishes it, so a document once spread is never forgotten by its signer.

What changes the document:

- ``admit`` / ``remove``: the roster (``artstore cluster join|leave``);
- ``set_mode``: a mode for one element, with who and when;
- ``refresh``: the token-signing keys and the accounts' state (status, generation, role,
  revoked token ids), read from the admin's own key ring and account store. The daemon
  calls it every second, so a suspension or revocation is in a signed document within a
  second of being made and on every node a few gossip rounds later.

Join requests are kept in memory only: a waiting node repeats its request every few
seconds, so a restarted admin sees it again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from nacl.signing import SigningKey

from ..replication import document as D

from ..engine.errors import Conflict, NotFound, ValidationError
from ..engine import modes as M

JOIN_REQUEST_TTL = 60.0     # a request not repeated for this long is dropped


@dataclass
class JoinRequest:
    node_id: str
    key: bytes
    address: str
    name: str
    first_seen: float
    last_seen: float
    role: str = "member"
    weight: float = 1.0            # its capacity in TB (placement weight)

    def as_dict(self) -> dict:
        return {"node_id": self.node_id, "address": self.address, "name": self.name,
                "role": self.role, "weight": self.weight, "first_seen": self.first_seen,
                "last_seen": self.last_seen}


@dataclass
class Authority:
    """The signing admin's state. Not thread-safe: drive it from the event loop."""

    node_id: str
    key: SigningKey
    current: D.Document | None
    joins: dict[str, JoinRequest] = field(default_factory=dict)
    # With an etcd-backed authority, admin nodes join as admins (any of them may sign);
    # with a local one there is exactly one admin, and every other node is a member.
    admins_may_join: bool = False

    # --- building documents ---------------------------------------------------------------

    def bootstrap(self, now: float, *, address: str, name: str, token_issuer: str,
                  replication_factor: int, weight: float = 1.0) -> D.Document:
        """Version 1 of a new cluster: this node alone, as its admin. Only when it holds no
        document yet (RuntimeError otherwise)."""
        if self.current is not None:
            raise RuntimeError("this admin already holds a cluster document")
        body = D.empty_body(token_issuer=token_issuer, replication_factor=replication_factor)
        roster = {self.node_id: {"key": bytes(self.key.verify_key), "address": address,
                                 "role": "admin", "name": name, "joined_at": float(now),
                                 "weight": weight}}
        return self._sign(D.evolve(body, now, roster=roster))

    def admit(self, now: float, node_id: str) -> D.Document | None:
        """Put a node that asked to join on the roster (as a member). NotFound if it has not
        asked (in the last minute); None if it is already on the roster (idempotent)."""
        doc = self._require_document()
        if node_id in doc.roster:
            self.joins.pop(node_id, None)
            return None
        self.expire_joins(now)
        request = self.joins.get(node_id)
        if request is None:
            raise NotFound(f"no join request from {node_id!r}: start it with seeds first",
                           code="no_join_request")
        roster = dict(doc.roster)
        role = request.role if self.admins_may_join and request.role in D.ROLES else "member"
        roster[node_id] = {"key": request.key, "address": request.address, "role": role,
                           "name": request.name, "joined_at": float(now),
                           "weight": request.weight}
        new = self._sign(D.evolve(doc, now, roster=roster))
        del self.joins[node_id]
        return new

    def remove(self, now: float, node_id: str) -> D.Document | None:
        """Take a node off the roster; its messages are refused from then on. None if it is
        not on it (idempotent). An admin cannot remove itself (Conflict)."""
        doc = self._require_document()
        if node_id not in doc.roster:
            return None
        if node_id == self.node_id:
            raise Conflict("the signing admin cannot take itself off the roster",
                           code="cannot_remove_authority")
        roster = {n: m for n, m in doc.roster.items() if n != node_id}
        modes = {n: m for n, m in doc.modes.items() if n != node_id}
        return self._sign(D.evolve(doc, now, roster=roster, modes=modes))

    def set_mode(self, now: float, node_id: str, mode: str, *, by_id: str,
                 by_name: str) -> D.Document:
        """Set ``node_id``'s mode; the element applies it when the document reaches it and
        records it in its WAL with who and when. NotFound for a node not on the roster."""
        doc = self._require_document()
        M.check_mode(mode)
        if node_id not in doc.roster:
            raise NotFound(f"{node_id!r} is not on the roster", code="not_a_member")
        modes = dict(doc.modes)
        modes[node_id] = {"mode": mode, "by": {"id": by_id, "name": by_name},
                          "at": float(now)}
        return self._sign(D.evolve(doc, now, modes=modes))

    def refresh(self, now: float, *, token_keys: dict, accounts: dict,
                revoked: dict) -> D.Document | None:
        """A new version if the keys or the accounts' state differ from the document's;
        None if nothing changed. Expired revocations are dropped."""
        doc = self._require_document()
        revoked = {j: e for j, e in revoked.items() if e > now}
        if (token_keys == doc.token_keys and accounts == doc.accounts
                and revoked == doc.revoked):
            return None
        return self._sign(D.evolve(doc, now, token_keys=token_keys, accounts=accounts,
                                   revoked=revoked))

    def adopt(self, doc: D.Document) -> None:
        """Make ``doc`` (persisted by the caller) the current one."""
        self.current = doc

    # --- join requests ----------------------------------------------------------------------

    def note_join_request(self, now: float, node_id: str, key: bytes, address: str,
                          name: str, role: str = "member", weight: float = 1.0) -> None:
        """Remember (or refresh) a join request. ValidationError for a request whose id is
        not its key's, or that clashes with a roster member's key."""
        from ..engine.node import node_id_of
        if node_id_of(key) != node_id:
            raise ValidationError("the node id is not derived from its key",
                                  code="join_request_invalid")
        if len(self.joins) >= 1000 and node_id not in self.joins:
            self.expire_joins(now)
            if len(self.joins) >= 1000:
                raise Conflict("too many pending join requests", code="too_many_join_requests")
        old = self.joins.get(node_id)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or \
                not 0 < weight < 1e9:
            weight = 1.0
        self.joins[node_id] = JoinRequest(node_id, key, address, name[:256],
                                          old.first_seen if old else now, now,
                                          role if role in D.ROLES else "member",
                                          float(weight))

    def expire_joins(self, now: float) -> None:
        for node_id in [n for n, r in self.joins.items()
                        if now - r.last_seen > JOIN_REQUEST_TTL]:
            del self.joins[node_id]

    # --- plumbing ---------------------------------------------------------------------------

    def _require_document(self) -> D.Document:
        if self.current is None:
            raise RuntimeError("bootstrap first")
        return self.current

    def _sign(self, body: dict) -> D.Document:
        return D.sign(body, self.node_id, self.key)


def token_keys_of(keyring, now: float | None = None) -> dict:
    """The document's ``token_keys`` from an admin's KeyRing: every key a token may still be
    signed with, and until when."""
    now = time.time() if now is None else now
    out = {}
    for entry in keyring.manifest["keys"]:
        until = entry.get("verify_until")
        if until is None or until > now:
            out[entry["kid"]] = {"x": bytes(keyring.keys[entry["kid"]].verify_key),
                                 "verify_until": None if until is None else float(until)}
    return out
