"""SWIM's failure detector, one half of ``Membership`` (see ``swim.py``): the protocol
period's probe, indirect probes through others, Lifeguard's local health awareness, the
dead members' probes, and a suspicion that expires. A mixin: it works on the state
``Membership`` keeps, and is never used alone."""

from __future__ import annotations

from .swim_messages import ALIVE, DEAD, PING, PING_REQ, SUSPECT, _Probe


class Probing:
    def _scale(self) -> int:
        return self._awareness + 1

    def _adjust_awareness(self, delta: int) -> None:
        self._awareness = min(max(self._awareness + delta, 0),
                              self.config.awareness_max_multiplier - 1)

    def _probe_round(self, now: float) -> None:
        cfg = self.config
        self._finish_probe()
        self._arm("probe", None, now + cfg.probe_interval * self._scale())
        target = self._next_probe_target()
        if target is None:
            return
        seq = self._next_seq()
        self._probe = _Probe(seq, target)
        self._acks[seq] = ("probe", target)
        self._send(target, {"t": PING, "seq": seq, "to": target})
        self._arm("probe-timeout", seq, now + cfg.probe_timeout * self._scale())

    def _next_probe_target(self) -> str | None:
        # Round-robin over a shuffled list, reshuffled each pass (SWIM §4.3): every live
        # member is probed within two passes, not just "eventually" as with random picks.
        peers = self._peers
        for _ in range(len(self._others) + 1):
            if self._probe_index >= len(self._probe_order):
                self._probe_order = list(self._others)
                self._rng.shuffle(self._probe_order)
                self._probe_index = 0
                if not self._probe_order:
                    return None
            node = self._probe_order[self._probe_index]
            self._probe_index += 1
            if peers[node].state in (ALIVE, SUSPECT):
                return node
        return None

    def _indirect_probe(self, now: float, seq: int) -> None:
        p = self._probe
        if p is None or p.seq != seq:
            return
        relays = self._random_members(self.config.indirect_checks, p.target,
                                      lambda peer: peer.state == ALIVE)
        p.relays = tuple(relays)
        for r in relays:
            self._send(r, {"t": PING_REQ, "seq": seq, "to": p.target, "nack": True})

    def _finish_probe(self) -> None:
        """End of a protocol period: a probe still unanswered has failed."""
        p, self._probe = self._probe, None
        if p is None:
            return
        self._acks.pop(p.seq, None)
        self._cancel("probe-timeout", p.seq)
        # Lifeguard: relays that did not even nack point at *us* (our network, our event
        # loop); with no relays to ask, every failed probe counts against us.
        self._adjust_awareness(len(p.relays) - len(p.nacks) if p.relays else 1)
        peer = self._peers.get(p.target)
        if peer is not None and peer.state in (ALIVE, SUSPECT):
            self._stats["probes_failed"] += 1
            self._apply_member(SUSPECT, p.target, peer.incarnation, self.id)

    def _dead_probe_round(self, now: float) -> None:
        self._arm("dead-probe", None, now + self._dead_probe_interval)
        down = self._down.items
        if not down:
            return
        target = down[self._rng.randrange(len(down))]
        seq = self._next_seq()
        self._acks[seq] = ("dead-probe", target)
        # _send prefixes "you are dead at i": the member refutes in its ack.
        self._send(target, {"t": PING, "seq": seq, "to": target})
        self._arm("ack-expiry", seq, now + self.config.probe_interval)
        self._stats["dead_probes"] += 1

    def _suspicion_expired(self, node: str) -> None:
        peer = self._peers.get(node)
        if peer is not None and peer.state == SUSPECT:
            self._apply_member(DEAD, node, peer.incarnation, self.id)
