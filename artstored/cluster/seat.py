"""An admin node's seat at an etcd-backed authority (``[cluster] authority = "etcd"``).

Every admin node keeps the admin state in etcd (``EtcdAuthority``) instead of on its own
disk; etcd's lease decides which admin signs (the *leader*). What each admin does here:

- holds its contribution to the document in etcd: the public token keys it mints with and
  its accounts' states (status, generation, role) and revocations. The leader signs the
  union of every admin's contribution, so a token minted by any admin verifies on every
  node, and keeps verifying after that admin is lost;
- writes every join request it receives to etcd, so the leader sees them all;
- on becoming leader, takes the newest document from etcd (never older than its own)
  before it signs anything;
- publishes a document only by compare-and-swap in etcd, fenced on its lease: a leader
  deposed without noticing cannot overwrite its successor's document.

Accounts stay on the admin node that created them: sign in there (or at any admin that
has the account); their tokens are valid everywhere.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..engine.errors import Busy
from ..replication import document as D
from .authority import token_keys_of
from .etcd_authority import AuthorityUnavailable, EtcdAuthority

log = logging.getLogger("artstored.cluster.seat")

LEASE_TTL = 5


class LeadershipLost(Busy):
    """This admin stopped being the leader before its change was stored: nothing changed."""

    code = "authority_moved"
    title = "The cluster authority moved to another admin node; retry"


class Seat:
    def __init__(self, node, endpoints: list[str]):
        self.node = node
        self.etcd = EtcdAuthority(endpoints, node.id, lease_ttl=LEASE_TTL)
        self.started = False
        self.was_leader = False
        self._contributed: dict | None = None
        self._joins_noted: dict[str, float] = {}
        self.unavailable = False

    @property
    def is_leader(self) -> bool:
        return self.started and self.etcd.is_leader

    async def start(self) -> None:
        try:
            await self.etcd.start()
            self.started = True
        except AuthorityUnavailable as exc:
            log.error("etcd not reachable yet (%s); retrying", exc.detail)

    async def close(self) -> None:
        if self.started:
            await self.etcd.close()

    async def step(self) -> None:
        """Once a second from the node's loop: start if not yet, contribute, and on
        becoming leader take over the newest document. etcd being out of reach is logged
        when it starts and ends, not every second."""
        try:
            await self._step()
            if self.unavailable:
                log.warning("etcd answers again")
                self.unavailable = False
        except AuthorityUnavailable as exc:
            if not self.unavailable:
                log.error("etcd out of reach: %s", exc.detail)
                self.unavailable = True

    async def _step(self) -> None:
        if not self.started:
            await self.start()
            if not self.started:
                return
        await self._contribute()
        leader = self.etcd.is_leader
        if leader and not self.was_leader:
            await self._take_over()
        self.was_leader = leader
        if leader:
            await self._sync_joins()

    async def _contribute(self) -> None:
        svc = self.node.svc
        loop = asyncio.get_running_loop()
        accounts, revoked = await loop.run_in_executor(None, svc.accounts.cluster_state)
        mine = {"token_keys": token_keys_of(svc.keyring), "accounts": accounts,
                "revoked": revoked}
        if mine != self._contributed:
            await self.etcd.put_contribution(self.node.id, mine)
            self._contributed = mine

    async def merged(self) -> tuple[dict, dict, dict]:
        """(token_keys, accounts, revoked): the union of every admin's contribution."""
        keys, accounts, revoked = {}, {}, {}
        for info in (await self.etcd.contributions()).values():
            keys.update(info.get("token_keys") or {})
            accounts.update(info.get("accounts") or {})
            revoked.update(info.get("revoked") or {})
        return keys, accounts, revoked

    async def _take_over(self) -> None:
        node = self.node
        blob = await self.etcd.load_document()
        async with node._lock:
            if blob is None:
                if node.doc is None:
                    first = node.authority.bootstrap(
                        time.time(), address=node.advertise, name=node.identity.name,
                        token_issuer=node.token_issuer,
                        replication_factor=node.replication_factor,
                        weight=await asyncio.get_running_loop().run_in_executor(
                            None, node.capacity_weight))
                    if await self.etcd.store_document(None, first.version, first.blob):
                        await node.files.persist(first)
                        node.doc = first
                        node.authority.adopt(first)
                        await node._apply(first)
                        log.info("cluster bootstrapped in etcd: %s is its first admin",
                                 node.id)
                elif await self.etcd.store_document(None, node.doc.version, node.doc.blob):
                    log.info("etcd was empty: seeded it with document v%s", node.doc.version)
                return
            try:
                doc = D.accept(node.doc, blob, pinned=node.pinned)
            except D.StaleDocument:
                doc = node.doc                  # ours is as new: nothing to take
            if doc is not node.doc:
                node.doc = doc
                await node._apply(doc)
            node.authority.adopt(node.doc)
        log.info("leading the cluster authority from document v%s", node.doc.version)

    async def _sync_joins(self) -> None:
        for node_id, info in (await self.etcd.join_requests()).items():
            if node_id in self.node.doc.roster:
                await self.etcd.remove_join_request(node_id)
                continue
            try:
                self.node.authority.note_join_request(
                    info["seen"], node_id, info["key"], info["address"], info["name"],
                    role=info.get("role", "member"), weight=info.get("weight", 1.0))
            except Exception as exc:           # a malformed entry: not ours to crash on
                log.warning("ignoring the join request of %s in etcd: %s", node_id, exc)

    def note_join(self, node_id: str, key: bytes, address: str, name: str,
                  role: str, weight: float = 1.0) -> None:
        """Record a join request in etcd (at most every 5 s per node; in the background)."""
        now = time.time()
        if now - self._joins_noted.get(node_id, 0) < 5 or not self.started:
            return
        self._joins_noted[node_id] = now
        if len(self._joins_noted) > 10_000:
            self._joins_noted.clear()
        info = {"key": key, "address": address, "name": name, "role": role, "seen": now,
                "weight": weight}
        task = asyncio.get_running_loop().create_task(self._put_join(node_id, info))
        self.node._tasks.add(task)
        task.add_done_callback(self.node._tasks.discard)

    async def _put_join(self, node_id: str, info: dict) -> None:
        try:
            await self.etcd.add_join_request(node_id, info)
        except AuthorityUnavailable as exc:
            log.warning("could not record %s's join request in etcd: %s", node_id,
                        exc.detail)

    async def store(self, current: D.Document | None, new: D.Document) -> None:
        """Compare-and-swap ``new`` into etcd; LeadershipLost if this node is no longer the
        leader or another admin stored a document meanwhile (nothing changed then)."""
        ok = await self.etcd.store_document(current.version if current else None,
                                            new.version, new.blob)
        if not ok:
            self.was_leader = False             # take over again before signing anything
            raise LeadershipLost("another admin node leads the cluster authority now")
