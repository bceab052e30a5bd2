"""The network-namespace lab itself: reachability, faults, teardown, a daemon inside.

Every connection here is made from inside a lab namespace to a lab address: no test sends
a packet to the lab's 10.x addresses from the root namespace (it would leave the machine).
"""

import os
import signal
import subprocess
import sys

import pytest

from harness import wait_until
from netns import NetLab, NsApi, NsDaemon, run

PORT = 8080  # every node namespace is new and empty, so a fixed port is free in each

# Echoes what each connection sends, on argv[1]:argv[2], until killed.
SERVER = """
import socket, sys, threading
def echo(c):
    while data := c.recv(4096):
        c.sendall(data)
s = socket.create_server((sys.argv[1], int(sys.argv[2])))
while True:
    threading.Thread(target=echo, args=(s.accept()[0],), daemon=True).start()
"""
# Exits 0 if it can connect to argv[1]:argv[2] within a second, else 1.
CLIENT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), 1).close()
except OSError:
    sys.exit(1)
"""


@pytest.fixture
def lab3():
    with NetLab(3) as lab:
        for i in range(3):
            lab.spawn(i, [sys.executable, "-c", SERVER, lab.addr(i), str(PORT)])
        for i in range(3):
            wait_until(lambda: reaches(lab, i, i), 10, f"server in node {i}")
        yield lab


def reaches(lab: NetLab, i: int, j: int) -> bool:
    """Whether node i can open a TCP connection to node j (half a second allowed)."""
    try:
        lab.connect(i, lab.addr(j), PORT, timeout=0.5).close()
        return True
    except OSError:
        return False


def namespaces() -> set[str]:
    return {line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()}


def net_ns_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def live(pid: int) -> bool:
    """A process that exists and is not a zombie (a killed orphan may wait to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_server_in_one_node_is_reached_from_another_and_from_the_test(tmp_path):
    with NetLab(2) as lab:
        assert lab.ns(0) != lab.ns(1) and lab.addr(0) != lab.addr(1)
        (tmp_path / "hello.txt").write_text("hello from node 1")
        server = lab.spawn(1, [sys.executable, "-m", "http.server", "--bind", lab.addr(1),
                               "--directory", str(tmp_path), str(PORT)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: reaches(lab, 0, 1), 10, "http.server in node 1")
        client = lab.spawn(0, [sys.executable, "-c", CLIENT, lab.addr(1), str(PORT)])
        assert client.wait(10) == 0
        # Nothing listens on node 0's own address: the client really tests the path to 1.
        client = lab.spawn(0, [sys.executable, "-c", CLIENT, lab.addr(0), str(PORT)])
        assert client.wait(10) == 1

        conn = lab.http_connection(0, lab.addr(1), PORT, timeout=5)
        conn.request("GET", "/hello.txt")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"hello from node 1")
        conn.close()
        assert server.poll() is None
        assert net_ns_of(server.pid) == os.stat(f"/var/run/netns/{lab.ns(1)}").st_ino
        assert net_ns_of(server.pid) != net_ns_of(os.getpid())


def test_isolate_cuts_a_node_off_and_reconnect_restores_it(lab3):
    lab = lab3
    lab.isolate(1)
    assert not reaches(lab, 0, 1) and not reaches(lab, 1, 2)
    assert reaches(lab, 0, 2), "only node 1 is cut off"
    lab.reconnect(1)
    wait_until(lambda: reaches(lab, 0, 1) and reaches(lab, 1, 2), 10, "node 1 back")


def test_partition_blocks_across_groups_only_and_heal_restores(lab3):
    lab = lab3
    conn = lab.connect(1, lab.addr(0), PORT, timeout=5)  # opened before the cut
    conn.sendall(b"a")
    assert conn.recv(1) == b"a"
    lab.partition([[0], [1, 2]])
    for i, j in [(0, 1), (1, 0), (0, 2), (2, 0)]:
        assert not reaches(lab, i, j), (i, j)
    assert reaches(lab, 1, 2) and reaches(lab, 2, 1) and reaches(lab, 0, 0)
    conn.sendall(b"b")  # an open connection is cut too: no echo while partitioned
    conn.settimeout(0.5)
    with pytest.raises(TimeoutError):
        conn.recv(1)

    lab.heal()
    for i in range(3):
        for j in range(3):
            assert reaches(lab, i, j), (i, j)
    conn.settimeout(10)  # TCP retransmits "b" once the path is back
    assert conn.recv(1) == b"b"
    conn.close()

    lab.block(0, 1)  # one way: 0's packets to 1 are dropped, everything else flows
    assert not reaches(lab, 0, 1) and not reaches(lab, 1, 0)  # TCP needs both ways
    assert reaches(lab, 0, 2) and reaches(lab, 2, 1)
    lab.unblock(0, 1)
    assert reaches(lab, 0, 1)

    with pytest.raises(ValueError):
        lab.partition([[0, 1], [1, 2]])


def test_close_leaves_no_namespace_and_no_process():
    lab = NetLab(2)
    names = {lab.hub, lab.ns(0), lab.ns(1)}
    pids = []
    try:
        assert names <= namespaces()
        # A plain child, a grandchild in its group, and one that left the group (setsid).
        plain = lab.spawn(0, ["sleep", "300"])
        shell = lab.spawn(1, ["sh", "-c", "sleep 300 & echo $!; setsid sleep 300 & echo $!; wait"],
                          stdout=subprocess.PIPE)
        grandchild, escaped = int(shell.stdout.readline()), int(shell.stdout.readline())
        shell.stdout.close()
        pids = [plain.pid, shell.pid, grandchild, escaped]
        wait_until(lambda: os.getsid(escaped) == escaped, 5, "setsid to have run")
        assert all(live(pid) for pid in pids)
        lab.kill(shell)  # kills the process group: the grandchild, not the one that left it
        wait_until(lambda: not live(grandchild), 5, "grandchild killed with its group")
        assert live(escaped)
        lab.close()  # kills whatever is still inside a lab namespace
        assert not names & namespaces()
        assert plain.returncode is not None
        wait_until(lambda: not live(escaped), 5, "the process that left the group killed")
    finally:
        lab.close()  # harmless a second time; cleans up if an assertion above failed
        for pid in pids:
            if live(pid):
                os.kill(pid, signal.SIGKILL)


def test_failed_creation_leaves_nothing_and_stale_namespaces_are_removed():
    prefix = f"nltest{os.getpid()}"
    run("ip", "netns", "add", f"{prefix}-1")  # in the way of the lab's node 1
    try:
        with pytest.raises(RuntimeError, match="File exists"):
            NetLab(2, prefix=prefix)
        left = namespaces()
        assert f"{prefix}-hub" not in left and f"{prefix}-0" not in left
        assert f"{prefix}-1" in left, "a namespace the lab did not make is not its to delete"
    finally:
        run("ip", "netns", "delete", f"{prefix}-1")

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"nl{dead.pid}x0-hub"
    run("ip", "netns", "add", stale)
    try:
        with NetLab(1):
            assert stale not in namespaces()
    finally:
        if stale in namespaces():
            run("ip", "netns", "delete", stale)


def test_daemon_inside_a_namespace(tmp_path):
    with NetLab(2) as lab:
        d = NsDaemon(lab, 0, str(tmp_path / "node0"), port=PORT).start()
        try:
            r = NsApi(lab, 0, PORT).get("/health/ready")
            assert r.status == 200, r.body
            # From the other node, across the bridge, and authenticated (token via the lab).
            across = NsApi(lab, 1, PORT, d.admin_token(), host=lab.addr(0))
            file_id = across.upload_ok(b"across the lab", "a.txt")["file_id"]
            assert d.api().download(file_id).body == b"across the lab"
            lab.isolate(0)
            with pytest.raises(OSError):
                NsApi(lab, 1, PORT, host=lab.addr(0)).connection(timeout=0.5).connect()
            lab.reconnect(0)
            assert net_ns_of(d.pid) == os.stat(f"/var/run/netns/{lab.ns(0)}").st_ino
        finally:
            d.kill()
        assert d.proc.returncode is not None and not live(d.proc.pid)
