"""Replication with three real daemons in network namespaces (replication_factor 2):
uploads reach their owners, acknowledged at quorum only once two copies are durable; a
killed node catches up with nothing missing or doubled; writes on both sides of a
partition end up everywhere they belong."""

from __future__ import annotations

import hashlib
import itertools
import threading
import time

import pytest

from artstored.replication import placement as P
from clusterlab import Cluster
from harness import wait_until
from netns import NetLab

RF = 2
STORED: set[str] = set()   # every file id a test was told is stored (201, or 503 "stored here")
SPREAD_BOUND = 5.0     # the promise: on replication_factor nodes within 5 s


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("replication"))
    with NetLab(3) as lab:
        c = Cluster(lab, root, 3, {"cluster": {"replication_factor": RF}})
        try:
            yield c.start()
        finally:
            for d in c.nodes:
                d.kill()


def owners(c: Cluster, file_id: str) -> list[int]:
    return [c.index_of(n) for n in P.owners(file_id, dict.fromkeys(c.ids, 1.0), RF)]


def holds(c: Cluster, i: int, file_id: str, content: bytes | None = None,
          version: int | None = None) -> bool:
    """Whether node i holds the file itself (its catalog), with these bytes / version."""
    r = c.api(i).get(f"/api/v1/files/{file_id}")
    if r.status != 200:
        return False
    if version is not None and r.json()["version"] != version:
        return False
    if content is not None:
        d = c.api(i).download(file_id)
        return d.status == 200 and d.body == content
    return True


def upload(c: Cluster, i: int, content: bytes, ack: str = "quorum"):
    r = c.api(i).request("POST", f"/api/v1/files?ack={ack}", **_multipart(content))
    if r.status == 201:
        STORED.add(r.json()["file_id"])
    elif r.status == 503 and r.problem.get("code") == "replication_incomplete":
        STORED.add(r.problem["file_id"])
    return r


def _multipart(content: bytes) -> dict:
    from harness import multipart
    body, ctype = multipart(None, content=content, filename="doc.bin")
    return {"body": body, "headers": {"Content-Type": ctype}}


def test_an_upload_is_on_its_owners_and_quorum_waits_for_two(cluster):
    c = cluster
    for i in range(3):
        for k in range(3):
            content = f"document {i}-{k} ".encode() * (1 + 500 * k)
            r = upload(c, i, content)
            assert r.status == 201, r.body
            attr = r.json()
            holders = attr["replicas"]
            assert holders[0] == c.ids[i] and len(set(holders)) >= RF
            # Answered only after the second copy was durable: it is there already.
            assert holds(c, c.index_of(holders[1]), attr["file_id"], content)
            started = time.monotonic()
            for o in owners(c, attr["file_id"]):
                wait_until(lambda o=o: holds(c, o, attr["file_id"], content), SPREAD_BOUND,
                           f"{attr['file_id']} on owner {o}")
            assert time.monotonic() - started < SPREAD_BOUND
            assert hashlib.sha256(content).hexdigest() == attr["checksum_sha256"]


def test_a_bad_ack_is_refused_before_anything_is_stored(cluster):
    c = cluster
    before = c.api(0).get("/api/v1/element").json()["files"]
    r = upload(c, 0, b"x", ack="some")
    assert r.status == 400 and r.problem["code"] == "invalid_ack"
    assert c.api(0).get("/api/v1/element").json()["files"] == before


def test_a_killed_node_catches_up_with_nothing_missing_or_doubled(cluster):
    c = cluster
    victim = 2
    acknowledged: dict[str, tuple[bytes, int]] = {}
    errors: list = []
    stop = threading.Event()
    counter = itertools.count()

    def writer(node: int):
        while not stop.is_set():
            content = f"stream {node} {next(counter)}".encode() * 40
            try:
                r = upload(c, node, content)
            except OSError:
                continue            # node killed under the request: not acknowledged
            if r.status == 201:
                acknowledged[r.json()["file_id"]] = (content, 1)
                fid = r.json()["file_id"]
                p = c.api(node).request("PATCH", f"/api/v1/files/{fid}",
                                        json_body={"description": "patched"},
                                        headers={"Content-Type":
                                                 "application/merge-patch+json"})
                if p.status == 200:
                    acknowledged[fid] = (content, 2)
                elif p.status != 503:
                    errors.append(("patch", p.status, p.body[:200]))
            elif not (r.status == 503 and node == victim):
                errors.append(("upload", node, r.status, r.body[:600]))

    threads = [threading.Thread(target=writer, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(acknowledged) >= 10, 30, "uploads before the kill")
        c.nodes[victim].kill()
        count_at_kill = len(acknowledged)
        wait_until(lambda: len(acknowledged) >= count_at_kill + 15, 60,
                   "uploads go on while a node is down")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors[:5]
    c.nodes[victim].start()
    c.wait_all_alive()
    for fid, (content, version) in acknowledged.items():
        for o in owners(c, fid):
            wait_until(lambda o=o, fid=fid: holds(c, o, fid, content, version), 30,
                       f"{fid} v{version} on owner {o} after the restart")
    for i in range(3):
        items = c.api(i).get("/api/v1/files?limit=1000").json()["items"]
        ids = [a["file_id"] for a in items]
        assert len(ids) == len(set(ids)), f"node {i} lists a file twice"
        assert set(ids) <= STORED, "a file nobody stored"


def test_writes_on_both_sides_of_a_partition_end_up_everywhere(cluster):
    c = cluster
    c.lab.partition([[0, 1], [2]])
    written = {}
    try:
        for k in range(4):
            r = upload(c, 0, f"majority {k}".encode())
            assert r.status == 201, r.body
            written[r.json()["file_id"]] = f"majority {k}".encode()
            # Alone, node 2 cannot get a second copy: ack=local stores it here only.
            r = upload(c, 2, f"minority {k}".encode(), ack="local")
            assert r.status == 201, r.body
            written[r.json()["file_id"]] = f"minority {k}".encode()
        r = upload(c, 2, b"needs a quorum")
        assert r.status == 503 and r.problem["code"] == "replication_incomplete", r.body
        written[r.problem["file_id"]] = b"needs a quorum"    # durable there all the same
    finally:
        c.lab.heal()
    c.wait_all_alive()
    for fid, content in written.items():
        for o in owners(c, fid):
            wait_until(lambda o=o, fid=fid: holds(c, o, fid, content), 60,
                       f"{fid} on owner {o} after the partition healed")
