"""SWIM membership with Lifeguard, as a sans-I/O state machine for one node.

No sockets, no clock, no threads. The caller (the daemon's HTTP transport, or the
simulator) feeds it three kinds of input and acts on what comes back:

- ``start(now)`` once, then ``tick(now)`` whenever ``next_deadline()`` has passed;
- ``receive(now, sender, message)`` for every message that arrived (``sender`` already
  authenticated by ``envelope.unpack``);
- ``leave(now)`` and ``publish_document(now, version, value)`` on the operator's request.

Each returns an ``Output``: the messages to send, as ``(recipient, message)`` pairs, and the
``Event``s that happened (a member became alive, suspect, dead or left; an incarnation
changed; this node refuted a suspicion; a newer cluster document arrived; a stranger or a
malformed message was ignored). Sending is best effort: a message the caller fails to
deliver is simply lost, which the protocol is built to survive.

The protocol (SWIM, Das et al. 2002; Lifeguard, Dadgar et al. 2018; memberlist):

- every ``probe_interval`` ping the next member of a shuffled round-robin; no ack within
  ``probe_timeout`` → ``ping-req`` through ``indirect_checks`` others, who nack if the target
  does not answer them either; no ack by the end of the period → *suspect* the member;
- a suspicion becomes *dead* after a timeout that starts long and shrinks as independent
  members confirm it (``suspicion.py`` in memberlist; ``Suspicion`` here);
- a member that hears it is suspected (or dead) refutes by raising its incarnation and
  spreading ``alive``; what beats what is ``PEER_TRANSITIONS``, the one table below;
- updates ride on every ping/ack and on gossip messages to a few random members, each sent
  ``retransmit_limit`` times; a full-state exchange (``sync``) repairs what gossip missed;
- dead members are still pinged now and then (they are roster members: the roster is a
  signed document, not something gossip may shrink), and every message to a member we
  think suspect or dead starts by telling it so. So after a partition each side learns it
  was declared dead, refutes, and the cluster heals without an operator.

The failure detector's steps live in ``swim_probe.py`` and the dissemination's in
``swim_gossip.py``: mixins over the state this class keeps, split out only for size.

Only roster members are listened to; messages from anyone else are dropped with a
``stranger`` event. Signatures and replay protection are the envelope's job
(``envelope.py``), not this class's.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from .swim_config import (SwimConfig, dead_probe_interval_for, expected_confirmations,
                          push_pull_interval_for, retransmit_limit, suspicion_bounds)

from .swim_gossip import Dissemination, _claim
from .swim_probe import Probing
from .swim_messages import (  # noqa: F401  (re-exported: the protocol's vocabulary)
    ACK, ALIVE, DEAD, DOC, Event, GOSSIP, LEFT, MalformedMessage, MemberInfo, NACK,
    NACK_FRACTION, NEVER, NEWER, Output, PEER_TRANSITIONS, PING, PING_REQ, SELF_REFUTES,
    STATES, SUSPECT, SYNC, SYNC_MERGE_AS, Suspicion, _CARRIERS, _COUNTERS, _DOC_KEY,
    _IndexedSet, _Peer, _Probe, _RECEIVED, _SENT, _is_uint, validate_message)


class Membership(Probing, Dissemination):
    """One node's view of the cluster, and the SWIM protocol that keeps it current.

    ``roster``: every member's id, this node's included (the cluster document's list);
    every other member starts *alive* at incarnation 0, as on a fresh cluster.
    ``incarnation``: this node's starting incarnation. A daemon that restarts should pass
    something larger than any incarnation of its previous life (e.g. its boot time in
    seconds); if it does not, the cluster still tells it and it refutes, one round later.
    ``rng``: all randomness (target choice, shuffles, timer phases) comes from here, so a
    seeded ``random.Random`` makes a simulation reproducible.

    Not thread-safe: drive one instance from one task. Every input must carry a ``now``
    that never goes backwards. Misuse (input before ``start``, a second ``start``, an
    older document) raises ``RuntimeError`` / ``ValueError``; what peers send never raises.
    """

    def __init__(self, self_id: str, roster: Iterable[str], config: SwimConfig | None = None,
                 rng: random.Random | None = None, *, incarnation: int = 0,
                 document_check: Callable[[int, Any], bool] | None = None):
        members = list(dict.fromkeys(roster))
        if self_id not in members:
            raise ValueError(f"{self_id!r} is not in the roster")
        if not all(isinstance(m, str) and m and m != _DOC_KEY for m in members):
            raise ValueError("node ids must be non-empty strings")
        self.id = self_id
        self.config = config or SwimConfig.lan()
        self._rng = rng or random.Random()
        n = len(members)
        self._peers: dict[str, _Peer] = {m: _Peer(m) for m in members if m != self_id}
        self._others: list[str] = list(self._peers)
        self._down = _IndexedSet()            # dead or left peers, for the dead probes
        self._incarnation = incarnation
        self._state = ALIVE
        self._started = False
        self._document_check = document_check
        self._size_changed(n)

        self._probe_order: list[str] = []
        self._probe_index = 0
        self._probe: _Probe | None = None
        self._seq = 0
        # seq → what an ack with that seq means:
        #   ("probe", target) | ("relay", requester, their_seq, target, wants_nack)
        #   | ("dead-probe", target)
        self._acks: dict[int, tuple] = {}
        self._awareness = 0

        # Broadcast queue: key → [transmits, order, update]; one entry per member (a newer
        # update about a member replaces the older one) plus one for the document.
        self._queue: dict[str, list] = {}
        self._order = 0

        # Timers: a heap of (deadline, token, kind, key); a timer is live while
        # _armed[(kind, key)] == token, so re-arming or cancelling is O(1) and stale heap
        # entries are skipped when they surface.
        self._timers: list[tuple[float, int, str, Any]] = []
        self._armed: dict[tuple[str, Any], int] = {}
        self._token = 0

        self._doc_version: int | None = None
        self._doc_value: Any = None
        self._doc_behind: set[str] = set()    # members whose last message had an older one

        self._stats: Counter = Counter(dict.fromkeys(_COUNTERS, 0))
        self._now = 0.0
        self._msgs: list[tuple[str, dict]] = []
        self._events: list[Event] = []

    # --- inputs ---------------------------------------------------------------------------

    def start(self, now: float, *, join: bool = True) -> Output:
        """Arm the timers (at random phases, so a cluster started at once does not probe in
        lockstep). With ``join`` (a restart, or a node added later), also announce itself
        and exchange full state with one random member. Call exactly once."""
        if self._started:
            raise RuntimeError("Membership.start() called twice")
        self._started = True
        self._begin(now)
        rng, cfg = self._rng, self.config
        self._arm("probe", None, now + rng.uniform(0, cfg.probe_interval))
        self._arm("sync", None, now + rng.uniform(0, self._sync_interval))
        self._arm("dead-probe", None, now + rng.uniform(0, self._dead_probe_interval))
        if join and self._others:
            self._broadcast_self()
            self._send_sync(self._others[rng.randrange(len(self._others))], reply=False)
        return self._end()

    def tick(self, now: float) -> Output:
        """Run every timer due at ``now``. Cheap when nothing is due."""
        self._begin(now)
        heap, armed = self._timers, self._armed
        while heap and heap[0][0] <= now:
            _, token, kind, key = heapq.heappop(heap)
            if armed.get((kind, key)) != token:
                continue
            del armed[(kind, key)]
            self._fire(now, kind, key)
        return self._end()

    def receive(self, now: float, sender: str, message: dict) -> Output:
        """Handle one message from ``sender`` (authenticated by the caller).

        Messages from outside the roster (or claiming to be from this node) are ignored
        with a ``stranger`` event; a message that does not follow the schema is ignored
        with a ``malformed`` event. Never raises because of what a peer sent.
        """
        self._begin(now)
        peer = self._peers.get(sender) if isinstance(sender, str) else None
        if peer is None:
            self._stats["strangers"] += 1
            self._events.append(Event("stranger", sender if isinstance(sender, str) else None))
            return self._end()
        try:
            kind = validate_message(message)
        except MalformedMessage as exc:
            self._stats["malformed"] += 1
            self._events.append(Event("malformed", sender, data=str(exc)))
            return self._end()
        self._stats[_RECEIVED[kind]] += 1
        doc_check = self._doc_version is not None and kind in _CARRIERS
        if doc_check:
            dv = message.get("dv")
            if dv is None or dv < self._doc_version:
                self._doc_behind.add(sender)
        _HANDLERS[kind](self, now, sender, message)
        if doc_check and sender in self._doc_behind:
            # The handler sent it nothing to carry the document: send it now.
            self._stats["doc_repairs"] += 1
            self._send(sender, {"t": GOSSIP})
        return self._end()

    def leave(self, now: float) -> Output:
        """Leave gracefully: spread ``left`` and stop probing. Keep feeding ticks and
        messages for a few gossip intervals so the news goes out, then stop."""
        self._require_started()
        self._begin(now)
        if self._state != LEFT:
            self._state = LEFT
            for kind in ("probe", "sync", "dead-probe"):
                self._cancel(kind, None)
            self._enqueue(self.id, {"k": LEFT, "n": self.id, "i": self._incarnation})
        return self._end()

    def publish_document(self, now: float, version: int, value: Any) -> Output:
        """Spread a new cluster document (``value`` must be msgpack-able and small: it
        rides on gossip). ``version`` must be newer than the one this node has
        (ValueError otherwise); every member converges on the newest version it hears of.
        The caller vouches for it: ``document_check`` is not asked."""
        self._require_started()
        if not _is_uint(version):
            raise ValueError("a document version is a non-negative int")
        if self._doc_version is not None and version <= self._doc_version:
            raise ValueError(f"version {version} is not newer than {self._doc_version}")
        self._begin(now)
        self._apply_doc(version, value, checked=True)
        return self._end()

    def update_roster(self, now: float, roster: Iterable[str]) -> Output:
        """Make ``roster`` the membership (from a newer cluster document): members new to
        it start *alive* at incarnation 0 and are told about at once (a sync); members no
        longer on it are forgotten, with their timers and pending probes. This node must
        stay on the roster (ValueError): a node taken off stops its instance instead.
        Idempotent."""
        self._require_started()
        members = list(dict.fromkeys(roster))
        if self.id not in members:
            raise ValueError(f"{self.id!r} is not in the new roster")
        if not all(isinstance(m, str) and m and m != _DOC_KEY for m in members):
            raise ValueError("node ids must be non-empty strings")
        self._begin(now)
        wanted = set(members)
        for node in [m for m in self._peers if m not in wanted]:
            self._forget(node)
        added = [m for m in members if m != self.id and m not in self._peers]
        for node in added:
            self._peers[node] = _Peer(node)
            self._peers[node].since = now
            self._others.append(node)
        self._size_changed(len(self._peers) + 1)
        for node in added:
            self._stats["members_added"] += 1
            self._events.append(Event(ALIVE, node, 0))
            self._send_sync(node, reply=False)
        return self._end()

    # --- what the caller may read -----------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When ``tick`` next has something to do (None: never, until another input)."""
        heap, armed = self._timers, self._armed
        while heap and armed.get((heap[0][2], heap[0][3])) != heap[0][1]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    @property
    def incarnation(self) -> int:
        return self._incarnation

    @property
    def document(self) -> tuple[int, Any] | None:
        """(version, value) of the newest cluster document heard of, or None."""
        return None if self._doc_version is None else (self._doc_version, self._doc_value)

    def member(self, node: str) -> MemberInfo:
        """How this node sees ``node`` (KeyError if not in the roster)."""
        if node == self.id:
            return MemberInfo(self._state, self._incarnation, 0.0)
        p = self._peers[node]
        return MemberInfo(p.state, p.incarnation, p.since)

    def members(self) -> dict[str, MemberInfo]:
        """The whole view, this node included."""
        view = {p.node: MemberInfo(p.state, p.incarnation, p.since)
                for p in self._peers.values()}
        view[self.id] = MemberInfo(self._state, self._incarnation, 0.0)
        return view

    def live_members(self) -> list[str]:
        """Members this node considers alive or suspect (itself included unless left)."""
        out = [p.node for p in self._peers.values() if p.state in (ALIVE, SUSPECT)]
        return out + [self.id] if self._state == ALIVE else out

    def suspicion_deadline(self, node: str) -> float | None:
        """When the suspicion of ``node`` expires, if it is suspect."""
        s = self._peers[node].suspicion
        return None if s is None else s.deadline

    def statistics(self) -> dict[str, Any]:
        """Counters for /metrics: members per state, messages sent/received per type,
        suspicions raised, refutations, strangers, malformed messages, queue length."""
        per_state = Counter(p.state for p in self._peers.values())
        per_state[self._state] += 1
        return {"members": {s: per_state.get(s, 0) for s in STATES},
                "incarnation": self._incarnation, "awareness": self._awareness,
                "broadcast_queue": len(self._queue), "pending_acks": len(self._acks),
                **dict(self._stats)}

    # --- plumbing ---------------------------------------------------------------------------

    def _require_started(self):
        if not self._started:
            raise RuntimeError("Membership.start() must be called first")

    def _begin(self, now: float) -> None:
        self._require_started()
        self._now = now
        self._msgs, self._events = [], []

    def _end(self) -> Output:
        out = Output(self._msgs, self._events)
        self._msgs, self._events = [], []
        return out

    def _arm(self, kind: str, key: Any, deadline: float) -> None:
        self._token += 1
        self._armed[(kind, key)] = self._token
        heapq.heappush(self._timers, (deadline, self._token, kind, key))

    def _cancel(self, kind: str, key: Any) -> None:
        self._armed.pop((kind, key), None)

    def _size_changed(self, n: int) -> None:
        """Size-dependent values, recomputed when the roster changes."""
        cfg = self.config
        self.n = n
        self._retransmit_limit = retransmit_limit(cfg, n)
        self._suspicion_low, self._suspicion_high = suspicion_bounds(cfg, n)
        self._k = expected_confirmations(cfg, n)
        self._sync_interval = push_pull_interval_for(cfg, n)
        self._dead_probe_interval = dead_probe_interval_for(cfg, n)

    def _forget(self, node: str) -> None:
        """Drop a member taken off the roster, and everything that refers to it."""
        del self._peers[node]
        self._others.remove(node)
        self._down.discard(node)
        self._queue.pop(node, None)
        self._doc_behind.discard(node)
        self._cancel("suspicion", node)
        if self._probe is not None and self._probe.target == node:
            self._acks.pop(self._probe.seq, None)
            self._cancel("probe-timeout", self._probe.seq)
            self._probe = None
        for seq in [s for s, h in self._acks.items() if node in h[1:]]:
            del self._acks[seq]
        self._stats["members_removed"] += 1
        self._events.append(Event("removed", node, None))

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _fire(self, now: float, kind: str, key: Any) -> None:
        if kind == "probe":
            self._probe_round(now)
        elif kind == "probe-timeout":
            self._indirect_probe(now, key)
        elif kind == "relay":
            handler = self._acks.get(key)
            if handler is not None and handler[4]:
                self._send(handler[1], {"t": NACK, "seq": handler[2]}, piggyback=False)
        elif kind == "ack-expiry":
            self._acks.pop(key, None)
        elif kind == "suspicion":
            self._suspicion_expired(key)
        elif kind == "gossip":
            self._gossip_round(now)
        elif kind == "sync":
            self._sync_round(now)
        elif kind == "dead-probe":
            self._dead_probe_round(now)
        else:  # pragma: no cover - a bug here, not the peer's
            raise AssertionError(kind)

    def _send(self, to: str, msg: dict, *, piggyback: bool = True) -> None:
        if piggyback:
            updates = self._piggyback(self._peers.get(to))
            if updates:
                msg["u"] = updates
            if self._doc_version is not None:
                msg["dv"] = self._doc_version
        self._stats[_SENT[msg["t"]]] += 1
        self._msgs.append((to, msg))

    def _random_members(self, k: int, exclude: str | None, usable) -> list[str]:
        """Up to k distinct random peers for which ``usable(peer)`` holds (memberlist
        kRandomNodes: at most 3n draws, so small clusters are searched exhaustively)."""
        others, peers, rng = self._others, self._peers, self._rng
        n = len(others)
        picked: list[str] = []
        for _ in range(3 * n):
            if len(picked) >= k:
                break
            node = others[rng.randrange(n)]
            if node == exclude or node in picked or not usable(peers[node]):
                continue
            picked.append(node)
        return picked

    # --- handlers of messages ---------------------------------------------------------------

    def _on_ping(self, now: float, sender: str, msg: dict) -> None:
        # Updates first: if the ping says we are suspect, the refutation is then the
        # freshest update in the queue and rides on this very ack.
        self._apply_updates(sender, msg.get("u"))
        if msg["to"] != self.id:
            self._stats["misaddressed"] += 1
            return
        self._send(sender, {"t": ACK, "seq": msg["seq"]})

    def _on_ping_req(self, now: float, sender: str, msg: dict) -> None:
        self._apply_updates(sender, msg.get("u"))
        target = msg["to"]
        if target == self.id:
            self._send(sender, {"t": ACK, "seq": msg["seq"]})
            return
        if target not in self._peers:
            return
        seq = self._next_seq()
        self._acks[seq] = ("relay", sender, msg["seq"], target, bool(msg.get("nack")))
        self._send(target, {"t": PING, "seq": seq, "to": target})
        # Lifeguard: nack at 80% of the timeout, so that the nack reaches the requester
        # before its own period ends; a late ack is still relayed until the full timeout.
        self._arm("relay", seq, now + NACK_FRACTION * self.config.probe_timeout)
        self._arm("ack-expiry", seq, now + self.config.probe_timeout)

    def _on_ack(self, now: float, sender: str, msg: dict) -> None:
        self._apply_updates(sender, msg.get("u"))
        seq = msg["seq"]
        handler = self._acks.get(seq)
        if handler is None:
            return                                    # late: the period is over
        what = handler[0]
        if what == "probe":
            p = self._probe
            if p is None or p.seq != seq or (sender != p.target and sender not in p.relays):
                return
            del self._acks[seq]
            self._cancel("probe-timeout", seq)
            self._probe = None
            self._adjust_awareness(-1)
        elif what == "relay":
            if sender != handler[3]:
                return
            del self._acks[seq]
            self._cancel("relay", seq)
            self._cancel("ack-expiry", seq)
            self._send(handler[1], {"t": ACK, "seq": handler[2]})
        elif what == "dead-probe":
            if sender != handler[1]:
                return
            del self._acks[seq]
            self._cancel("ack-expiry", seq)
            # A member we hold dead answers: a partition has healed or it restarted. Its
            # ack carried its refutation; a full-state exchange brings the rest of its
            # side's news across at once.
            self._stats["dead_probe_answers"] += 1
            self._send_sync(sender, reply=False)

    def _on_nack(self, now: float, sender: str, msg: dict) -> None:
        p = self._probe
        if p is not None and p.seq == msg["seq"] and sender in p.relays:
            p.nacks.add(sender)

    def _on_gossip(self, now: float, sender: str, msg: dict) -> None:
        self._apply_updates(sender, msg.get("u"))

    def _on_sync(self, now: float, sender: str, msg: dict) -> None:
        for node, state, inc in msg["members"]:
            self._apply_member(SYNC_MERGE_AS[state], node, inc, sender)
        doc = msg.get("doc")
        if doc is not None:
            self._apply_doc(doc[0], doc[1])
        if not msg["reply"]:
            # Merged first, so the reply already carries any refutation of ours.
            self._send_sync(sender, reply=True)

    # --- state changes ----------------------------------------------------------------------

    def _apply_updates(self, sender: str, updates: list | None) -> None:
        if not updates:
            return
        for u in updates:
            k = u["k"]
            if k == DOC:
                self._apply_doc(u["v"], u["d"])
            else:
                self._apply_member(k, u["n"], u["i"], u.get("f", sender))

    def _apply_member(self, kind: str, node: str, inc: int, origin: str) -> None:
        """Apply one claim about a member, following PEER_TRANSITIONS (or SELF_REFUTES)."""
        if node == self.id:
            self._about_self(kind, inc)
            return
        peer = self._peers.get(node)
        if peer is None:
            self._stats["updates_about_strangers"] += 1
            return
        when, nxt = PEER_TRANSITIONS[(peer.state, kind)]
        if when == NEVER or inc < peer.incarnation or (when == NEWER and inc == peer.incarnation):
            return
        if peer.state == SUSPECT and nxt == SUSPECT:
            # Lifeguard confirmation: same suspicion, maybe a shorter timer.
            if inc > peer.incarnation:
                peer.incarnation = inc
                self._events.append(Event("incarnation", node, inc))
            if peer.suspicion.confirm(origin):
                self._arm("suspicion", node, peer.suspicion.deadline)
                # Re-spread it: others' timers shrink too (memberlist does the same).
                self._enqueue(node, {"k": SUSPECT, "n": node, "i": inc, "f": origin})
            return
        old = peer.state
        peer.incarnation = inc
        if nxt != old:
            peer.state, peer.since = nxt, self._now
            self._events.append(Event(nxt, node, inc, origin if nxt == SUSPECT else None))
            if nxt == SUSPECT:
                if origin == self.id:
                    self._stats["suspicions_raised"] += 1
                peer.suspicion = Suspicion(self._now, origin, self._k,
                                           self._suspicion_low, self._suspicion_high)
                self._arm("suspicion", node, peer.suspicion.deadline)
            elif old == SUSPECT:
                peer.suspicion = None
                self._cancel("suspicion", node)
            if nxt in (DEAD, LEFT):
                self._down.add(node)
            elif old in (DEAD, LEFT):
                self._down.discard(node)
        else:
            self._events.append(Event("incarnation", node, inc))
        self._enqueue(node, _claim(nxt, node, inc, origin))

    def _about_self(self, kind: str, inc: int) -> None:
        when = SELF_REFUTES[kind]
        if inc < self._incarnation or (when == NEWER and inc == self._incarnation):
            return
        if self._state == LEFT:
            return                       # leaving: let the news of it stand
        self._incarnation = inc + 1
        self._stats["refutations"] += 1
        if kind != ALIVE:
            # Lifeguard: being suspected hints that we are the slow one.
            self._adjust_awareness(1)
        self._events.append(Event("refuted", self.id, self._incarnation, kind))
        self._broadcast_self()

    def _broadcast_self(self) -> None:
        self._enqueue(self.id, {"k": ALIVE, "n": self.id, "i": self._incarnation})

    def _apply_doc(self, version: int, value: Any, checked: bool = False) -> None:
        if self._doc_version is not None and version <= self._doc_version:
            return
        if not checked and self._document_check is not None and \
                not self._document_check(version, value):
            # Forged, or otherwise not acceptable to the caller: not adopted, not spread.
            self._stats["documents_refused"] += 1
            self._events.append(Event("document_refused", None, None, version))
            return
        self._doc_version, self._doc_value = version, value
        self._events.append(Event("document", None, None, version))
        self._enqueue(_DOC_KEY, {"k": DOC, "v": version, "d": value})

_HANDLERS = {PING: Membership._on_ping, ACK: Membership._on_ack,
             PING_REQ: Membership._on_ping_req, NACK: Membership._on_nack,
             GOSSIP: Membership._on_gossip, SYNC: Membership._on_sync}


