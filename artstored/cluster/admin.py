"""The admin's operations on the cluster document, one part of ``ClusterNode`` (a mixin
over its state, split out for size): join, leave, a member's mode, and the refresh of token
keys and accounts; each makes a new signed version that is stored (in etcd, with an etcd
authority), persisted, audited and spread before the call returns."""

from __future__ import annotations

import asyncio
import time

from ..engine import wal as W
from ..engine.errors import ArtStoreError
from ..replication import document as D
from .authority import Authority, token_keys_of


class NotAuthority(ArtStoreError):
    """This node does not sign the cluster document: ask an admin."""

    code = "not_the_authority"
    status = 421
    title = "This node is not the cluster authority"


class AuthorityOps:
    def raise_not_authority(self) -> None:
        admins = [self.doc.address(a) for a in self.doc.admins()] if self.doc else []
        raise NotAuthority("send this to the cluster's admin", authority=admins)

    def _require_authority(self) -> Authority:
        if not self.is_authority or self.doc is None:
            self.raise_not_authority()
        return self.authority

    async def admit(self, node_id: str, actor: W.Actor) -> dict:
        """Put a node that asked to join on the roster. Durable (and spreading) when it
        returns; idempotent."""
        async with self._lock:
            doc = self._require_authority().admit(time.time(), node_id)
            if doc is not None:
                await self._publish(doc, W.CLUSTER_ROSTER, actor,
                                    {"node_id": node_id, "change": "join"})
        return self.status()

    async def remove(self, node_id: str, actor: W.Actor) -> dict:
        """Take a node off the roster (idempotent)."""
        async with self._lock:
            doc = self._require_authority().remove(time.time(), node_id)
            if doc is not None:
                await self._publish(doc, W.CLUSTER_ROSTER, actor,
                                    {"node_id": node_id, "change": "leave"})
        return self.status()

    async def set_mode(self, node_id: str, mode: str, actor: W.Actor) -> dict:
        async with self._lock:
            doc = self._require_authority().set_mode(time.time(), node_id, mode,
                                                     by_id=actor.id, by_name=actor.name)
            await self._publish(doc, W.CLUSTER_MODE, actor, {"node_id": node_id,
                                                              "mode": mode})
        return self.status()

    async def _refresh_authority(self) -> None:
        if self.seat is not None:
            keys, accounts, revoked = await self.seat.merged()   # every admin's
        else:
            loop = asyncio.get_running_loop()
            accounts, revoked = await loop.run_in_executor(None,
                                                           self.svc.accounts.cluster_state)
            keys = token_keys_of(self.svc.keyring)
        async with self._lock:
            doc = self.authority.refresh(time.time(), token_keys=keys, accounts=accounts,
                                         revoked=revoked)
            if doc is not None:
                await self._publish(doc, None, None, None)

    async def _publish(self, doc: D.Document, event: str | None, actor, data) -> None:
        """Store (in etcd, fenced on this admin's lease, when the authority is there),
        persist and audit a document this admin signed, then spread it. LeadershipLost
        (nothing changed) if another admin leads now."""
        if self.seat is not None:
            await self.seat.store(self.doc, doc)
        await self.files.persist(doc)
        if event is not None:
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: self.svc.store.record_event(
                    event, actor, {**data, "document": doc.version}))
        previous, self.doc = self.doc, doc
        self.authority.adopt(doc)
        if self.membership is not None:
            self._handle(self.membership.publish_document(time.monotonic(), doc.version,
                                                          doc.blob))
        if previous is None or previous.roster != doc.roster or previous.modes != doc.modes:
            await self._apply(doc)
