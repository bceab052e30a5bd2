"""EtcdAuthority against a real three-member etcd cluster (tests/etcd_lab.py): leadership,
the fenced compare-and-swap of the cluster document, failover when an authority closes or
is SIGKILLed, an etcd leader SIGKILLed, lost quorum, unreachable endpoints.

The tests are plain functions that run their asyncio code with ``arun`` on one event loop
for the module (the suite runs pytest-trio in trio mode, and the authority is asyncio
code): ``arun`` fails the test if a task died with an exception nobody retrieved, a task
was left running, or the authority logged an error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import sys
import time

import pytest

from artstored.cluster.etcd_authority import AuthorityUnavailable, EtcdAuthority
from etcd_lab import EtcdLab
from harness import SUMMARY, free_port

TTL = 2          # lease TTL of the authorities, s
TIMEOUT = 3.0    # the authorities' timeout for one call, s
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with EtcdLab(tmp_path_factory.mktemp("etcd")) as lab:
        yield lab


@pytest.fixture
def prefix(request):
    """A key prefix of the test's own, so the tests share the etcd cluster but no keys."""
    return f"/test/{request.node.name}/{secrets.token_hex(3)}/"


@pytest.fixture(scope="module")
def loop():
    """One event loop for the whole module, as the daemon has one for its life: grpc.aio
    delivers a call's completion to the loop that started it, and a call abandoned against
    a silent endpoint completes later; had that loop been closed (one asyncio.run per
    test), the callback would fail in whichever loop runs then."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@pytest.fixture
def arun(loop, caplog):
    caplog.set_level(logging.INFO, logger="artstored.cluster")

    def run(coro, timeout: float = 45.0):
        loop_errors = []
        loop.set_exception_handler(lambda loop, ctx: loop_errors.append(ctx))
        try:
            result = loop.run_until_complete(asyncio.wait_for(coro, timeout))
            # Let callbacks already due run (a task that died is reported when collected).
            loop.run_until_complete(asyncio.sleep(0.05))
        finally:
            loop.set_exception_handler(None)
        leftover = [t for t in asyncio.all_tasks(loop) if not t.done()]
        assert not leftover, f"tasks left running: {leftover}"
        assert not loop_errors, f"unhandled errors in the event loop: {loop_errors}"
        bugs = [r.getMessage() for r in caplog.records
                if r.name.startswith("artstored.cluster") and r.levelno >= logging.ERROR]
        assert not bugs, f"the authority logged errors: {bugs}"
        return result

    return run


async def until(predicate, timeout: float, what: str) -> float:
    """Poll ``predicate`` (sync) every 10 ms; the seconds it took. AssertionError after
    ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def never(predicate, duration: float, what: str) -> None:
    """Assert ``predicate`` stays false for ``duration`` seconds (sampled every 10 ms)."""
    end = time.monotonic() + duration
    while time.monotonic() < end:
        assert not predicate(), what
        await asyncio.sleep(0.01)


def authority(lab, node_id, prefix, ttl=TTL):
    return EtcdAuthority(lab.endpoints, node_id, prefix=prefix, lease_ttl=ttl,
                         timeout=TIMEOUT)


async def started(*auths):
    await asyncio.gather(*(a.start() for a in auths))
    return auths


async def closed(*auths):
    await asyncio.gather(*(a.close() for a in auths))


# --- 1. one leader, and the fenced compare-and-swap ------------------------------------


def test_one_leader_and_fenced_compare_and_swap(lab, prefix, arun):
    async def body():
        a, b = await started(authority(lab, "a", prefix), authority(lab, "b", prefix))
        try:
            await until(lambda: a.is_leader or b.is_leader, 5, "a leader")
            await never(lambda: a.is_leader and b.is_leader, 1.0, "two leaders at once")
            leader, other = (a, b) if a.is_leader else (b, a)
            assert not other.is_leader
            assert await a.leader() == await b.leader() == leader.node_id

            assert await leader.load_document() is None
            assert await leader.store_document(None, 1, b"doc-1")
            assert await other.load_document() == b"doc-1"
            # A wrong expected version fails and changes nothing.
            assert not await leader.store_document(None, 2, b"bad")  # one exists
            assert not await leader.store_document(7, 8, b"bad")
            assert not await leader.store_document(0, 2, b"bad")
            # The non-leader cannot write, even with the right expected version.
            assert not await other.store_document(1, 2, b"from-the-other")
            assert await other.load_document() == b"doc-1"
            assert await leader.store_document(1, 2, b"doc-2")
            assert await other.load_document() == b"doc-2"
            with pytest.raises(ValueError):
                await leader.store_document(2, 2, b"not forward")

            # The fence is etcd's, not is_leader: delete the leader key behind the leader's
            # back (an independent client); its very next write fails although it may still
            # believe it leads. Then one of them (either: the deposed one campaigns again
            # at once) leads under a new lease, and can write.
            old_lease = leader._lease_id
            lab.etcdctl("del", prefix + "leader")
            assert not await leader.store_document(2, 3, b"stale leader")
            await until(lambda: leader._lease_id != old_lease, TTL, "the deposed to notice")
            await until(lambda: a.is_leader or b.is_leader, TTL + 2, "a new leader")
            await never(lambda: a.is_leader and b.is_leader, 0.5, "two leaders at once")
            new = a if a.is_leader else b
            assert await other.leader() == new.node_id
            assert await new.store_document(2, 3, b"doc-3")
            assert await other.load_document() == b"doc-3"
        finally:
            await closed(a, b)

    arun(body())


# --- 2. failover: close(), and a SIGKILLed authority process --------------------------


def test_close_hands_leadership_over_at_once(lab, prefix, arun):
    async def body():
        a, b = await started(authority(lab, "a", prefix), authority(lab, "b", prefix))
        try:
            await until(lambda: a.is_leader or b.is_leader, 5, "a leader")
            leader, other = (a, b) if a.is_leader else (b, a)
            t0 = time.monotonic()
            await leader.close()
            closing = time.monotonic() - t0
            taken = await until(lambda: other.is_leader, 3, "the other to take over")
            SUMMARY.append(f"etcd authority: close() took {closing:.2f} s, the other admin "
                           f"led {taken:.2f} s later (bound 1.5 s; lease TTL {TTL} s)")
            # Revoked, not expired: the takeover does not wait for the TTL.
            assert taken < 1.5
            assert not leader.is_leader
            assert await other.leader() == other.node_id
        finally:
            await closed(a, b)

    arun(body())


CHILD = """
import asyncio, sys
from artstored.cluster.etcd_authority import EtcdAuthority
async def main():
    a = EtcdAuthority(sys.argv[1].split(","), "child", prefix=sys.argv[2],
                      lease_ttl=int(sys.argv[3]))
    await a.start()
    while not a.is_leader:
        await asyncio.sleep(0.01)
    print("leader", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


def test_sigkilled_leader_is_replaced_after_its_lease(lab, prefix, arun):
    async def body():
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, ",".join(lab.endpoints), prefix, str(TTL),
            cwd=REPO, stdout=asyncio.subprocess.PIPE)
        a = None
        try:
            line = await asyncio.wait_for(child.stdout.readline(), 15)
            assert line == b"leader\n", line
            (a,) = await started(authority(lab, "a", prefix))
            await never(lambda: a.is_leader, 1.0, "a led while the child held the lease")
            assert await a.leader() == "child"
            os.kill(child.pid, signal.SIGKILL)  # no close(): the lease is not revoked
            t0 = time.monotonic()
            await child.wait()
            await until(lambda: a.is_leader, TTL + 3, "a to take over")
            took = time.monotonic() - t0
            SUMMARY.append(f"etcd authority: SIGKILLed leader replaced {took:.2f} s after "
                           f"the kill (lease TTL {TTL} s, bound TTL + 1.5 s)")
            # Not before the child's last renewal (at most TTL/3 before the kill) expired...
            assert took > TTL * 2 / 3 - 0.2
            # ...and soon after.
            assert took < TTL + 1.5
            assert await a.leader() == "a"
            assert await a.store_document(None, 1, b"after the crash")
        finally:
            if child.returncode is None:
                os.kill(child.pid, signal.SIGKILL)
                await child.wait()
            if a is not None:
                await a.close()

    arun(body())


# --- 3. the etcd leader member SIGKILLed -------------------------------------------------


def test_etcd_leader_killed(lab, prefix, arun):
    ttl = 3

    async def body():
        a, b = await started(authority(lab, "a", prefix, ttl),
                             authority(lab, "b", prefix, ttl))
        killed = None
        try:
            await until(lambda: a.is_leader or b.is_leader, 5, "a leader")
            leader = a if a.is_leader else b
            assert await leader.store_document(None, 1, b"before the kill")

            killed = await asyncio.to_thread(lab.wait_for_leader)
            lab.kill(killed)
            t0 = time.monotonic()
            new = await asyncio.to_thread(lab.wait_for_leader, 15, killed)
            elected = time.monotonic() - t0
            assert new != killed

            assert await a.load_document() == await b.load_document() == b"before the kill"
            await until(lambda: a.is_leader or b.is_leader, ttl + 3, "an authority leader")
            now_leading = a if a.is_leader else b
            assert await now_leading.store_document(1, 2, b"after the election")
            stored = time.monotonic() - t0
            assert await a.load_document() == b"after the election"
            SUMMARY.append(
                f"etcd authority: etcd leader m{killed} SIGKILLed; m{new} elected within "
                f"{elected:.2f} s; document stored {stored:.2f} s after the kill, by "
                f"{'the same' if now_leading is leader else 'another'} authority leader")
            assert stored < 10
        finally:
            await closed(a, b)
            if killed is not None:  # leave the lab whole for the other tests
                lab.restart(killed)
                await asyncio.to_thread(lab.wait_for_leader)

    arun(body())


# --- 4. join requests ----------------------------------------------------------------------


def test_join_requests_round_trip(lab, prefix, arun):
    async def body():
        a, b = await started(authority(lab, "a", prefix), authority(lab, "b", prefix))
        try:
            assert await a.join_requests() == {}
            n1 = {"address": "10.0.0.1:7400", "name": "one", "key": b"\x01" * 32}
            await a.add_join_request("n1", n1)
            await b.add_join_request("n2", {"address": "10.0.0.2:7400", "name": "two"})
            await a.add_join_request("n1", n1)  # idempotent
            assert await b.join_requests() == {
                "n1": n1, "n2": {"address": "10.0.0.2:7400", "name": "two"}}
            await b.add_join_request("n1", {**n1, "name": "uno"})  # a repeat replaces
            assert (await a.join_requests())["n1"]["name"] == "uno"
            await a.remove_join_request("n1")
            await a.remove_join_request("n1")  # idempotent
            assert list(await b.join_requests()) == ["n2"]
            await b.remove_join_request("n2")
            assert await a.join_requests() == {}
        finally:
            await closed(a, b)

    arun(body())


# --- 5. unreachable etcd, and lost quorum --------------------------------------------------


def test_unreachable_endpoints_raise_in_time(arun):
    # Nobody listening (refused at once), and a socket that accepts but never speaks
    # gRPC (the case that would hang without a deadline).
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    endpoints = [f"http://127.0.0.1:{free_port()}",
                 f"127.0.0.1:{silent.getsockname()[1]}"]

    async def body():
        for eps in (endpoints[:1], endpoints[1:], endpoints):
            auth = EtcdAuthority(eps, "a", lease_ttl=TTL, timeout=2.0)
            t0 = time.monotonic()
            with pytest.raises(AuthorityUnavailable) as err:
                await auth.start()
            took = time.monotonic() - t0
            assert 1.9 < took < 3.0, (eps, took)
            assert err.value.code == "authority_unavailable" and err.value.status == 503
            assert not auth.is_leader
            with pytest.raises(AuthorityUnavailable):
                await auth.load_document()  # not started: fails at once, no hang
            await auth.close()

    try:
        arun(body())
    finally:
        silent.close()


def test_lost_quorum_raises_and_recovers(lab, prefix, arun):
    async def body():
        (a,) = await started(authority(lab, "a", prefix))
        try:
            await until(lambda: a.is_leader, 5, "a to lead")
            assert await a.store_document(None, 1, b"doc-1")
            lab.kill(0)
            lab.kill(1)  # m2 runs on, alone: no quorum, linearizable requests go unanswered
            t0 = time.monotonic()
            # No renewal can succeed: it stops believing it leads within the TTL.
            await until(lambda: not a.is_leader, TTL + 0.2, "a to stop leading")
            stopped = time.monotonic() - t0
            t0 = time.monotonic()
            with pytest.raises(AuthorityUnavailable) as err:
                await a.load_document()
            raised = time.monotonic() - t0
            assert TIMEOUT - 0.1 < raised < TIMEOUT + 1.0, err.value
            with pytest.raises(AuthorityUnavailable):
                await a.store_document(1, 2, b"no quorum")
        finally:
            lab.restart(0)
            lab.restart(1)
            t0 = time.monotonic()
            await asyncio.to_thread(lab.wait_for_leader)
        try:
            await until(lambda: a.is_leader, TTL + 8, "a to lead again")
            SUMMARY.append(
                f"etcd authority: quorum lost: is_leader False after {stopped:.2f} s (TTL "
                f"{TTL} s), load_document raised after {raised:.2f} s (timeout {TIMEOUT:g} s); "
                f"leading again {time.monotonic() - t0:.2f} s after the members' restart")
            assert await a.load_document() == b"doc-1"
            assert await a.store_document(1, 2, b"doc-2")
        finally:
            await a.close()

    arun(body())
