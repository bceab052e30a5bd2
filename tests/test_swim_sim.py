"""The SWIM protocol in the deterministic simulator, at 10–50 nodes: the Membership class
the daemon's transport is to drive, on a virtual clock and a lossy fake network. Small
clusters and short simulated periods keep the whole file to a few seconds."""

import statistics

import pytest

from artstored.replication.simulate import Simulator, Tracker, percentile, run_cell
from artstored.replication.swim import ALIVE, DEAD
from artstored.replication.swim_config import (SwimConfig, dead_probe_interval_for,
                                               detection_bound, suspicion_bounds)

LAN = SwimConfig.lan()


@pytest.mark.parametrize("n,loss", [(10, 0.0), (10, 0.05), (50, 0.0), (50, 0.05)])
def test_a_killed_node_is_detected_by_all_within_the_bound(n, loss):
    r = run_cell(n, loss, seed=3, steady=10.0, doc_every=10.0, kills=4, kill_spacing=8.0)
    assert r.undetected == 0 and len(r.detect_all) == 4
    assert max(r.detect_all) <= detection_bound(LAN, n)
    # Confirmations do their job: typically close to the minimum timeout, far from the max.
    low, high = suspicion_bounds(LAN, n)
    assert statistics.median(r.detect_all) < low + (high - low) / 2
    assert r.false_deaths == 0


def test_no_false_death_at_1pct_loss_over_minutes():
    r = run_cell(50, 0.01, seed=5, steady=240.0, doc_every=60.0, kills=0)
    assert r.node_hours == pytest.approx(50 * 240 / 3600)
    assert r.false_deaths == 0
    # SWIM's formula expects ~0.004 false suspicions per node-hour at 1% loss.
    assert r.false_suspicions <= 1


def test_false_suspicions_at_5pct_loss_are_refuted_not_fatal():
    r = run_cell(50, 0.05, seed=6, steady=240.0, doc_every=60.0, kills=0)
    assert r.false_deaths == 0
    assert r.refutations >= r.false_suspicions > 0    # every suspicion got refuted


@pytest.mark.parametrize("loss", [0.0, 0.05])
def test_a_partition_heals_after_it_ends(loss):
    n = 20
    sim = Simulator(n, loss=loss, seed=11)
    left, right = sim.ids[: n // 2], sim.ids[n // 2:]
    sim.run_until(5.0)
    assert sim.converged()
    sim.partition([left, right])
    sim.run_until(65.0)
    # Each side has declared the other dead, and kept its own side alive.
    assert all(sim.view(a, b) == DEAD for a in left for b in right)
    assert all(sim.view(b, a) == DEAD for a in left for b in right)
    assert all(sim.view(a, b) == ALIVE for a in left for b in left if a != b)
    sim.heal()
    healed_at = None
    while sim.now < 65.0 + 60.0:
        sim.run_until(sim.now + 1.0)
        if sim.converged():
            healed_at = sim.now
            break
    assert healed_at is not None, "the partition did not heal within 60 s"
    # Dead probes start it within one interval; refutations and gossip do the rest.
    assert healed_at - 65.0 <= dead_probe_interval_for(LAN, n) + suspicion_bounds(LAN, n)[1]
    # Everyone learned it had been declared dead, and refuted.
    assert all(node.incarnation >= 1 for node in sim.nodes)


def test_a_new_document_reaches_everyone():
    r = run_cell(50, 0.05, seed=8, steady=30.0, doc_every=5.0, kills=0)
    assert r.doc_unconverged == 0 and len(r.doc_times) == 6
    assert max(r.doc_times) < 5.0


def test_a_restarted_node_rejoins():
    sim = Simulator(10, seed=4)
    tr = Tracker(sim)
    sim.run_until(3.0)
    victim = sim.ids[3]
    tr.kill_and_track(victim)
    sim.run_until(40.0)
    assert tr.kills[0]["all_dead"] is not None
    assert sim.converged()             # the live see each other alive and the victim dead
    sim.revive(victim)                 # a fresh process: incarnation 0, which the cluster
    sim.run_until(50.0)                # holds dead: it is told, and refutes
    assert all(sim.view(o, victim) == ALIVE for o in sim.live())
    assert sim.nodes[sim.index[victim]].incarnation >= 1
    assert sim.converged()


def test_periodic_full_state_exchange():
    sim = Simulator(10, seed=2)
    sim.run_until(120.0)
    syncs = sum(node.statistics()["syncs_sent"] for node in sim.nodes)
    # Each node starts one every 30 s and answers the others': ~2 × 10 × 120 / 30.
    assert 60 <= syncs <= 100


def test_same_seed_same_numbers():
    a = run_cell(10, 0.05, seed=9, steady=20.0, kills=2)
    b = run_cell(10, 0.05, seed=9, steady=20.0, kills=2)
    da, db = a.as_dict(), b.as_dict()
    da.pop("wall_seconds"), db.pop("wall_seconds")
    assert da == db


def test_messages_through_msgpack():
    sim = Simulator(10, loss=0.01, seed=12, roundtrip=True)
    tr = Tracker(sim)
    sim.run_until(5.0)
    tr.publish_and_track(sim.ids[0], 1, {"roster": sim.ids, "epoch": 1})
    tr.kill_and_track(sim.ids[5])
    sim.run_until(40.0)
    assert tr.kills[0]["all_dead"] is not None and tr.docs[0]["time"] is not None


def test_percentile():
    assert percentile([3, 1, 2], 50) == 2 and percentile(list(range(1, 101)), 99) == 99
    assert percentile([], 50) != percentile([], 50)          # NaN
