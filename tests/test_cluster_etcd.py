"""An authority that survives the loss of a host: two admin daemons with their admin state
in a real three-member etcd (``[cluster] authority = "etcd"``) and one member, on loopback.
The admin holding etcd's lease signs; SIGKILL it and the other takes over within the
lease, with the newest document; tokens minted by either admin verify on the member, also
after one is gone; a mode set through the new leader reaches the member; and the etcd
cluster's own leader can be killed meanwhile."""

from __future__ import annotations

import json
import os
import time

import pytest

from etcd_lab import EtcdLab
from harness import Api, Daemon, wait_until

LEASE_BOUND = 5 + 3      # the seat's lease TTL, and the time to notice and take over


@pytest.fixture
def etcd(tmp_path):
    with EtcdLab(tmp_path / "etcd") as lab:      # started, with a raft leader
        yield lab


def _node_id(d: Daemon) -> str:
    with open(os.path.join(d.data_dir, "node.json")) as f:
        return json.load(f)["node_id"]


def test_admins_share_the_authority_through_etcd(make_daemon, etcd):
    cfg = {"authority": "etcd", "etcd_endpoints": etcd.endpoints, "role": "admin",
           "enabled": True}
    a = make_daemon("a", config={"cluster": cfg})
    api_a = a.api()
    wait_until(lambda: api_a.get("/api/v1/cluster").json().get("authority"), 20,
               "admin a leads")
    seeds = [f"127.0.0.1:{a.port}"]
    b = make_daemon("b", config={"cluster": {**cfg, "seeds": seeds}})
    c = make_daemon("c", config={"cluster": {"seeds": seeds, "role": "member"}})
    for d in (b, c):
        nid = _node_id(d)
        wait_until(lambda nid=nid: nid in [r["node_id"] for r in
                                           api_a.get("/api/v1/cluster").json()
                                           ["join_requests"]], 20, f"join request of {nid}")
        r = api_a.request("PUT", f"/api/v1/cluster/members/{nid}")
        assert r.status == 200, r.body
    roster = {m["node_id"]: m["role"] for m in api_a.get("/api/v1/cluster").json()["members"]}
    assert roster == {_node_id(a): "admin", _node_id(b): "admin", _node_id(c): "member"}
    wait_until(lambda: {m["state"] for m in api_a.get("/api/v1/cluster").json()["members"]}
               == {"alive"}, 30, "the three nodes alive")

    # Each admin mints tokens; both verify on the member.
    token_a = a.admin_token()
    b_creds = b.admin_credentials()
    token_b = b.token_for(b_creds["client_id"], b_creds["client_secret"])
    for token in (token_a, token_b):
        wait_until(lambda t=token: Api(c.port, t).get("/api/v1/element").status == 200, 10,
                   "an admin's token accepted on the member")

    # The leading admin dies; the other takes over within the lease.
    a.kill()
    killed = time.monotonic()
    api_b = Api(b.port, token_b)
    # Waited for far longer than promised, so that the assertion below is what fails.
    wait_until(lambda: api_b.get("/api/v1/cluster").json().get("authority"), 60,
               "admin b leads")
    took = time.monotonic() - killed
    print(f"etcd authority: admin b signs {took:.1f} s after admin a was killed")
    assert took < LEASE_BOUND, f"took {took:.1f} s, promised {LEASE_BOUND} s"

    # etcd's own raft leader dies too; the authority goes on.
    old_leader = etcd.wait_for_leader()
    etcd.kill(old_leader)
    etcd.wait_for_leader(exclude=old_leader)
    # (503 authority_unavailable while etcd's election settles: a client retries)
    wait_until(lambda: api_b.request("PUT", f"/api/v1/cluster/members/{_node_id(c)}/mode",
                                     json_body={"mode": "ro"}).status == 200, 15,
               "a mode change accepted by the new leader")
    wait_until(lambda: Api(c.port, token_b).get("/api/v1/element").json()["mode"] == "ro",
               30, "the mode set through the new leader on the member")
    doc = Api(c.port, token_b).get("/api/v1/cluster").json()["document"]
    assert doc["signer"] == _node_id(b)
    # Tokens of the lost admin still verify: its keys stayed in the document.
    assert Api(c.port, token_a).get("/api/v1/element").status == 200
