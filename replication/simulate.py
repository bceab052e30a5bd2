"""An in-process, deterministic simulator of the SWIM membership protocol.

The ``Membership`` class the daemon's transport is to drive runs here on a virtual clock
and a lossy fake network: one heap of timed events (message deliveries, node wake-ups and
scheduled actions), a seeded RNG for latency and loss, and nothing else. Same seed, same
config, same calls → the same run, event for event. Measured on the project's machines:
~1,600 simulated seconds per wall second at 10 nodes, ~120 at 100, ~5 at 1,000 (~2.5 at
1,000 with 5% loss, where refutations keep gossip busy); ~30–50k messages per wall second.

Two layers:

- ``Simulator``: the cluster (``kill``, ``revive``, ``partition``, ``heal``, ``publish``,
  ``run_until``) with listeners that see every event every node emits;
- scenarios: ``run_cell`` measures detection time after kills, false suspicions and
  false deaths during a steady period, and how fast a new cluster document reaches
  everyone; ``bench/swim.py`` prints them beside the published formulas.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgpack

from .swim import ALIVE, DEAD, LEFT, SUSPECT, Event, Membership, Output
from .swim_config import SwimConfig, suspicion_bounds

_DELIVER, _WAKE, _CALL = 0, 1, 2
INF = math.inf

Listener = Callable[[float, str, Event], None]


class Simulator:
    """N ``Membership`` nodes on a fake network with a virtual clock.

    ``loss``: the probability that any one message is dropped (independently).
    ``latency``: (low, high) seconds, uniform, per message. ``roundtrip``: pass every
    message through msgpack, as the real transport would (slower; proves the messages are
    msgpack-ready). Node ids are ``n0000`` … in roster order.

    A killed node neither sends, receives nor ticks; messages to it are lost. A revived
    node is a fresh ``Membership`` (incarnation 0, a restart without saved state) that
    joins: the cluster tells it it was dead and it refutes.
    """

    def __init__(self, n: int, *, loss: float = 0.0, seed: int = 0,
                 config: SwimConfig | None = None, latency: tuple[float, float] = (0.0005, 0.005),
                 roundtrip: bool = False):
        if n < 2:
            raise ValueError("a cluster needs at least two nodes")
        self.config = config or SwimConfig.lan()
        self.ids = [f"n{i:04d}" for i in range(n)]
        self.index = {node: i for i, node in enumerate(self.ids)}
        self.loss = loss
        self.seed = seed
        self.rng = random.Random(seed)
        self.latency = latency
        self.roundtrip = roundtrip
        self.now = 0.0
        self.up = [True] * n
        self.group: list[int] | None = None
        self.listeners: list[Listener] = []
        self.counters = {"delivered": 0, "lost": 0, "to_down": 0, "partitioned": 0,
                         "wakeups": 0}
        self._heap: list[tuple] = []
        self._seq = itertools.count()
        self._wake_at = [INF] * n
        self._lives = [0] * n
        self.nodes: list[Membership] = [self._new_node(i) for i in range(n)]
        for i, node in enumerate(self.nodes):
            self._handle(i, node.start(0.0, join=False))

    def _new_node(self, i: int) -> Membership:
        # One RNG per node and life, derived from the seed: reproducible, independent.
        rng = random.Random((self.seed * 1_000_003 + i) * 7919 + self._lives[i])
        return Membership(self.ids[i], self.ids, self.config, rng)

    # --- driving ----------------------------------------------------------------------------

    def run_until(self, t_end: float) -> None:
        """Process every event up to and including ``t_end``; then ``now == t_end``."""
        heap, nodes, up, wake_at = self._heap, self.nodes, self.up, self._wake_at
        pop = heapq.heappop
        while heap and heap[0][0] <= t_end:
            t, _, kind, i, sender, msg = pop(heap)
            self.now = t
            if kind == _DELIVER:
                if not up[i]:
                    self.counters["to_down"] += 1
                    continue
                self.counters["delivered"] += 1
                self._handle(i, nodes[i].receive(t, sender, msg))
            elif kind == _WAKE:
                if wake_at[i] != t:
                    continue            # superseded by an earlier wake-up
                wake_at[i] = INF
                if up[i]:
                    self.counters["wakeups"] += 1
                    self._handle(i, nodes[i].tick(t))
            else:
                msg()                   # a scheduled action (see at())
        self.now = max(self.now, t_end)

    def at(self, t: float, action: Callable[[], None]) -> None:
        """Run ``action()`` when the clock reaches ``t`` (in ``run_until``)."""
        heapq.heappush(self._heap, (max(t, self.now), next(self._seq), _CALL, -1, None, action))

    def _handle(self, i: int, out: Output) -> None:
        now = self.now
        for to, msg in out.messages:
            self._transmit(i, to, msg)
        if out.events and self.listeners:
            me = self.ids[i]
            for ev in out.events:
                for listener in self.listeners:
                    listener(now, me, ev)
        d = self.nodes[i].next_deadline()
        if d is not None and d < self._wake_at[i]:
            d = max(d, now)
            self._wake_at[i] = d
            heapq.heappush(self._heap, (d, next(self._seq), _WAKE, i, None, None))

    def _transmit(self, i: int, to: str, msg: dict) -> None:
        j = self.index[to]
        if not self.up[j]:
            self.counters["to_down"] += 1
            return
        if self.group is not None and self.group[i] != self.group[j]:
            self.counters["partitioned"] += 1
            return
        rng = self.rng
        if self.loss and rng.random() < self.loss:
            self.counters["lost"] += 1
            return
        if self.roundtrip:
            msg = msgpack.unpackb(msgpack.packb(msg), raw=False)
        lo, hi = self.latency
        heapq.heappush(self._heap, (self.now + lo + rng.random() * (hi - lo), next(self._seq),
                                    _DELIVER, j, self.ids[i], msg))

    # --- what a test or scenario does to the cluster ----------------------------------------

    def kill(self, node: str) -> None:
        """Crash ``node`` now: it stops at once, its timers and inbox with it."""
        self.up[self.index[node]] = False

    def revive(self, node: str) -> None:
        """Restart ``node`` now as a fresh member (incarnation 0) that joins the cluster."""
        i = self.index[node]
        self._lives[i] += 1
        self.up[i] = True
        self._wake_at[i] = INF
        self.nodes[i] = self._new_node(i)
        self._handle(i, self.nodes[i].start(self.now, join=True))

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Drop every message between nodes of different groups (nodes in no group form
        one more group) until ``heal()``."""
        group = [-1] * len(self.ids)
        for g, members in enumerate(groups):
            for node in members:
                group[self.index[node]] = g
        self.group = group

    def heal(self) -> None:
        self.group = None

    def publish(self, node: str, version: int, value) -> None:
        """``node`` publishes a new cluster document now."""
        i = self.index[node]
        self._handle(i, self.nodes[i].publish_document(self.now, version, value))

    # --- reading the cluster ----------------------------------------------------------------

    def live(self) -> list[str]:
        return [node for node, up in zip(self.ids, self.up) if up]

    def view(self, observer: str, target: str) -> str:
        """How ``observer`` currently sees ``target`` (alive/suspect/dead/left)."""
        return self.nodes[self.index[observer]].member(target).state

    def converged(self) -> bool:
        """Every live node sees every live node alive and every down node dead or left."""
        live = set(self.live())
        for obs in live:
            view = self.nodes[self.index[obs]].members()
            for node, info in view.items():
                ok = info.state == ALIVE if node in live else info.state in (DEAD, LEFT)
                if not ok:
                    return False
        return True


# --- measurements -----------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100.0 * len(s)) - 1))]


class Tracker:
    """Listens to a Simulator and measures what the issue asks for.

    - ``kill_and_track(node)``: kills it and records when the first node suspected it,
      and when each live node (and finally every one) saw it dead;
    - ``publish_and_track(node, version)``: records when every live node holds a document
      of that version or newer;
    - between ``open_window()`` and ``close_window()``: suspicions raised by a node's own
      probe (``suspect`` events whose origin is the observer) of a member that is up and
      was never killed — false suspicions, per node-hour of window;
    - at any time: ``dead`` events about a member that is up and was never killed — false
      deaths (one per observer that declared it).
    """

    def __init__(self, sim: Simulator):
        self.sim = sim
        self.kills: list[dict] = []
        self._pending_kills: dict[str, dict] = {}
        self.docs: list[dict] = []
        self._pending_docs: list[dict] = []
        self.ever_killed: set[str] = set()
        self.window_open = False
        self.window_time = 0.0
        self._window_start = 0.0
        self.false_suspicions = 0
        self.false_deaths: list[tuple[float, str, str]] = []
        self.refutations = 0
        self.on_all_dead: Callable[[str], None] | None = None
        sim.listeners.append(self._listen)

    def _listen(self, t: float, observer: str, ev: Event) -> None:
        kind = ev.kind
        if kind == SUSPECT:
            k = self._pending_kills.get(ev.node)
            if k is not None and k["first_suspect"] is None:
                k["first_suspect"] = t - k["t0"]
            if (self.window_open and ev.data == observer and ev.node not in self.ever_killed):
                self.false_suspicions += 1
        elif kind in (DEAD, LEFT):
            k = self._pending_kills.get(ev.node)
            if k is not None and observer in k["waiting"]:
                k["waiting"].discard(observer)
                k["per_observer"].append(t - k["t0"])
                if not k["waiting"]:
                    self._kill_done(ev.node, t)
            # A false death counts whenever it happens, kills or not.
            if (kind == DEAD and ev.node not in self.ever_killed
                    and self.sim.up[self.sim.index[ev.node]]):
                self.false_deaths.append((t, observer, ev.node))
        elif kind == "refuted":
            if self.window_open:
                self.refutations += 1
        elif kind == "document":
            for d in self._pending_docs:
                if ev.data >= d["version"] and observer in d["waiting"]:
                    d["waiting"].discard(observer)
                    if not d["waiting"]:
                        d["time"] = t - d["t0"]
            self._pending_docs = [d for d in self._pending_docs if d["waiting"]]

    def _kill_done(self, node: str, t: float) -> None:
        k = self._pending_kills.pop(node)
        k["all_dead"] = t - k["t0"]
        if self.on_all_dead is not None:
            self.on_all_dead(node)

    def kill_and_track(self, node: str) -> None:
        sim = self.sim
        sim.kill(node)
        self.ever_killed.add(node)
        # Observers that already hold it dead (a previous life) count at once.
        waiting = {o for o in sim.live() if sim.view(o, node) not in (DEAD, LEFT)}
        k = {"node": node, "t0": sim.now, "first_suspect": None, "all_dead": None,
             "waiting": waiting, "per_observer": []}
        self.kills.append(k)
        self._pending_kills[node] = k
        # Observers that die meanwhile are no longer waited for.
        for other in list(self._pending_kills.values()):
            if node in other["waiting"]:
                other["waiting"].discard(node)
                if not other["waiting"]:
                    self._kill_done(other["node"], sim.now)
        for d in self._pending_docs:
            d["waiting"].discard(node)
            if not d["waiting"] and d["time"] is None:
                d["time"] = sim.now - d["t0"]
        self._pending_docs = [d for d in self._pending_docs if d["waiting"]]
        if not waiting:
            self._kill_done(node, sim.now)

    def publish_and_track(self, node: str, version: int, value=None) -> None:
        sim = self.sim
        d = {"version": version, "t0": sim.now, "time": None,
             "waiting": set(sim.live()) - {node}}
        self.docs.append(d)
        if d["waiting"]:
            self._pending_docs.append(d)
        else:
            d["time"] = 0.0
        sim.publish(node, version, value if value is not None else {"version": version})

    def open_window(self) -> None:
        self.window_open, self._window_start = True, self.sim.now

    def close_window(self) -> None:
        self.window_open = False
        self.window_time += self.sim.now - self._window_start

    @property
    def pending_kills(self) -> int:
        return len(self._pending_kills)


@dataclass
class CellResult:
    """One (cluster size, loss) cell of the table. Times in simulated seconds."""

    n: int
    loss: float
    detect_all: list[float] = field(default_factory=list)      # per kill: every node knows
    detect_observer: list[float] = field(default_factory=list)  # per (kill, observer)
    first_suspect: list[float] = field(default_factory=list)    # per kill
    undetected: int = 0
    false_suspicions: int = 0
    false_deaths: int = 0
    refutations: int = 0
    node_hours: float = 0.0
    doc_times: list[float] = field(default_factory=list)
    doc_unconverged: int = 0
    messages: int = 0
    sim_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def false_suspicions_per_node_hour(self) -> float:
        return self.false_suspicions / self.node_hours if self.node_hours else math.nan

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["false_suspicions_per_node_hour"] = self.false_suspicions_per_node_hour
        return d


def run_cell(n: int, loss: float, *, seed: int = 1, config: SwimConfig | None = None,
             warmup: float = 5.0, steady: float = 60.0, doc_every: float = 10.0,
             kills: int = 5, kill_spacing: float = 5.0, revive_after: float | None = 2.0,
             detect_cap: float | None = None) -> CellResult:
    """Measure one cell: warm up; a steady period with no failures (false suspicions
    counted; a new document published every ``doc_every`` s, its convergence
    timed); then ``kills`` crashes ``kill_spacing`` s apart, each timed until every live
    node holds the victim dead (giving up ``detect_cap`` s after the last kill; default
    the maximum suspicion timeout + 30 s). Victims are revived ``revive_after`` s after
    everyone saw them dead (None: never), so small clusters do not run out of nodes.
    False deaths (of members never killed) are counted over the whole run."""
    config = config or SwimConfig.lan()
    wall0 = time.perf_counter()
    sim = Simulator(n, loss=loss, seed=seed, config=config)
    tr = Tracker(sim)
    rng = random.Random(seed ^ 0x5EED)
    res = CellResult(n=n, loss=loss)

    sim.run_until(warmup)
    tr.open_window()
    version = 0
    t = warmup
    end = warmup + steady
    while t + doc_every <= end + 1e-9:
        version += 1
        tr.publish_and_track(rng.choice(sim.live()), version)
        t += doc_every
        sim.run_until(t)
    sim.run_until(end)
    tr.close_window()

    if revive_after is not None:
        def revive_later(node: str) -> None:
            def revive() -> None:
                if not sim.up[sim.index[node]]:
                    sim.revive(node)
            sim.at(sim.now + revive_after, revive)
        tr.on_all_dead = revive_later
    cap = detect_cap if detect_cap is not None else suspicion_bounds(config, n)[1] + 30.0
    candidates = list(sim.ids)
    rng.shuffle(candidates)
    for j in range(kills):
        # A victim that is up and not already being tracked.
        victim = next((c for c in candidates if sim.up[sim.index[c]]
                       and c not in tr._pending_kills), None)
        if victim is None:
            break
        candidates.remove(victim)
        candidates.append(victim)
        tr.kill_and_track(victim)
        sim.run_until(sim.now + kill_spacing)
    deadline = sim.now + cap
    while tr.pending_kills and sim.now < deadline:
        sim.run_until(min(deadline, sim.now + 1.0))

    for k in tr.kills:
        if k["all_dead"] is None:
            res.undetected += 1
        else:
            res.detect_all.append(k["all_dead"])
        res.detect_observer.extend(k["per_observer"])
        if k["first_suspect"] is not None:
            res.first_suspect.append(k["first_suspect"])
    res.false_suspicions = tr.false_suspicions
    res.false_deaths = len(tr.false_deaths)
    res.refutations = tr.refutations
    res.node_hours = n * tr.window_time / 3600.0
    for d in tr.docs:
        if d["time"] is None:
            res.doc_unconverged += 1
        else:
            res.doc_times.append(d["time"])
    res.messages = sim.counters["delivered"]
    res.sim_seconds = sim.now
    res.wall_seconds = time.perf_counter() - wall0
    return res
