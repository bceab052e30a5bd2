"""The SWIM protocol's vocabulary: peer states and the one table of their transitions,
message types and their validation, events and outputs, the Lifeguard suspicion timer.
``swim.Membership`` is the state machine that uses them (split out to keep each module
readable; everything here is pure data and small pure functions)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

# --- peer states and the one table of transitions ------------------------------------------

ALIVE, SUSPECT, DEAD, LEFT = "alive", "suspect", "dead", "left"
STATES = (ALIVE, SUSPECT, DEAD, LEFT)

NEWER = "newer"                  # accepted when its incarnation > the recorded one
SAME_OR_NEWER = "same-or-newer"  # accepted when its incarnation >= the recorded one
NEVER = "never"

# Rules (SWIM §4.2, memberlist state.go aliveNode/suspectNode/deadNode):
#  - alive(i) beats anything only with a strictly newer incarnation: only the member itself
#    raises its incarnation, so only the member can clear a suspicion or come back from dead;
#  - suspect(i) beats alive at the same incarnation; on a suspect member it is a Lifeguard
#    confirmation (same timer, shorter) rather than a new suspicion;
#  - dead(i) and left(i) beat alive and suspect at the same incarnation; a suspicion never
#    reopens a dead or left member;
#  - between dead and left: a graceful leave at the same incarnation is the better
#    explanation; a newer dead(i) only records the newer incarnation (so that a stale
#    alive(i) cannot revive the member later).
# (state, update kind) → (when the update is accepted, the state it leads to)
PEER_TRANSITIONS: dict[tuple[str, str], tuple[str, str | None]] = {
    (ALIVE, ALIVE):     (NEWER, ALIVE),
    (ALIVE, SUSPECT):   (SAME_OR_NEWER, SUSPECT),
    (ALIVE, DEAD):      (SAME_OR_NEWER, DEAD),
    (ALIVE, LEFT):      (SAME_OR_NEWER, LEFT),
    (SUSPECT, ALIVE):   (NEWER, ALIVE),
    (SUSPECT, SUSPECT): (SAME_OR_NEWER, SUSPECT),
    (SUSPECT, DEAD):    (SAME_OR_NEWER, DEAD),
    (SUSPECT, LEFT):    (SAME_OR_NEWER, LEFT),
    (DEAD, ALIVE):      (NEWER, ALIVE),
    (DEAD, SUSPECT):    (NEVER, None),
    (DEAD, DEAD):       (NEWER, DEAD),
    (DEAD, LEFT):       (SAME_OR_NEWER, LEFT),
    (LEFT, ALIVE):      (NEWER, ALIVE),
    (LEFT, SUSPECT):    (NEVER, None),
    (LEFT, DEAD):       (NEWER, DEAD),
    (LEFT, LEFT):       (NEWER, LEFT),
}

# Updates about this node itself: when one of these is accepted the node refutes it by
# taking incarnation = claimed + 1 and spreading alive (unless it is leaving). An alive
# claim newer than ours is a previous life of ours (we restarted): refute it too.
SELF_REFUTES: dict[str, str] = {
    ALIVE: NEWER,
    SUSPECT: SAME_OR_NEWER,
    DEAD: SAME_OR_NEWER,
    LEFT: SAME_OR_NEWER,
}

# When a full-state exchange says a member is dead we only suspect it (memberlist
# mergeState): the member gets a suspicion timeout to refute, which is what lets both
# halves of a healed partition keep their live members.
SYNC_MERGE_AS: dict[str, str] = {ALIVE: ALIVE, SUSPECT: SUSPECT, DEAD: SUSPECT, LEFT: LEFT}

# --- messages -------------------------------------------------------------------------------
# Plain dicts of str/int/bool/list (msgpack-ready); the envelope adds sender and signature.
#   ping      {"t": "ping", "seq": int, "to": node, "u": [update, ...]}
#   ack       {"t": "ack", "seq": int, "u": [...]}
#   ping-req  {"t": "ping-req", "seq": int, "to": node, "nack": bool, "u": [...]}
#   nack      {"t": "nack", "seq": int}
#   gossip    {"t": "gossip", "u": [...]}
#   (ping, ack, ping-req and gossip also carry "dv": the sender's document version, once
#   it has one: whoever holds a newer document answers with it, so a member that missed
#   every gossiped copy is repaired at its next exchange instead of the next full sync)
#   sync      {"t": "sync", "reply": bool, "members": [[node, state, incarnation], ...],
#              "doc": [version, value] | None}
# "u" is optional. Updates:
#   {"k": "alive" | "dead" | "left", "n": node, "i": incarnation}
#   {"k": "suspect", "n": node, "i": incarnation, "f": the member that suspects}
#   {"k": "doc", "v": version, "d": value}        the cluster document: newest version wins
PING, ACK, PING_REQ, NACK, GOSSIP, SYNC = "ping", "ack", "ping-req", "nack", "gossip", "sync"
MESSAGE_TYPES = (PING, ACK, PING_REQ, NACK, GOSSIP, SYNC)
DOC = "doc"
UPDATE_KINDS = STATES + (DOC,)
MAX_UPDATES_PER_MESSAGE = 4096        # refuse absurd messages before iterating them
MAX_MEMBERS_PER_SYNC = 1_000_000
NACK_FRACTION = 0.8                   # of probe_timeout (Lifeguard §IV-A)
_SENT = {t: "sent_" + t.replace("-", "_") for t in MESSAGE_TYPES}
_RECEIVED = {t: "received_" + t.replace("-", "_") for t in MESSAGE_TYPES}
_CARRIERS = frozenset((PING, ACK, PING_REQ, GOSSIP))   # messages with "u" and "dv"
# Every counter statistics() reports, present from the start (at 0) for /metrics.
_COUNTERS = (*_SENT.values(), *_RECEIVED.values(), "probes_failed", "suspicions_raised",
             "refutations", "dead_probes", "dead_probe_answers", "syncs_sent",
             "misaddressed", "strangers", "malformed", "updates_about_strangers",
             "doc_repairs", "documents_refused", "members_added", "members_removed")


class Event(NamedTuple):
    """Something the caller may want to log, count or act on.

    ``kind`` is one of: ``alive``, ``suspect``, ``dead``, ``left`` (``node`` entered that
    state; for ``suspect`` ``data`` is the member whose probe failed), ``incarnation``
    (``node``'s incarnation rose, state unchanged), ``refuted`` (this node raised its own
    incarnation; ``data`` is the claim it refuted), ``document`` (a newer cluster document;
    ``data`` is its version), ``stranger`` (a message from outside the roster, ignored),
    ``malformed`` (a roster member sent something this protocol cannot read, ignored;
    ``data`` says what), ``document_refused`` (a newer document the caller's check
    refused; ``data`` is its version), ``removed`` (``node`` was taken off the roster).
    A member added by ``update_roster`` is reported as ``alive`` at incarnation 0.
    """

    kind: str
    node: str | None
    incarnation: int | None = None
    data: Any = None


class Output(NamedTuple):
    """What one input produced: messages to send (best effort) and events, in order."""

    messages: list[tuple[str, dict]]
    events: list[Event]


class MalformedMessage(ValueError):
    """A message does not follow the schema above (the peer broke it, not us)."""


class Suspicion:
    """The suspicion timer of one member (memberlist ``suspicion.go``), without the timer.

    Starts at ``high``; each confirmation by a member other than those already counted
    pulls the deadline towards ``low``: timeout = max(low, high - (high - low) ×
    log(c + 1) / log(k + 1)). ``deadline`` is absolute (start + timeout).
    """

    __slots__ = ("start", "k", "low", "high", "witnesses", "confirmations")

    def __init__(self, start: float, origin: str, k: int, low: float, high: float):
        self.start, self.k, self.low, self.high = start, k, low, high
        # The originator is not a confirmation: our own suspicion may come back to us.
        self.witnesses = {origin}
        self.confirmations = 0

    @property
    def deadline(self) -> float:
        if self.k < 1:
            return self.start + self.low
        frac = _log1p(self.confirmations) / _log1p(self.k)
        return self.start + max(self.low, self.high - frac * (self.high - self.low))

    def confirm(self, origin: str) -> bool:
        """Count ``origin``; True if it was new and moved the deadline."""
        if self.confirmations >= self.k or origin in self.witnesses:
            return False
        self.witnesses.add(origin)
        self.confirmations += 1
        return True


def _log1p(x: int) -> float:
    return math.log(x + 1.0)


class MemberInfo(NamedTuple):
    state: str
    incarnation: int
    since: float          # when this node last saw the state change (its own clock)


class _Peer:
    __slots__ = ("node", "state", "incarnation", "since", "suspicion")

    def __init__(self, node: str):
        self.node, self.state, self.incarnation, self.since = node, ALIVE, 0, 0.0
        self.suspicion: Suspicion | None = None


class _Probe:
    __slots__ = ("seq", "target", "relays", "nacks")

    def __init__(self, seq: int, target: str):
        self.seq, self.target = seq, target
        self.relays: tuple[str, ...] = ()
        self.nacks: set[str] = set()


class _IndexedSet:
    """A set with O(1) add, discard and uniform random choice (for the dead members)."""

    __slots__ = ("items", "pos")

    def __init__(self):
        self.items: list[str] = []
        self.pos: dict[str, int] = {}

    def add(self, x: str) -> None:
        if x not in self.pos:
            self.pos[x] = len(self.items)
            self.items.append(x)

    def discard(self, x: str) -> None:
        i = self.pos.pop(x, None)
        if i is None:
            return
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self.pos[last] = i

    def __len__(self) -> int:
        return len(self.items)


_DOC_KEY = "\x00doc"   # broadcast-queue key of the document (node ids are never this)


# --- validation: everything a handler may assume ----------------------------------------------

def _is_uint(x) -> bool:
    return type(x) is int and x >= 0


_MEMBER_KINDS = frozenset(STATES)


def _check_updates(updates) -> None:
    if type(updates) is not list and not isinstance(updates, (list, tuple)):
        raise MalformedMessage("u is not a list")
    if len(updates) > MAX_UPDATES_PER_MESSAGE:
        raise MalformedMessage("too many updates")
    # The hot path of every message: plain type() checks (bool is not an incarnation).
    for u in updates:
        if type(u) is not dict:
            raise MalformedMessage("an update is not a map")
        k = u.get("k")
        if k in _MEMBER_KINDS:
            i = u.get("i")
            if type(u.get("n")) is not str or type(i) is not int or i < 0:
                raise MalformedMessage("bad member update")
            if k == SUSPECT and type(u.get("f")) is not str:
                raise MalformedMessage("suspect update without its origin")
        elif k == DOC:
            if not _is_uint(u.get("v")) or "d" not in u:
                raise MalformedMessage("bad document update")
        else:
            raise MalformedMessage(f"unknown update kind {k!r}")


def validate_message(msg) -> str:
    """Check ``msg`` against the schema above; return its type or raise MalformedMessage.
    The transport may call it too, to refuse a bad request before queueing it."""
    if not isinstance(msg, dict):
        raise MalformedMessage("a message is a map")
    t = msg.get("t")
    if t not in MESSAGE_TYPES:
        raise MalformedMessage(f"unknown message type {t!r}")
    if t == SYNC:
        members = msg.get("members")
        if not isinstance(members, (list, tuple)) or len(members) > MAX_MEMBERS_PER_SYNC:
            raise MalformedMessage("sync without a member list")
        for m in members:
            if (not isinstance(m, (list, tuple)) or len(m) != 3 or not isinstance(m[0], str)
                    or m[1] not in STATES or not _is_uint(m[2])):
                raise MalformedMessage("bad sync entry")
        doc = msg.get("doc")
        if doc is not None and (not isinstance(doc, (list, tuple)) or len(doc) != 2
                                or not _is_uint(doc[0])):
            raise MalformedMessage("bad sync document")
        if not isinstance(msg.get("reply"), bool):
            raise MalformedMessage("sync without reply flag")
        return t
    if t != GOSSIP and not _is_uint(msg.get("seq")):
        raise MalformedMessage("missing seq")
    if t in (PING, PING_REQ) and not isinstance(msg.get("to"), str):
        raise MalformedMessage("missing target")
    if "u" in msg:
        _check_updates(msg["u"])
    if "dv" in msg and not _is_uint(msg["dv"]):
        raise MalformedMessage("bad document version")
    return t
