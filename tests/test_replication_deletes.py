"""Deletes across a cluster, with real daemons in network namespaces: three ``edit``
elements (the only mode that deletes), replication_factor 2, tombstones kept no minimum
time (``tombstone_days = 0``), so only the every-member-confirms rule holds them.

A delete sent to a node without a copy is forwarded to one that holds it; every copy
goes; an owner that was down during the delete comes back without bringing the file
back; and the tombstones are purged only once every member has confirmed it holds no
copy, after which the file is still nowhere."""

from __future__ import annotations

import pytest

from artstored.replication import placement as P
from clusterlab import Cluster
from harness import multipart, wait_until
from netns import NetLab

RF = 2
SPREAD_BOUND = 5.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("deletes"))
    with NetLab(3) as lab:
        c = Cluster(lab, root, 3, {"cluster": {"replication_factor": RF},
                                   "element": {"initial_mode": "edit"},
                                   "replication": {"tombstone_days": 0}})
        try:
            yield c.start()
        finally:
            for d in c.nodes:
                d.kill()


def _upload(c: Cluster, i: int, content: bytes) -> dict:
    body, ctype = multipart(None, content=content, filename="doc.bin")
    r = c.api(i).request("POST", "/api/v1/files?ack=all", body=body,
                         headers={"Content-Type": ctype})
    assert r.status == 201, r.body[:300]
    return r.json()


def _owners(c: Cluster, file_id: str) -> list[int]:
    weights = {m["node_id"]: m["weight"] for m in c.status(0)["members"]}
    return [c.index_of(n) for n in P.owners(file_id, weights, RF)]


def _holds(c: Cluster, i: int, file_id: str) -> bool:
    """Node i's own catalog has the file (its listing never proxies)."""
    items = c.api(i).get("/api/v1/files?limit=1000").json()["items"]
    return any(a["file_id"] == file_id for a in items)


def test_a_delete_through_a_node_without_a_copy_removes_every_copy(cluster):
    c = cluster
    for k in range(20):
        attr = _upload(c, 0, f"to be deleted {k}".encode())
        fid = attr["file_id"]
        others = [i for i in range(3) if not _holds(c, i, fid)]
        if others:
            break
    else:
        pytest.fail("every upload landed on every node")
    via = c.api(others[0])
    r = via.request("DELETE", f"/api/v1/files/{fid}")
    assert r.status == 204, r.body[:300]
    assert r.headers["x-artstore-served-by"] in attr["replicas"]
    for i in range(3):
        wait_until(lambda i=i: not _holds(c, i, fid), SPREAD_BOUND, f"no copy on node {i}")
    for i in range(3):       # (a node without a copy asks the others: none has one now)
        r = c.api(i).get(f"/api/v1/files/{fid}")
        assert r.status in (404, 410), (i, r.status)
    r = via.request("DELETE", "/api/v1/files/01a21e26-0000-7000-8000-000000000000")
    assert r.status == 404 and r.problem["code"] == "file_not_found"


def test_an_owner_down_during_a_delete_never_brings_the_file_back(cluster):
    c = cluster
    attr = _upload(c, 0, b"deleted while an owner sleeps")
    fid = attr["file_id"]
    owners = _owners(c, fid)
    sleeper, other = owners[-1], owners[0]
    assert _holds(c, sleeper, fid) and _holds(c, other, fid)
    c.nodes[sleeper].kill()
    wait_until(lambda: c.states(other)[c.ids[sleeper]] != "alive", 60,
               "the sleeper seen down")
    r = c.api(other).request("DELETE", f"/api/v1/files/{fid}")
    assert r.status == 204, r.body[:300]
    # While it is down nobody can purge the tombstone (it cannot confirm), whatever the
    # passes do.
    for i in range(3):
        if i != sleeper:
            assert c.api(i).request("POST", "/api/v1/cluster/repair").status == 202
    c.nodes[sleeper].start()
    c.wait_all_alive()
    wait_until(lambda: not _holds(c, sleeper, fid), 30, "the sleeper's copy deleted")
    # Every node's pass now: the sleeper's included, which must not push its old copy
    # anywhere; then every member confirms it holds none, and the tombstones go.
    passes = {i: c.status(i)["replication"]["anti_entropy"]["last_full_pass"]
              for i in range(3)}
    for i in range(3):
        assert c.api(i).request("POST", "/api/v1/cluster/repair").status == 202

    def purged() -> bool:
        done = [c.status(i)["replication"]["anti_entropy"]["last_full_pass"]
                for i in range(3)]
        return all(d and d != passes[i] for i, d in enumerate(done)) and \
            sum(d.get("tombstones_purged", 0) for d in done) >= 1
    wait_until(purged, 60, "a pass on every node, and a tombstone purged")
    for i in range(3):
        assert not _holds(c, i, fid), f"node {i} holds the deleted file again"
        assert c.api(i).get(f"/api/v1/files/{fid}").status in (404, 410)
