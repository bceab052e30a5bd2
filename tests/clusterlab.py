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

    def start(self, count: int | None = None) -> "Cluster":
        """Start the first ``count`` nodes (default all), admit the members, wait until
        all see all alive."""
        admin = self.nodes[0].start()
        self.token = admin.admin_token()
        self.ids = [self.node_id(0)]
        for i in range(1, count or len(self.nodes)):
            self.add(i, wait=False)
        self.wait_all_alive()
        return self

    def add(self, i: int, wait: bool = True) -> str:
        """Start node i, admit it on the admin; its node id."""
        self.nodes[i].start()
        nid = self.node_id(i)
        wait_until(lambda: nid in [r["node_id"] for r in self.status(0)["join_requests"]],
                   15, f"join request of node {i}")
        r = self.api(0).request("PUT", f"/api/v1/cluster/members/{nid}")
        assert r.status == 200, r.body
        self.ids.append(nid)
        if wait:
            self.wait_all_alive()
        return nid

    def remove(self, i: int) -> None:
        """Take node i off the roster (it keeps running, waiting to join again)."""
        r = self.api(0).request("DELETE", f"/api/v1/cluster/members/{self.ids[i]}")
        assert r.status == 200, r.body
        self.ids[i] = None

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

    @property
    def members(self) -> list[int]:
        """Indexes of the nodes on the roster."""
        return [i for i, nid in enumerate(self.ids) if nid is not None]

    def wait_all_alive(self, timeout: float = 60) -> None:
        roster = {self.ids[i] for i in self.members}
        for i in self.members:
            if self.nodes[i].proc is None or self.nodes[i].proc.poll() is not None:
                continue
            wait_until(lambda i=i: set(self.states(i)) == roster and
                       set(self.states(i).values()) == {"alive"}, timeout,
                       f"every member alive as node {i} sees it")

    def index_of(self, node_id: str) -> int:
        return self.ids.index(node_id)
