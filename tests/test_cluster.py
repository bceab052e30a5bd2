"""A real cluster: four ``artstored`` processes, each in its own network namespace on one
bridge (tests/netns.py). The admin runs in node 0; members start with node 0 as their seed.

Shown here: a node not on the roster waits as a join request until ``artstore cluster
join``; every member sees every other alive; a token minted by the admin works on every
node and its account's suspension is refused everywhere within 5 s; a mode set on the
admin reaches the element and is recorded there with who and when; a SIGKILLed node is
suspected, then dead within the bound SWIM's parameters give, and alive again after a
restart; a partition heals by itself; a stranger, a bad signature, a replayed message and
a stale or forged document are refused; ``artstore cluster leave`` takes a node off.

The tests run in order on one cluster (starting four daemons costs more than all checks).
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import msgpack
import pytest
from nacl.signing import SigningKey

from artstored.engine.node import node_id_of
from artstored.replication import document as D
from artstored.replication import envelope as E
from artstored.replication.swim_config import SwimConfig, detection_bound
from harness import wait_until
from netns import NetLab, NsApi, NsDaemon

N = 4
PORT = 8470
REVOCATION_BOUND = 5.0     # the promise: a suspension refused everywhere within 5 s
# SWIM's bound for n members with memberlist's LAN parameters (swim_config.detection_bound):
# every live member holds a crashed one dead within it.
DEATH_BOUND = detection_bound(SwimConfig.lan(), N)


OLD_DOCUMENT: list[bytes] = []  # a document the admin signed early on, replayed later
ADMIN_TOKEN: list[str] = []   # the admin's token: once a node holds the cluster document,
                              # tokens are the admin's on every node


def api(d: NsDaemon) -> NsApi:
    return d.ns_api(ADMIN_TOKEN[0])


def status(d: NsDaemon) -> dict:
    r = api(d).get("/api/v1/cluster")
    assert r.status == 200, r.body
    return r.json()


def states(d: NsDaemon) -> dict[str, str]:
    return {m["node_id"]: m["state"] for m in status(d)["members"]}


def node_id(d: NsDaemon) -> str:
    return api(d).get("/api/v1/element").json()["node_id"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    with NetLab(N) as lab:
        admin = NsDaemon(lab, 0, str(root / "n0"), port=PORT,
                         config={"cluster": {"enabled": True, "role": "admin"}})
        admin.start()
        ADMIN_TOKEN[:] = [admin.admin_token()]
        seeds = [f"{lab.addr(0)}:{PORT}"]
        members = [NsDaemon(lab, i, str(root / f"n{i}"), port=PORT,
                            config={"cluster": {"seeds": seeds, "role": "member"}})
                   for i in range(1, N)]
        nodes = [admin, *members]
        try:
            yield lab, nodes
        finally:
            for d in nodes:
                d.kill()


def admit(admin: NsDaemon, member: NsDaemon) -> str:
    """Start ``member``, see its join request on the admin, admit it with the CLI."""
    member.start()
    with open(os.path.join(member.data_dir, "node.json")) as f:
        nid = json.load(f)["node_id"]
    wait_until(lambda: nid in [r["node_id"] for r in status(admin)["join_requests"]], 15,
               f"join request of {nid}")
    # Waiting, it holds the document its seed answered with: the admin's token works on
    # it, and its own accounts do not.
    wait_until(lambda: api(member).get("/api/v1/cluster").status == 200, 5,
               "the admin's token accepted by the waiting node")
    assert status(member)["state"] == "pending"
    creds = member.admin_credentials()
    r = member.ns_api().request(
        "POST", "/api/v1/auth/token", body=f"grant_type=client_credentials&client_id="
        f"{creds['client_id']}&client_secret={creds['client_secret']}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 421 and r.problem["code"] == "not_the_authority", r.body
    done = admin.cli("cluster", "join", nid, env={
        "ARTSTORE_CLIENT_ID": admin.admin_credentials()["client_id"],
        "ARTSTORE_CLIENT_SECRET": admin.admin_credentials()["client_secret"]})
    assert done.returncode == 0, done.stderr
    return nid


def test_nodes_join_through_the_admin_and_see_each_other_alive(cluster):
    lab, nodes = cluster
    admin = nodes[0]
    assert status(admin)["state"] == "member" and status(admin)["authority"]
    ids = [node_id(admin)] + [admit(admin, m) for m in nodes[1:]]
    for d in nodes:
        # A member's own token store is not used any more: the admin's token works here.
        wait_until(lambda d=d: states(d) == dict.fromkeys(ids, "alive"), 30,
                   f"all alive as seen by {d.node}")
    version = status(admin)["document"]["version"]
    for d in nodes:
        assert status(d)["document"]["version"] == version
    with open(os.path.join(admin.data_dir, "cluster", "document.bin"), "rb") as f:
        OLD_DOCUMENT[:] = [f.read()]
    metrics = nodes[1].ns_api().get("/metrics").body.decode()
    for line in ('artstore_cluster_members{state="alive"} 4.0',
                 f"artstore_cluster_document_version {float(version)}",
                 "artstore_cluster_on_roster 1.0", "artstore_cluster_sent_bytes_total"):
        assert line in metrics, line
    check = subprocess.run(["promtool", "check", "metrics"], input=metrics,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    text = admin.cli("cluster", "status", env={
        "ARTSTORE_CLIENT_ID": admin.admin_credentials()["client_id"],
        "ARTSTORE_CLIENT_SECRET": admin.admin_credentials()["client_secret"]})
    out = text.stdout.decode()
    assert text.returncode == 0 and all(i in out for i in ids), out
    # On a member the CLI signs in where the member says (the admin), then asks the member.
    text = nodes[2].cli("cluster", "status", "--json", env={
        "ARTSTORE_CLIENT_ID": admin.admin_credentials()["client_id"],
        "ARTSTORE_CLIENT_SECRET": admin.admin_credentials()["client_secret"]})
    assert text.returncode == 0, text.stderr
    assert json.loads(text.stdout)["node_id"] == ids[2]


def _member_api(member: NsDaemon, token: str) -> NsApi:
    return member.ns_api(token)


def test_admin_tokens_verify_everywhere_and_a_suspension_is_refused_within_5_s(cluster):
    lab, nodes = cluster
    admin = nodes[0]
    client_id, secret = admin.create_account("reader", "user")
    token = admin.token_for(client_id, secret)
    created_at = time.monotonic()
    for d in nodes:
        # A new account is in the next document, which the admin signs at once.
        wait_until(lambda d=d: _member_api(d, token).get("/api/v1/element").status == 200,
                   REVOCATION_BOUND, f"the new account's token accepted on node {d.node}")
    print(f"a new account's token worked everywhere after "
          f"{time.monotonic() - created_at:.2f} s")
    # Members do not mint tokens: the admin does.
    r = nodes[1].ns_api().request(
        "POST", "/api/v1/auth/token", body=f"grant_type=client_credentials&client_id="
        f"{client_id}&client_secret={secret}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 421 and r.problem["code"] == "not_the_authority", r.body
    assert r.problem["authority"] == [f"{lab.addr(0)}:{PORT}"]

    r = admin.api().request("PATCH", f"/api/v1/accounts/{client_id}",
                            json_body={"status": "suspended"})
    assert r.status == 200, r.body
    suspended_at = time.monotonic()
    for d in nodes:
        # Waited for far longer than promised, so that the assertion below is what fails.
        wait_until(lambda d=d: _member_api(d, token).get("/api/v1/element").status == 401,
                   60, f"suspension refused on node {d.node}")
    took = time.monotonic() - suspended_at
    assert took < REVOCATION_BOUND, f"took {took:.2f} s, promised {REVOCATION_BOUND} s"
    r = _member_api(nodes[2], token).get("/api/v1/element")
    assert r.problem["code"] == "token_revoked"


def test_a_mode_set_on_the_admin_reaches_the_element_with_who_and_when(cluster):
    lab, nodes = cluster
    admin, target = nodes[0], nodes[2]
    nid = node_id(target)
    r = admin.api().request("PUT", f"/api/v1/cluster/members/{nid}/mode",
                            json_body={"mode": "ro"})
    assert r.status == 200, r.body
    wait_until(lambda: api(target).get("/api/v1/element").json()["mode"] == "ro", 10,
               "mode ro on the element")
    admin_id = admin.admin_credentials()["client_id"]
    events = api(target).get("/api/v1/audit?kind=element.mode").json()["items"]
    assert events and events[0]["actor"]["id"] == admin_id
    assert events[0]["data"]["to"] == "ro" and "requested_at" in events[0]["data"]
    # Uploads are refused there now, as for a mode set locally.
    assert api(target).upload(b"x").status == 409
    # A mode for a node that is not a member is refused, and a member cannot set one.
    r = admin.api().request("PUT", "/api/v1/cluster/members/n-0000000000000000/mode",
                            json_body={"mode": "ro"})
    assert r.status == 404 and r.problem["code"] == "not_a_member"
    r = api(target).request("PUT", f"/api/v1/cluster/members/{nid}/mode",
                             json_body={"mode": "rw"})
    assert r.status == 421 and r.problem["code"] == "not_the_authority"
    r = admin.api().request("PUT", f"/api/v1/cluster/members/{nid}/mode",
                            json_body={"mode": "rw"})
    assert r.status == 200
    wait_until(lambda: api(target).get("/api/v1/element").json()["mode"] == "rw", 10,
               "mode rw again")


def test_a_killed_node_is_suspected_then_dead_then_alive_after_restart(cluster):
    lab, nodes = cluster
    admin, victim = nodes[0], nodes[3]
    vid = node_id(victim)
    before = {m["node_id"]: m["incarnation"] for m in status(admin)["members"]}[vid]
    victim.kill()
    killed_at = time.monotonic()
    seen = set()

    def dead_everywhere():
        for d in nodes[:3]:
            state = states(d)[vid]
            seen.add(state)
            if state != "dead":
                return False
        return True

    wait_until(dead_everywhere, DEATH_BOUND + 5, "the killed node dead on every member")
    took = time.monotonic() - killed_at
    assert "suspect" in seen, seen    # suspected first (the suspicion lasts >= 4 s)
    print(f"killed node dead everywhere after {took:.1f} s (bound {DEATH_BOUND:.1f} s)")
    assert took < DEATH_BOUND
    victim.start()
    wait_until(lambda: all(states(d)[vid] == "alive" for d in nodes), 30,
               "the restarted node alive everywhere")
    after = {m["node_id"]: m["incarnation"] for m in status(admin)["members"]}[vid]
    assert after > before


def test_a_partition_heals_by_itself(cluster):
    lab, nodes = cluster
    ids = [node_id(d) for d in nodes]
    lab.partition([[0, 1], [2, 3]])
    try:
        wait_until(lambda: states(nodes[0])[ids[3]] == "dead" and
                   states(nodes[3])[ids[0]] == "dead", DEATH_BOUND + 10,
                   "each side holds the other dead")
    finally:
        lab.heal()
    wait_until(lambda: all(set(states(d).values()) == {"alive"} for d in nodes), 60,
               "every member alive again after the partition healed")


def _key(nodes, i: int) -> SigningKey:
    with open(os.path.join(nodes[i].data_dir, "keys", "node.key"), "rb") as f:
        return SigningKey(f.read())


def _signer(nodes, i: int) -> E.Signer:
    key = _key(nodes, i)
    return E.Signer(node_id_of(bytes(key.verify_key)), key)


def _post(lab, d: NsDaemon, path: str, blob: bytes):
    return NsApi(lab, 0, PORT, host=lab.addr(d.node)).request(
        "POST", path, body=blob, headers={"Content-Type": "application/msgpack"})


def test_strangers_forgeries_replays_and_stale_documents_are_refused(cluster):
    lab, nodes = cluster
    member = nodes[1]
    to_member = {"rcpt": node_id(member)}     # every message names its recipient
    version = status(member)["document"]["version"]
    stale_blob = OLD_DOCUMENT[0]
    assert D.parse(stale_blob).version < version

    stranger_key = SigningKey.generate()
    stranger = E.Signer(node_id_of(bytes(stranger_key.verify_key)), stranger_key)
    r = _post(lab, member, "/cluster/v1/swim", stranger.pack({"t": "gossip", **to_member}))
    assert r.status == 403 and r.problem["code"] == "unknown_sender"

    # Messages in node 3's name, signed with its real key (read from its data directory).
    # Node 3 is stopped meanwhile: its own messages would otherwise be refused after ours,
    # whose counters start later than its (a counter only grows, per key).
    nodes[3].kill()
    as_m3 = _signer(nodes, 3)
    forged = E.Signer(as_m3.sender_id, SigningKey.generate())
    r = _post(lab, member, "/cluster/v1/swim", forged.pack({"t": "gossip", **to_member}))
    assert r.status == 401 and r.problem["code"] == "bad_signature"

    blob = as_m3.pack({"t": "gossip", **to_member})
    assert _post(lab, member, "/cluster/v1/swim", blob).status == 204
    r = _post(lab, member, "/cluster/v1/swim", blob)
    assert r.status == 409 and r.problem["code"] == "replayed_message"
    # A genuine message for another member, replayed here: refused.
    for_other = as_m3.pack({"t": "gossip", "rcpt": node_id(nodes[2])})
    r = _post(lab, member, "/cluster/v1/swim", for_other)
    assert r.status == 400 and r.problem["code"] == "envelope_misdirected"

    # A newer document signed by a member (on the roster, not an admin): forged, refused.
    with open(os.path.join(nodes[0].data_dir, "cluster", "document.bin"), "rb") as f:
        current = D.parse(f.read())
    fake = D.sign(dict(D.evolve(current, time.time(), modes={}), version=version + 100),
                  as_m3.sender_id, _key(nodes, 3))
    update = {"t": "gossip", "u": [{"k": "doc", "v": fake.version, "d": fake.blob}],
              **to_member}
    assert _post(lab, member, "/cluster/v1/swim", as_m3.pack(update)).status == 204
    # An older document, really signed by the admin, replayed: stale, ignored.
    update = {"t": "gossip", "u": [{"k": "doc", "v": D.parse(stale_blob).version,
                                    "d": stale_blob}], **to_member}
    assert _post(lab, member, "/cluster/v1/swim", as_m3.pack(update)).status == 204
    after = status(member)
    assert after["document"]["version"] == version
    assert after["refused"].get("cluster_document_forged", 0) >= 1
    assert after["refused"].get("replayed_message", 0) >= 1
    assert len(after["members"]) == N

    # The join endpoint refuses a request whose sender is not its key's id, and a replay.
    bad = E.pack({"t": "join", "key": bytes(stranger_key.verify_key), "address": "h:1",
                  "name": "x"}, "n-0000000000000000", stranger_key, 1, time.time())
    r = _post(lab, nodes[0], "/cluster/v1/join", bad)
    assert r.status == 400 and r.problem["code"] == "envelope_malformed"
    join = stranger.pack({"t": "join", "key": bytes(stranger_key.verify_key),
                          "address": "h:1", "name": "x"})
    answer = msgpack.unpackb(_post(lab, nodes[0], "/cluster/v1/join", join).body)
    assert D.parse(answer["document"]).version >= version
    r = _post(lab, nodes[0], "/cluster/v1/join", join)
    assert r.status == 409 and r.problem["code"] == "replayed_message"

    nodes[3].start()
    wait_until(lambda: all(set(states(d).values()) == {"alive"} for d in nodes), 60,
               "node 3 alive again everywhere")


def test_leave_takes_a_node_off_the_roster(cluster):
    lab, nodes = cluster
    admin, leaving = nodes[0], nodes[3]
    lid = node_id(leaving)
    done = admin.cli("cluster", "leave", lid, env={
        "ARTSTORE_CLIENT_ID": admin.admin_credentials()["client_id"],
        "ARTSTORE_CLIENT_SECRET": admin.admin_credentials()["client_secret"]})
    assert done.returncode == 0, done.stderr
    version = status(admin)["document"]["version"]
    for d in nodes[:3]:
        wait_until(lambda d=d: lid not in states(d), 10,
                   f"{lid} off node {d.node}'s view (admin at v{version})")
    # It waits as a join request again, and its messages are refused by the others.
    wait_until(lambda: status(leaving)["state"] == "pending", 10, "the node left is pending")
    wait_until(lambda: lid in [r["node_id"] for r in status(admin)["join_requests"]], 10,
               "its join request")
    leaving.kill()     # (its own messages would be refused after ours, as above)
    r = _post(lab, nodes[1], "/cluster/v1/swim",
              _signer(nodes, 3).pack({"t": "gossip", "rcpt": node_id(nodes[1])}))
    assert r.status == 403 and r.problem["code"] == "unknown_sender"
