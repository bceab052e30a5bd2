"""Replication with real daemons in network namespaces (three, then four;
replication_factor 2): uploads reach their owners, acknowledged at quorum only once two
copies are durable; a killed node catches up with nothing missing or doubled; writes on
both sides of a partition end up everywhere they belong; a file not held here is read from
an owner; a corrupted replica found by scrub is restored from another; a node that joins
gets its share and a removed node's files are re-replicated, never below their factor."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import struct
import threading
import time

import pytest
from nacl.signing import SigningKey

from artstored.engine.node import node_id_of
from artstored.replication import envelope as E
from artstored.replication import placement as P
from clusterlab import PORT, Cluster
from harness import wait_until
from netns import NetLab, NsApi

RF = 2
STORED: set[str] = set()
WEIGHTS: dict[str, float] = {}   # node id → placement weight (its capacity at join)   # every file id a test was told is stored (201, or 503 "stored here")
SPREAD_BOUND = 5.0     # the promise: on replication_factor nodes within 5 s


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("replication"))
    with NetLab(4) as lab:
        c = Cluster(lab, root, 4, {"cluster": {"replication_factor": RF}})
        try:
            yield c.start(3)      # node 3 joins later
        finally:
            for d in c.nodes:
                d.kill()


def owners(c: Cluster, file_id: str) -> list[int]:
    """The nodes that should hold the file under the current roster."""
    if any(c.ids[i] not in WEIGHTS for i in c.members):   # a node's weight is fixed at join
        WEIGHTS.update({m["node_id"]: m["weight"]
                        for m in c.status(c.members[0])["members"]})
    weights = {c.ids[i]: WEIGHTS[c.ids[i]] for i in c.members}
    return [c.index_of(n) for n in P.owners(file_id, weights, RF)]


def holds(c: Cluster, i: int, file_id: str, content: bytes | None = None,
          version: int | None = None) -> bool:
    """Whether node i holds the file itself (its catalog), with these bytes / version."""
    r = c.api(i).get(f"/api/v1/files/{file_id}")
    if r.status != 200 or "x-artstore-served-by" in r.headers:    # (proxied: not here)
        return False
    if version is not None and r.json()["version"] != version:
        return False
    if content is not None:
        d = c.api(i).download(file_id)
        return d.status == 200 and d.body == content and "x-artstore-served-by" not in d.headers
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
    # (The file count moves by itself: anti-entropy releases hand-off copies. The feed
    # says whether this request stored anything.)
    head = c.api(0).get("/api/v1/changes").json()["next_after"]
    r = upload(c, 0, b"x", ack="some")
    assert r.status == 400 and r.problem["code"] == "invalid_ack"
    created = [i for i in c.api(0).get(f"/api/v1/changes?after={head}").json()["items"]
               if i["kind"] == "file.create"]
    assert created == []


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
    for i in c.members:
        items = c.api(i).get("/api/v1/files?limit=1000").json()["items"]
        ids = [a["file_id"] for a in items]
        assert len(ids) == len(set(ids)), f"node {i} lists a file twice"
        assert set(ids) <= STORED, "a file nobody stored"


def _node_key(c: Cluster, i: int) -> SigningKey:
    with open(os.path.join(c.nodes[i].data_dir, "keys", "node.key"), "rb") as f:
        return SigningKey(f.read())


def test_a_bundle_answers_held_files_in_order_and_refuses_bad_requests(cluster):
    """``POST /cluster/v1/bundle`` (how a node catches up): a signed manifest for the
    asker, then each held file's bytes in its order; a file not held is named gone; what
    does not fit in one answer is put off (later); a malformed list, a stranger and a
    replay are refused with their codes."""
    c = cluster
    held = {}
    for k in range(12):
        content = f"bundled {k}".encode() * (k + 1) * 100
        fid = upload(c, 0, content).json()["file_id"]
        if 0 in owners(c, fid):
            held[fid] = content
    assert len(held) >= 2, "no file owned by node 0"
    held_big: dict[str, bytes] = {}         # three of 17 MiB: two fill an answer
    while len(held_big) < 3:
        content = os.urandom(17 << 20)
        fid = upload(c, 0, content).json()["file_id"]
        if 0 in owners(c, fid):
            held_big[fid] = content
    asker = 2
    c.nodes[asker].kill()     # its key signs the requests: its own counters must not run
    try:
        me = E.Signer(c.ids[asker], _node_key(c, asker))
        ids = list(held) + ["01JD0000000000000000000000", list(held)[0]]

        def post(blob: bytes):
            return NsApi(c.lab, asker, PORT, host=c.lab.addr(0)).request(
                "POST", "/cluster/v1/bundle", body=blob,
                headers={"Content-Type": "application/msgpack"})

        r = post(me.pack({"t": "bundle", "ids": ids, "rcpt": c.ids[0]}))
        assert r.status == 200 and r.headers["content-type"] == "application/x-artstore-bundle"
        (length,) = struct.unpack(">I", r.body[:4])
        answer = E.unpack(r.body[4:4 + length],
                          {c.ids[0]: bytes(_node_key(c, 0).verify_key)}, E.ReplayState())
        manifest = answer.message
        assert manifest["rcpt"] == c.ids[asker]
        assert [a["file_id"] for a in manifest["files"]] == list(held)   # once each, in order
        assert manifest["gone"] == ["01JD0000000000000000000000"]
        assert manifest["later"] == [] and manifest["unavailable"] == []
        rest = r.body[4 + length:]
        for attr in manifest["files"]:
            assert rest[:attr["file_size"]] == held[attr["file_id"]]
            assert hashlib.sha256(held[attr["file_id"]]).hexdigest() == attr["checksum_sha256"]
            rest = rest[attr["file_size"]:]
        assert rest == b""

        # An answer carries at most BUNDLE_BYTES (32 MiB) of files: the rest is put off.
        big = list(held_big)
        r = post(me.pack({"t": "bundle", "ids": big, "rcpt": c.ids[0]}))
        assert r.status == 200
        (length,) = struct.unpack(">I", r.body[:4])
        manifest = E.unpack(r.body[4:4 + length], {c.ids[0]: bytes(
            _node_key(c, 0).verify_key)}, E.ReplayState()).message
        assert [a["file_id"] for a in manifest["files"]] == big[:2]
        assert manifest["later"] == big[2:]
        assert r.body[4 + length:] == held_big[big[0]] + held_big[big[1]]

        for bad in ({"t": "bundle", "ids": "all"}, {"t": "bundle", "ids": []},
                    {"t": "bundle", "ids": ["x"] * 257}, {"t": "bundle", "ids": [7]}):
            r = post(me.pack({**bad, "rcpt": c.ids[0]}))
            assert r.status == 400 and r.problem["code"] == "envelope_malformed", r.body[:300]
        blob = me.pack({"t": "bundle", "ids": list(held)[:1], "rcpt": c.ids[0]})
        assert post(blob).status == 200
        r = post(blob)
        assert r.status == 409 and r.problem["code"] == "replayed_message"
        stranger_key = SigningKey.generate()
        stranger = E.Signer(node_id_of(bytes(stranger_key.verify_key)), stranger_key)
        r = post(stranger.pack({"t": "bundle", "ids": list(held), "rcpt": c.ids[0]}))
        assert r.status == 403 and r.problem["code"] == "unknown_sender"
    finally:
        c.nodes[asker].start()
        c.wait_all_alive()


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


def _holders(c: Cluster, file_id: str) -> list[int]:
    return [i for i in c.members if holds(c, i, file_id)]


def test_a_file_not_held_here_is_read_from_an_owner(cluster):
    c = cluster
    for k in range(20):
        content = f"0123456789 proxied {k}".encode()
        attr = upload(c, 0, content).json()
        others = [i for i in c.members if i not in _holders(c, attr["file_id"])]
        if others:
            break
    else:
        pytest.fail("every upload landed on every node")
    reader = c.api(others[0])
    meta = reader.get(f"/api/v1/files/{attr['file_id']}")
    stored = {k: v for k, v in attr.items() if k != "replicas"}
    assert meta.status == 200 and meta.json() == stored
    assert meta.headers["x-artstore-served-by"] in attr["replicas"]
    part = reader.download(attr["file_id"], headers={"Range": "bytes=2-5"})
    assert part.status == 206 and part.body == content[2:6]
    assert part.headers["content-range"] == f"bytes 2-5/{len(content)}"
    etag = part.headers["etag"]
    assert etag == f'"{attr["checksum_sha256"]}"'
    assert reader.download(attr["file_id"], headers={"If-None-Match": etag}).status == 304
    assert reader.get("/api/v1/files/01a21e26-0000-7000-8000-000000000000").status == 404


def test_a_file_not_held_here_is_changed_through_an_owner(cluster):
    """A PATCH sent to a node without a copy is forwarded to one that has it (the client's
    token checked there again); the change reaches every copy."""
    c = cluster
    for k in range(20):
        attr = upload(c, 0, f"forwarded {k}".encode()).json()
        others = [i for i in c.members if i not in _holders(c, attr["file_id"])]
        if others:
            break
    else:
        pytest.fail("every upload landed on every node")
    fid, via = attr["file_id"], c.api(others[0])
    merge = {"Content-Type": "application/merge-patch+json"}
    r = via.request("PATCH", f"/api/v1/files/{fid}", json_body={"description": "from afar"},
                    headers={**merge, "If-Match": f'"v{attr["version"]}"'})
    assert r.status == 200, r.body[:300]
    assert r.headers["x-artstore-served-by"] in attr["replicas"]
    assert r.json()["description"] == "from afar" and r.json()["version"] == 2
    for o in owners(c, fid):
        wait_until(lambda o=o: holds(c, o, fid, version=2) and c.api(o).get(
            f"/api/v1/files/{fid}").json()["description"] == "from afar", SPREAD_BOUND,
            f"the change on owner {o} itself")
    # The holder's precondition and the holder's answer come back as they are.
    r = via.request("PATCH", f"/api/v1/files/{fid}", json_body={"description": "stale"},
                    headers={**merge, "If-Match": '"v1"'})
    assert r.status == 412 and r.problem["code"] == "precondition_failed", r.body[:300]
    assert r.headers["x-artstore-served-by"] in attr["replicas"]
    # A client cannot make a node forward (or stop it forwarding) anything else: the
    # header only stops a second hop, so the file is simply not found there.
    r = via.request("PATCH", f"/api/v1/files/{fid}", json_body={"description": "x"},
                    headers={**merge, "X-ArtStore-Forwarded": "n-0000000000000000"})
    assert r.status == 404 and r.problem["code"] == "file_not_found"
    missing = "01a21e26-0000-7000-8000-000000000000"
    r = via.request("PATCH", f"/api/v1/files/{missing}", json_body={"description": "x"},
                    headers=merge)
    assert r.status == 404 and r.problem["code"] == "file_not_found"
    # (Deletes through any node: test_replication_deletes.py, whose elements are edit.)


def _data_path(c: Cluster, i: int, file_id: str) -> str:
    root = os.path.join(c.nodes[i].data_dir, "disks")
    for folder, _, names in os.walk(root):
        for name in names:
            if name.endswith(".attr.json"):
                path = os.path.join(folder, name)
                with open(path) as f:
                    if json.load(f)["file_id"] == file_id:
                        return path[:-len(".attr.json")]
    raise AssertionError(f"{file_id} not on node {i}")


def test_scrub_restores_a_corrupted_replica_from_another_node(cluster):
    c = cluster
    content = b"an irreplaceable record " * 100
    attr = upload(c, 1, content).json()
    victim = c.index_of(attr["replicas"][0])
    path = _data_path(c, victim, attr["file_id"])
    with open(path, "r+b") as f:
        f.seek(10)
        f.write(b"X")
    r = c.api(victim).request("POST", "/api/v1/element/scrub",
                              json_body={"rate_mb_per_s": 0})
    assert r.status == 202, r.body

    def restored():
        fx = c.api(victim).get(f"/api/v1/files/{attr['file_id']}/fixity").json()
        last = fx.get("last_verification") or {}
        return last.get("outcome") == "ok" and "restored" in (last.get("detail") or "")
    wait_until(restored, 60, "the corrupted copy restored from another node")
    assert c.api(victim).download(attr["file_id"]).body == content
    events = c.api(victim).get(f"/api/v1/audit?kind=preservation&file_id={attr['file_id']}")
    types = [e["data"]["premis_event_type"] for e in events.json()["items"]]
    assert "quarantine" in types and "replication" in types, types


def test_a_joining_node_gets_its_share_and_a_removed_nodes_files_move(cluster):
    c = cluster
    files = {}
    for k in range(24):
        content = f"share {k}".encode() * 20
        files[upload(c, k % 3, content).json()["file_id"]] = content
    c.add(3)
    deadline = time.monotonic() + 90
    while True:
        # Never below the factor while files move to the new node.
        for fid in list(files)[:6]:
            assert len(_holders(c, fid)) >= RF, fid
        if all(holds(c, o, fid, content) for fid, content in files.items()
               for o in owners(c, fid)):
            break
        assert time.monotonic() < deadline, "the new node did not get its share in 90 s"
        time.sleep(1)
    assert any(3 in owners(c, fid) for fid in files), "placement gave node 3 nothing"
    # Copies that are no longer an owner's are let go once the owners hold the file.
    def only_owners() -> bool:
        for i in c.members:
            assert c.api(i).request("POST", "/api/v1/cluster/repair").status == 202
        return all(sorted(_holders(c, fid)) == sorted(owners(c, fid)) for fid in files)
    wait_until(only_owners, 90, "each file held by exactly its owners", interval=3)
    # Now every pair of owners agrees: a fresh pass finds every digest bucket equal.
    started = time.time()
    for i in c.members:
        assert c.api(i).request("POST", "/api/v1/cluster/repair").status == 202

    def agreed() -> bool:
        for i in c.members:
            last = c.status(i)["replication"]["anti_entropy"]["last_full_pass"] or {}
            if last.get("started_at", 0) < started or last.get("buckets_differing", 0) \
                    or last.get("missing_copies", 0):
                return False
        return True
    wait_until(agreed, 60, "a pass on every node with all digests equal", interval=1)
    leaving = 1
    c.remove(leaving)
    wait_until(lambda: all(holds(c, o, fid, content) for fid, content in files.items()
                           for o in owners(c, fid)), 90,
               "every file on its owners after node 1 left")
    assert all(leaving not in owners(c, fid) for fid in files)


def test_cluster_search_finds_files_held_elsewhere_once(cluster):
    c = cluster
    word = "zanzibarquokka"
    for k in range(20):
        attr = c.api(0).request(
            "POST", "/api/v1/files?ack=quorum",
            **_multipart_with(f"{word} {k}".encode(), {"description": f"{word} report {k}"}))
        assert attr.status == 201, attr.body
        others = [i for i in c.members if i not in _holders(c, attr.json()["file_id"])]
        if others:
            break
    else:
        pytest.fail("every upload landed on every node")
    fid = attr.json()["file_id"]
    reader = c.api(others[0])
    wait_until(lambda: fid in [i["file_id"] for i in reader.get(
        f"/api/v1/search?q={word}&scope=cluster&limit=100").json()["items"]], 10,
        "the file found cluster-wide")
    page = reader.get(f"/api/v1/search?q={word}&scope=cluster&limit=100").json()
    ids = [i["file_id"] for i in page["items"]]
    assert len(ids) == len(set(ids)) and page["next_cursor"] is None
    assert fid not in [i["file_id"] for i in reader.get(f"/api/v1/search?q={word}").json()
                       ["items"]]
    # Paged in creation order: every file once, in the order of the one-page answer.
    for k in range(7):
        more = c.api(0).request(
            "POST", "/api/v1/files?ack=quorum",
            **_multipart_with(f"{word} more {k}".encode(), {"description": f"{word} {k}"}))
        assert more.status == 201, more.body
    wait_until(lambda: len(reader.get(f"/api/v1/search?q={word}&scope=cluster&limit=100")
                           .json()["items"]) >= 8, 10, "the new files found cluster-wide")
    whole = [i["file_id"] for i in reader.get(
        f"/api/v1/search?q={word}&scope=cluster&sort=created_at&limit=100").json()["items"]]
    paged, cursor = [], None
    for _ in range(50):
        page = reader.get(f"/api/v1/search?q={word}&scope=cluster&sort=created_at&limit=3"
                          + (f"&cursor={cursor}" if cursor else "")).json()
        assert len(page["items"]) <= 3
        paged += [i["file_id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert paged == whole and len(whole) == len(set(whole)) >= 8
    # By relevance: every file, each once on a page (a copy may come back on another).
    found, cursor = [], None
    for _ in range(50):
        page = reader.get(f"/api/v1/search?q={word}&scope=cluster&limit=3"
                          + (f"&cursor={cursor}" if cursor else "")).json()
        ids_here = [i["file_id"] for i in page["items"]]
        assert len(ids_here) == len(set(ids_here)) <= 3
        found += ids_here
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert set(found) == set(whole)
    r = reader.get(f"/api/v1/search?q={word}&scope=cluster&cursor=kd5")
    assert r.status == 400 and r.problem["code"] == "invalid_cursor"
    assert reader.get(f"/api/v1/search?q={word}&scope=galaxy").status == 400


def _multipart_with(content: bytes, fields: dict) -> dict:
    from harness import multipart
    body, ctype = multipart(fields, content=content, filename="doc.txt")
    return {"body": body, "headers": {"Content-Type": ctype}}


def test_anti_entropy_digests_repair_what_the_feed_skipped(cluster):
    """An owner in mode ro takes no replicas (the push is refused, its follower passes the
    record by); back in rw, only the anti-entropy pass can give it the file."""
    c = cluster
    target = c.members[-1]
    uploader = c.members[0]
    r = c.api(0).request("PUT", f"/api/v1/cluster/members/{c.ids[target]}/mode",
                         json_body={"mode": "ro"})
    assert r.status == 200, r.body
    wait_until(lambda: c.api(target).get("/api/v1/element").json()["mode"] == "ro", 10,
               "the target in mode ro")
    skipped = {}
    for k in range(40):
        content = f"while read-only {k}".encode()
        attr = upload(c, uploader, content, ack="local").json()
        if target in owners(c, attr["file_id"]):
            skipped[attr["file_id"]] = content
    assert skipped, "no file placed on the target"
    time.sleep(1)   # let the refused pushes and the follower pass them by
    assert not any(holds(c, target, fid) for fid in skipped)
    r = c.api(0).request("PUT", f"/api/v1/cluster/members/{c.ids[target]}/mode",
                         json_body={"mode": "rw"})
    assert r.status == 200, r.body
    wait_until(lambda: c.api(target).get("/api/v1/element").json()["mode"] == "rw", 10,
               "the target back in rw")
    started = time.time()
    assert c.api(uploader).request("POST", "/api/v1/cluster/repair").status == 202
    wait_until(lambda: all(holds(c, target, fid, content) for fid, content in skipped.items()),
               60, "the skipped files on the target after an anti-entropy pass")
    last = c.status(uploader)["replication"]["anti_entropy"]["last_full_pass"]
    assert last["started_at"] >= started and last["buckets_differing"] >= 1
    assert last["missing_copies"] >= len(skipped) and last["pushed"] >= len(skipped)
