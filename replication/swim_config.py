"""Every parameter of the SWIM membership protocol, in one place, with the formulas.

``SwimConfig.lan()`` is memberlist's ``DefaultLANConfig`` (hashicorp/memberlist
``config.go``) with these differences: dead roster members are still probed
(``dead_probe_interval``); Lifeguard's K is 3 rather than memberlist's 2; a message carries
at most ``max_piggyback`` updates rather than what fits a UDP packet; the full-state
exchange and the gossip also carry the cluster document. The functions below the class are memberlist's ``util.go`` / ``suspicion.go`` formulas; the
protocol (``swim.py``), the simulator and the benchmark all call these, so a table printed
by ``python -m bench.swim`` and the daemon's behaviour cannot drift apart.

Times are seconds (floats): the protocol never reads a clock, the caller passes ``now``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class SwimConfig:
    """Protocol parameters. Frozen: one config is shared by every node of a simulation.

    Values that depend on the cluster size ``n`` (the roster size) are not stored here but
    computed by the functions below, so a roster change needs no new config.
    """

    # --- failure detection (SWIM §3) -------------------------------------------------------
    # One probe per period: ping a member (round-robin over a shuffled list, which gives
    # SWIM's time-bounded completeness: every live member is probed within 2n-1 periods).
    probe_interval: float = 1.0
    # No ack within this time → ask `indirect_checks` others to ping the target for us. On a
    # LAN an RTT is ~1 ms; 500 ms leaves room for a busy event loop on the far side.
    probe_timeout: float = 0.5
    # How many members relay an indirect ping (SWIM's k). Each relay sends a nack if the
    # target does not answer it either (Lifeguard), which tells *us* whether we are the
    # slow one.
    indirect_checks: int = 3

    # --- suspicion (SWIM §4.2 + Lifeguard "dynamic suspicion timeout") ---------------------
    # A suspected member is declared dead after a timeout between
    #   min = suspicion_mult × max(1, log10 n) × probe_interval
    #   max = suspicion_max_timeout_mult × min
    # starting at max and shrinking towards min as independent confirmations arrive
    # (see suspicion_timeout()). Larger clusters get longer timeouts because news of the
    # suspicion takes ~log n periods to reach the suspect, which must have time to refute.
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    # Lifeguard's K: confirmations that drive the timer to its minimum. memberlist derives
    # it as suspicion_mult - 2 (= 2); we take the number of indirect checks (3), i.e. as
    # many independent witnesses as one probe consulted. Clusters with fewer than K + 2
    # members cannot supply K independent witnesses: they use the minimum straight away.
    suspicion_confirmations: int = 3

    # --- Lifeguard local health awareness ---------------------------------------------------
    # A node that fails probes while its relays did not even nack is probably the slow one:
    # its probe interval and timeout are multiplied by (score + 1), score in
    # [0, awareness_max_multiplier - 1]. Success lowers the score by one.
    awareness_max_multiplier: int = 8

    # --- dissemination (infection-style gossip, piggybacked) -------------------------------
    # Besides riding on pings and acks, pending updates are pushed to `gossip_nodes` random
    # members every `gossip_interval` -- only while something is pending.
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    # Members declared dead within this time still receive gossip, so that a wrongly
    # declared node hears of it and refutes quickly.
    gossip_to_the_dead_time: float = 30.0
    # Each update is sent retransmit_mult × ceil(log10(n + 1)) times, then dropped
    # (retransmit_limit()). 4 gives a vanishing chance that a member misses it.
    retransmit_mult: int = 4
    # Updates per message (memberlist fills a 1400-byte UDP packet; ours go over HTTP, the
    # bound keeps a message small and the selection cheap). Least-sent updates go first.
    max_piggyback: int = 16

    # --- anti-entropy ------------------------------------------------------------------------
    # Full-state exchange (push-pull) with one random live member: repairs whatever gossip
    # missed, carries the cluster document. Scaled up above 32 members (push_pull_interval_for).
    push_pull_interval: float = 30.0
    # Dead and left roster members are still pinged, one per interval, chosen at random, so
    # that both sides of a healed partition find each other again (memberlist forgets dead
    # nodes; our roster is a signed document and never forgets). Scaled like push-pull, so a
    # dead member receives ~n / interval pings per second cluster-wide, not n per second.
    dead_probe_interval: float = 10.0

    @classmethod
    def lan(cls) -> SwimConfig:
        """memberlist's LAN preset (probe 1 s, timeout 500 ms, 3 indirect probes,
        suspicion 4 × max(1, log10 n) s up to 6× that, gossip 3 nodes / 200 ms,
        retransmit 4 × ceil(log10(n + 1)), push-pull 30 s)."""
        return cls()

    def with_(self, **changes) -> SwimConfig:
        """A copy with some fields changed (validated like the original)."""
        return replace(self, **changes)

    def __post_init__(self):
        # Misuse fails loudly, at construction, not as a strange cluster later.
        if not 0 < self.probe_timeout < self.probe_interval:
            raise ValueError("need 0 < probe_timeout < probe_interval")
        for name in ("indirect_checks", "suspicion_confirmations"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("suspicion_mult", "suspicion_max_timeout_mult", "awareness_max_multiplier",
                     "gossip_nodes", "retransmit_mult", "max_piggyback"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("gossip_interval", "push_pull_interval", "dead_probe_interval",
                     "gossip_to_the_dead_time"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")


# --- the formulas (memberlist util.go, suspicion.go) ----------------------------------------

PUSH_PULL_SCALE_THRESHOLD = 32


def node_scale(n: int) -> float:
    """max(1, log10 n): how much slower than a 10-node cluster news reaches everyone."""
    return max(1.0, math.log10(max(1, n)))


def suspicion_bounds(config: SwimConfig, n: int) -> tuple[float, float]:
    """(min, max) suspicion timeout in seconds for a cluster of ``n`` members."""
    low = config.suspicion_mult * node_scale(n) * config.probe_interval
    return low, config.suspicion_max_timeout_mult * low


def expected_confirmations(config: SwimConfig, n: int) -> int:
    """Lifeguard's K for ``n`` members: 0 when there are not K others besides the suspect
    and the suspecting node (then the timeout is the minimum from the start)."""
    k = config.suspicion_confirmations
    return 0 if n - 2 < k else k


def suspicion_timeout(config: SwimConfig, n: int, confirmations: int) -> float:
    """Total suspicion time (from its start) after ``confirmations`` independent ones.

    max - (max - min) × log(c + 1) / log(K + 1), never below min (memberlist
    ``remainingSuspicionTime``). Each confirmation halves-ish the distance to min, the
    first one most: 72 s → 42 s → 24.5 s → 12 s at 1,000 nodes with K = 3.
    """
    low, high = suspicion_bounds(config, n)
    k = expected_confirmations(config, n)
    if k < 1:
        return low
    frac = math.log(confirmations + 1.0) / math.log(k + 1.0)
    return max(low, high - frac * (high - low))


def retransmit_limit(config: SwimConfig, n: int) -> int:
    """How many times each update is piggybacked: mult × ceil(log10(n + 1))."""
    return config.retransmit_mult * int(math.ceil(math.log10(n + 1)))


def interval_scale(n: int) -> float:
    """memberlist ``pushPullScale``: 1 up to 32 members, then +1 per doubling."""
    if n <= PUSH_PULL_SCALE_THRESHOLD:
        return 1.0
    return math.ceil(math.log2(n) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1.0


def push_pull_interval_for(config: SwimConfig, n: int) -> float:
    """Seconds between full-state exchanges of one node (30 s up to 32 nodes, 180 s at 1,000)."""
    return config.push_pull_interval * interval_scale(n)


def dead_probe_interval_for(config: SwimConfig, n: int) -> float:
    """Seconds between two pings of a dead or left member by one node."""
    return config.dead_probe_interval * interval_scale(n)


# --- what the literature predicts (printed beside the simulator's figures) -------------------

def swim_first_detection_periods() -> float:
    """SWIM paper §3.1: with every member probing one random member per period, the expected
    number of periods until *some* member probes a failed one is 1 / (1 - e^-1) = e/(e-1)."""
    return math.e / (math.e - 1.0)


def swim_false_positive_per_probe(loss: float, k: int) -> float:
    """SWIM paper §3.1: a probe of a healthy member fails when the direct ping or ack is lost
    and each of the k indirect paths (4 messages) loses one: (1-(1-p)^2)·(1-(1-p)^4)^k."""
    ok = 1.0 - loss
    return (1.0 - ok ** 2) * (1.0 - ok ** 4) ** k


def gossip_rounds(n: int, fanout: int) -> float:
    """Rounds for push gossip with ``fanout`` targets to reach n members, to first order:
    log(n) / log(1 + fanout) (each round multiplies the informed set by ~1 + fanout)."""
    return math.log(max(2, n)) / math.log(1.0 + fanout)


def detection_bound(config: SwimConfig, n: int) -> float:
    """A generous upper bound on the time until every live member holds a crashed member
    dead, with no help from confirmations and a healthy awareness score:

    - (2n - 3) periods: SWIM's time-bounded completeness -- round-robin guarantees that any
      one live member probes the victim within that many periods, whoever comes first;
    - + 1 period for the probe (and its indirect probes) to end in a suspicion;
    - + the maximum suspicion timeout (nobody confirmed);
    - + retransmit_limit gossip intervals ×2, for the ``dead`` news to reach everyone.
    """
    periods = 2 * n - 3 + 1
    return (periods * config.probe_interval + suspicion_bounds(config, n)[1]
            + 2 * retransmit_limit(config, n) * config.gossip_interval)
