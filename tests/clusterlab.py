"""A running cluster of real daemons in network namespaces, for tests and benchmarks:
node 0 is the admin, the others start with it as their seed and are admitted through its
API. Everything is torn down by the NetLab (``with NetLab(n) as lab``)."""

from __future__ import annotations

import json
import os

from harness import wait_until
from netns import NetLab, NsApi, NsDaemon

PORT = 8470


class Cluster:
    def __init__(self, lab: NetLab, root: str, n: int, config: dict | None = None):
        self.lab = lab
        extra = config or {}
        admin_cfg = {**extra, "cluster": {"enabled": True, "role": "admin",
                                          **extra.get("cluster", {})}}
        self.nodes = [NsDaemon(lab, 0, os.path.join(root, "n0"), port=PORT, config=admin_cfg)]
        seeds = [f"{lab.addr(0)}:{PORT}"]
        for i in range(1, n):
            cfg = {**extra, "cluster": {"seeds": seeds, "role": "member",
                                        **extra.get("cluster", {})}}
            self.nodes.append(NsDaemon(lab, i, os.path.join(root, f"n{i}"), port=PORT,
                                       config=cfg))
        self.token = ""
        self.ids: list[str] = []

    def start(self) -> "Cluster":
        """Start every node, admit the members, wait until all see all alive."""
        admin = self.nodes[0].start()
        self.token = admin.admin_token()
        self.ids = [self.node_id(0)]
        for i, d in enumerate(self.nodes[1:], 1):
            d.start()
            nid = self.node_id(i)
            wait_until(lambda nid=nid: nid in [r["node_id"] for r in
                                               self.status(0)["join_requests"]],
                       15, f"join request of node {i}")
            r = self.api(0).request("PUT", f"/api/v1/cluster/members/{nid}")
            assert r.status == 200, r.body
            self.ids.append(nid)
        self.wait_all_alive()
        return self

    def node_id(self, i: int) -> str:
        with open(os.path.join(self.nodes[i].data_dir, "node.json")) as f:
            return json.load(f)["node_id"]

    def api(self, i: int, token: str | None = None) -> NsApi:
        """A client of node i, with the admin's token (valid on every node)."""
        return self.nodes[i].ns_api(token or self.token)

    def status(self, i: int) -> dict:
        r = self.api(i).get("/api/v1/cluster")
        assert r.status == 200, r.body
        return r.json()

    def states(self, i: int) -> dict[str, str]:
        return {m["node_id"]: m["state"] for m in self.status(i)["members"]}

    def wait_all_alive(self, timeout: float = 60) -> None:
        for i in range(len(self.nodes)):
            if self.nodes[i].proc is None or self.nodes[i].proc.poll() is not None:
                continue
            wait_until(lambda i=i: set(self.states(i)) == set(self.ids) and
                       set(self.states(i).values()) == {"alive"}, timeout,
                       f"every member alive as node {i} sees it")

    def index_of(self, node_id: str) -> int:
        return self.ids.index(node_id)
