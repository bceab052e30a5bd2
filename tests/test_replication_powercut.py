"""A power cut on one node of a cluster while uploads are acknowledged at quorum: after the
node's filesystem is checked and it restarts, the cluster converges and no acknowledged
upload is lost, whichever node took it. Three real daemons in network namespaces; node 2's
data directory (LMDB and its disk) is on a loop-mounted ext4 image that is shut down with
unflushed writes lost (tests/powercut.py), as a real power cut would."""

from __future__ import annotations

import hashlib
import itertools
import os
import threading

import pytest

from artstored.replication import placement as P
from clusterlab import Cluster
from harness import multipart, wait_until
from netns import NetLab
from powercut import LoopFs, have_tools

RF = 2
VICTIM = 2

@pytest.fixture
def rig(tmp_path):
    assert not have_tools(), f"missing: {have_tools()} (scripts/install-system-deps.sh)"
    fs = LoopFs(str(tmp_path), "victim", "ext4").create()
    try:
        with NetLab(3) as lab:
            c = Cluster(lab, str(tmp_path), 3, {"cluster": {"replication_factor": RF}})
            victim = c.nodes[VICTIM]
            victim.data_dir = os.path.join(fs.mountpoint, "data")
            victim.log_path = str(tmp_path / "victim.log")   # the log outlives the cut
            try:
                yield c.start(), fs
            finally:
                for d in c.nodes:
                    d.kill()
    finally:
        fs.destroy()


def test_power_cut_on_one_node_loses_no_acknowledged_upload(rig):
    c, fs = rig
    acknowledged: dict[str, bytes] = {}
    errors: list = []
    stop = threading.Event()
    down = threading.Event()
    counter = itertools.count()

    def writer(node: int):
        while not stop.is_set():
            if node == VICTIM and down.is_set():
                return
            content = f"record {node}-{next(counter)} ".encode() * 30
            body, ctype = multipart(None, content=content, filename="r.bin")
            try:
                r = c.api(node).request("POST", "/api/v1/files?ack=quorum", body=body,
                                        headers={"Content-Type": ctype})
            except OSError:
                continue                 # the node died under the request: not acknowledged
            if r.status == 201:
                if len(set(r.json()["replicas"])) < P.quorum(RF):   # (reported, not raised:
                    errors.append((node, "short of quorum", r.json()["replicas"]))  # a thread)
                acknowledged[r.json()["file_id"]] = content
            elif not (node == VICTIM or r.status == 503):
                errors.append((node, r.status, r.body[:300]))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(acknowledged) >= 30, 60, "uploads before the cut")
        down.set()
        fs.cut()                         # unflushed writes on node 2 are gone...
        c.nodes[VICTIM].kill()           # ...and so is the process
        at_cut = len(acknowledged)
        wait_until(lambda: len(acknowledged) >= at_cut + 20, 60,
                   "uploads go on at quorum with node 2 down")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors[:5]
    fs.umount()
    fs.check_and_mount()                 # fsck and mount, as the reboot would
    c.nodes[VICTIM].start()
    c.wait_all_alive()
    # Placement weighs nodes by capacity (node 2's image is small): the cluster's weights.
    weights = {m["node_id"]: m["weight"] for m in c.status(0)["members"]}

    def held_by_owners(fid: str, content: bytes) -> bool:
        for o in P.owners(fid, weights, RF):
            i = c.index_of(o)
            d = c.api(i).download(fid)
            if d.status != 200 or d.body != content or "x-artstore-served-by" in d.headers:
                return False
        return True

    for fid, content in acknowledged.items():
        assert hashlib.sha256(content).hexdigest()
        wait_until(lambda fid=fid, content=content: held_by_owners(fid, content), 60,
                   f"acknowledged {fid} on its owners after the power cut")
    print(f"power cut on node 2: {len(acknowledged)} uploads acknowledged at quorum, "
          f"{at_cut} before the cut; every one on its {RF} owners afterwards")
