"""SWIM's dissemination, the other half of ``Membership`` (see ``swim.py``): updates queued
per member, piggybacked least-sent first and dropped after ``retransmit_limit`` sends;
gossip rounds while something is pending; the full-state exchange. A mixin over the state
``Membership`` keeps, never used alone."""

from __future__ import annotations

import heapq

from .swim_messages import ALIVE, DEAD, DOC, GOSSIP, SUSPECT, SYNC, _Peer


class Dissemination:
    def _enqueue(self, key: str, update: dict) -> None:
        self._order += 1
        self._queue[key] = [0, self._order, update]
        if ("gossip", None) not in self._armed:
            self._arm("gossip", None, self._now + self.config.gossip_interval)

    def _piggyback(self, to: _Peer | None) -> list[dict]:
        """Updates for one message: the least-sent first (newest among equals), each
        counted as one transmission and dropped after ``retransmit_limit``."""
        out: list[dict] = []
        if to is not None and to.state != ALIVE:
            # Lifeguard's "buddy system", extended to the dead: tell the member how we see
            # it, first, so it can refute at once. Not counted as a transmission.
            out.append(_claim(to.state, to.node, to.incarnation, self.id))
        if to is not None and to.node in self._doc_behind:
            # Its last message showed an older document version: bring it up to date
            # (not counted; gossip's tail, where a member missed every copy, ends here).
            self._doc_behind.discard(to.node)
            out.append({"k": DOC, "v": self._doc_version, "d": self._doc_value})
        q = self._queue
        if not q:
            return out
        cap = self.config.max_piggyback
        if len(q) <= cap:
            chosen = list(q.items())
        else:
            chosen = heapq.nsmallest(cap, q.items(), key=lambda kv: (kv[1][0], -kv[1][1]))
        limit = self._retransmit_limit
        for key, entry in chosen:
            out.append(entry[2])
            entry[0] += 1
            if entry[0] >= limit:
                del q[key]
        return out

    def _gossip_round(self, now: float) -> None:
        if not self._queue:
            return                  # re-armed by the next _enqueue
        dead_horizon = now - self.config.gossip_to_the_dead_time

        def usable(peer: _Peer) -> bool:
            return peer.state in (ALIVE, SUSPECT) or (
                peer.state == DEAD and peer.since >= dead_horizon)

        for target in self._random_members(self.config.gossip_nodes, None, usable):
            self._send(target, {"t": GOSSIP})
            if not self._queue:
                break
        if self._queue:
            self._arm("gossip", None, now + self.config.gossip_interval)

    def _sync_round(self, now: float) -> None:
        self._arm("sync", None, now + self._sync_interval)
        targets = self._random_members(1, None, lambda peer: peer.state == ALIVE)
        if targets:
            self._send_sync(targets[0], reply=False)

    def _send_sync(self, to: str, *, reply: bool) -> None:
        members = [[p.node, p.state, p.incarnation] for p in self._peers.values()]
        members.append([self.id, self._state, self._incarnation])
        doc = None if self._doc_version is None else [self._doc_version, self._doc_value]
        self._stats["syncs_sent"] += 1
        self._send(to, {"t": SYNC, "reply": reply, "members": members, "doc": doc},
                   piggyback=False)


def _claim(state: str, node: str, inc: int, origin: str) -> dict:
    if state == SUSPECT:
        return {"k": SUSPECT, "n": node, "i": inc, "f": origin}
    return {"k": state, "n": node, "i": inc}
