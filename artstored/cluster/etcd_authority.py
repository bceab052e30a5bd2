"""The admin state of a cluster kept in etcd (``[cluster] authority = "etcd"``).

Any node with the admin role may run an ``EtcdAuthority``; etcd decides which one signs.
No consensus of our own: leadership is one key, ``<prefix>leader``, created only if absent
and bound to an etcd lease this node keeps alive (etcd's own election recipe). The document
is written only by a transaction that checks, in etcd, that the writer still holds that key
under its lease: a leader deposed without noticing (paused, cut off) cannot overwrite a
newer leader's work. Keys: ``leader`` (node id, leased), ``document`` (the signed blob),
``document_version`` (decimal ASCII), ``joins/<node id>`` (msgpack), ``admins/<node id>``
(msgpack: what each admin contributes to the document: its token keys and accounts).

Every call that talks to etcd returns an answer etcd gave or raises ``AuthorityUnavailable``
after ``timeout`` seconds, trying the endpoints in turn (a member may be down, or cut off
from the quorum and silent); no grpc or aetcd error escapes. Plain-text gRPC only: aetcd
1.0 has no TLS, so etcd must be on a trusted network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse

import aetcd
import aetcd.exceptions as aex
import grpc
import msgpack
from aetcd import rpc
from aetcd.transactions import BaseCompare

from ..engine.errors import ArtStoreError

log = logging.getLogger("artstored.cluster.etcd")


class AuthorityUnavailable(ArtStoreError):
    """No etcd member gave an answer in time (or etcd refused the request): the cluster's
    admin state can be neither read nor changed now. Nothing is known to have changed."""

    code = "authority_unavailable"
    status = 503
    title = "The cluster authority (etcd) is unavailable"


# Answers to a request wrong in itself (too large, unknown lease, refused permission):
# another member would say the same. Any other error (member down, electing, no quorum:
# "no leader", "context deadline exceeded") is tried again on the next endpoint.
_FINAL = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
          grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE,
          grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
          grpc.StatusCode.UNIMPLEMENTED}


def _is_final(error: BaseException) -> bool:
    # aetcd raises its own ClientError "from" the grpc error, which carries the code.
    rpc_error = error if isinstance(error, grpc.RpcError) else error.__cause__
    return isinstance(rpc_error, grpc.RpcError) and rpc_error.code() in _FINAL


_TX = aetcd.client.Transactions()  # builders of compares and operations (no I/O)


class _LeaseIs(BaseCompare):
    """Compare on the lease a key is attached to: etcd has it (3.3+), aetcd does not."""

    def build_compare(self, compare):
        compare.target = rpc.Compare.LEASE
        compare.lease = int(self.value)


def _host_port(endpoint: str) -> tuple[str, int]:
    url = urllib.parse.urlsplit(endpoint if "//" in endpoint else "//" + endpoint)
    if url.scheme not in ("", "http"):
        raise ValueError(f"etcd endpoint {endpoint!r}: only http:// (aetcd has no TLS)")
    return url.hostname or "127.0.0.1", url.port or 2379


def _first_value(range_response) -> bytes | None:
    """The value of a ``get`` inside a transaction's answer (aetcd: [(value, kv)])."""
    return range_response[0][0] if range_response else None


class EtcdAuthority:
    """The admin state of a cluster, kept in etcd under a key prefix.

    ``start()`` connects and campaigns in the background; ``is_leader`` says whether this
    node may sign now. Writes of the document are fenced in etcd, so callers need no lock of
    their own: a ``store_document`` that returns True was made by the leader of that moment.
    Use one instance on one event loop, from ``start()`` to ``close()`` (grpc.aio delivers
    each call's completion to the loop that made it)."""

    def __init__(self, endpoints: list[str], node_id: str, *,
                 prefix: str = "/artstore/cluster/", lease_ttl: int = 5,
                 timeout: float = 5.0):
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self._addrs = [_host_port(e) for e in endpoints]
        self.node_id = node_id
        self._ttl = lease_ttl
        self._timeout = timeout
        p = prefix.encode()
        self._k_leader, self._k_doc = p + b"leader", p + b"document"
        self._k_ver, self._k_joins = p + b"document_version", p + b"joins/"
        self._k_admins = p + b"admins/"
        self._clients: list[aetcd.Client] = []
        self._current = 0                   # the endpoint that answered last
        self._lease_id: int | None = None   # the lease we hold the leader key with
        self._until = 0.0                   # monotonic time our lease surely lives until
        self._task: asyncio.Task | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, and start campaigning for leadership in a background task. Raises
        AuthorityUnavailable (and holds nothing open) if no member answers a linearizable
        read, i.e. no quorum is reachable, within ``timeout``."""
        if self._task is not None:
            raise RuntimeError("already started")
        # Each attempt gets a share of the budget so a silent member cannot eat all of it.
        attempt = max(1.0, self._timeout / len(self._addrs))
        self._clients = [aetcd.Client(h, p, timeout=attempt) for h, p in self._addrs]
        try:
            await self._call("reach etcd", lambda c: c.get(self._k_leader))
        except AuthorityUnavailable:
            await self._close_clients()
            raise
        self._task = asyncio.create_task(self._run(), name=f"etcd-authority-{self.node_id}")

    async def close(self) -> None:
        """Stop campaigning and give leadership up at once: the lease is revoked, so its key
        is deleted and another admin can take over without waiting for the TTL. If etcd is
        unreachable the lease simply expires after ``lease_ttl``. Never raises."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        lease_id, self._lease_id, self._until = self._lease_id, None, 0.0
        if lease_id is not None:
            try:  # after lease_ttl it has expired anyway
                await self._call("revoke the lease", lambda c: c.revoke_lease(lease_id),
                                 budget=min(self._timeout, self._ttl))
            except AuthorityUnavailable as e:
                log.warning("could not revoke the leader lease: %s", e.detail)
        await self._close_clients()

    async def _close_clients(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 2)
        self._clients = []

    # --- leadership -----------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True only while this node holds the leader key under a lease that, by our own
        clock, etcd has not yet expired: counted from when we *sent* the last successful
        grant or renewal, so it ends no later than etcd's expiry. Turns False by itself when
        renewals fail. A hint for what to do; the fence is ``store_document``'s txn."""
        return self._lease_id is not None and time.monotonic() < self._until

    async def leader(self) -> str | None:
        """The node id of the current leader as etcd has it now (linearizable read), or
        None when no node holds the key."""
        kv = await self._call("read the leader", lambda c: c.get(self._k_leader))
        return kv.value.decode() if kv is not None else None

    async def _run(self) -> None:
        while True:
            try:
                if self._lease_id is None:
                    await self._campaign()
                await self._hold()
            except AuthorityUnavailable as e:
                log.warning("etcd unreachable while campaigning: %s", e.detail)
                await asyncio.sleep(self._ttl / 3)
            except Exception:  # a bug must not end the campaign for the daemon's life
                log.exception("etcd authority: campaign failed")
                await asyncio.sleep(self._ttl / 3)

    async def _campaign(self) -> None:
        """Return once we hold the leader key. While another holds it we poll (not watch:
        aetcd's watch delivers stream errors as events and can block in cancel() on a dead
        stream; a read every 0.5 s costs etcd nothing for a handful of admins)."""
        t = _TX
        while True:
            kv = await self._call("read the leader", lambda c: c.get(self._k_leader))
            if kv is not None:  # even our own id: a previous process's lease, let it expire
                await asyncio.sleep(min(0.5, self._ttl / 4))
                continue
            sent = time.monotonic()
            lease = await self._call("grant a lease", lambda c: c.lease(self._ttl))
            ok, resp = await self._call("claim leadership", lambda c: c.transaction(
                compare=[t.create(self._k_leader) == 0],
                success=[t.put(self._k_leader, self.node_id.encode(), lease=lease.id)],
                failure=[t.get(self._k_leader)]))
            # A retried claim finds the key its lost first try wrote: that is a win too.
            if ok or (resp and resp[0] and resp[0][0][1].lease == lease.id):
                self._lease_id, self._until = lease.id, sent + lease.ttl
                log.info("this node is the cluster authority's leader",
                         extra={"node_id": self.node_id, "lease": lease.id})
                return
            with contextlib.suppress(AuthorityUnavailable):  # else it expires in ttl
                await self._call("revoke a lost lease", lambda c: c.revoke_lease(lease.id))

    async def _hold(self) -> None:
        """Renew the lease every third of its TTL; return once leadership is surely lost
        (etcd says the lease is gone, or the key is not ours). While etcd is unreachable we
        keep renewing the same lease (``is_leader`` is False meanwhile): a new etcd leader
        extends all leases, so an etcd election does not cost us leadership."""
        lease_id = self._lease_id
        sent = 0.0

        async def renew(client):
            nonlocal sent
            sent = time.monotonic()  # of this attempt: the one that answers counts
            return await client.refresh_lease(lease_id)

        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                reply = await self._call("renew the lease", renew)
                if reply is None or reply.TTL <= 0:
                    break  # expired: etcd has already deleted our key
                kv = await self._call("read the leader", lambda c: c.get(self._k_leader))
                if kv is None or kv.lease != lease_id:
                    break  # deleted by hand, or re-created: not ours
                self._until = sent + reply.TTL
            except AuthorityUnavailable as e:
                log.warning("could not renew the leader lease: %s", e.detail)
        self._lease_id, self._until = None, 0.0
        log.warning("this node lost the cluster authority's leadership",
                    extra={"node_id": self.node_id})
        with contextlib.suppress(AuthorityUnavailable):
            await self._call("revoke the lease", lambda c: c.revoke_lease(lease_id))

    # --- the cluster document -------------------------------------------------------------

    async def load_document(self) -> bytes | None:
        """The last document stored (a linearizable read: never older than one whose
        ``store_document`` returned True anywhere), or None if there is none."""
        kv = await self._call("read the document", lambda c: c.get(self._k_doc))
        return kv.value if kv is not None else None

    async def store_document(self, expected_version: int | None, version: int,
                             blob: bytes) -> bool:
        """Replace the document by ``blob`` at ``version``, in one etcd transaction that
        succeeds only if, at commit time, this node holds the leader key (its value is our
        node id and it is attached to our lease) and the stored version is
        ``expected_version`` (None: no document yet). True: the write is committed in
        etcd's raft log by a quorum and every later ``load_document`` sees it (or a newer
        one). False: nothing was changed. AuthorityUnavailable: not known either way; load
        and compare. ``version`` must exceed ``expected_version``; the blob must fit in an
        etcd request (1.5 MiB by default)."""
        if expected_version is not None and version <= expected_version:
            raise ValueError(f"version {version} does not follow {expected_version}")
        lease_id = self._lease_id
        if lease_id is None:
            return False
        t = _TX
        stored = (t.version(self._k_ver) == 0) if expected_version is None else \
            (t.value(self._k_ver) == str(expected_version).encode())
        compare = [t.value(self._k_leader) == self.node_id.encode(),
                   _LeaseIs(self._k_leader) == lease_id, stored]
        tries = 0

        async def attempt(client):
            nonlocal tries
            tries += 1
            return await client.transaction(
                compare=compare,
                success=[t.put(self._k_doc, blob),
                         t.put(self._k_ver, str(version).encode())],
                failure=[t.get(self._k_ver), t.get(self._k_doc)])

        ok, resp = await self._call("store the document", attempt)
        if ok:
            return True
        # A first try that failed in transit may have committed (etcd applied it, its
        # answer was lost): then the retry's compare fails on our own write.
        return (tries > 1 and _first_value(resp[0]) == str(version).encode()
                and _first_value(resp[1]) == blob)

    # --- join requests --------------------------------------------------------------------

    async def add_join_request(self, node_id: str, info: dict) -> None:
        """Record (or overwrite: idempotent) ``node_id``'s join request. Committed by a
        quorum when this returns; kept until ``remove_join_request``."""
        value = msgpack.packb(info, use_bin_type=True)
        await self._call("record a join request",
                         lambda c: c.put(self._k_joins + node_id.encode(), value))

    async def join_requests(self) -> dict[str, dict]:
        """Every recorded join request, node id -> info (a linearizable read)."""
        got = await self._call("read the join requests",
                               lambda c: c.get_prefix(self._k_joins))
        n = len(self._k_joins)
        return {kv.key[n:].decode(): msgpack.unpackb(kv.value, raw=False) for kv in got}

    async def remove_join_request(self, node_id: str) -> None:
        """Delete ``node_id``'s join request; no error if there is none (idempotent)."""
        await self._call("remove a join request",
                         lambda c: c.delete(self._k_joins + node_id.encode()))

    async def put_contribution(self, node_id: str, info: dict) -> None:
        """Record what one admin node brings to the document (its token keys and
        accounts); overwrites its previous contribution. Committed when this returns."""
        value = msgpack.packb(info, use_bin_type=True)
        await self._call("record an admin's contribution",
                         lambda c: c.put(self._k_admins + node_id.encode(), value))

    async def contributions(self) -> dict[str, dict]:
        """Every admin's contribution, node id -> info (a linearizable read)."""
        got = await self._call("read the admins' contributions",
                               lambda c: c.get_prefix(self._k_admins))
        n = len(self._k_admins)
        return {kv.key[n:].decode(): msgpack.unpackb(kv.value, raw=False) for kv in got}

    # --- plumbing -------------------------------------------------------------------------

    async def _call(self, what: str, op, *, budget: float | None = None):
        """``op(client)`` on the endpoint that answered last, then on the others in turn,
        until one answers or ``budget`` (default ``timeout``) seconds have passed."""
        budget = self._timeout if budget is None else budget
        deadline = time.monotonic() + budget
        last: BaseException | None = None
        while (remaining := deadline - time.monotonic()) > 0:
            if not (clients := self._clients):  # close() ran meanwhile
                raise AuthorityUnavailable(f"cannot {what}: not started, or closed")
            client = clients[self._current % len(clients)]
            try:
                return await asyncio.wait_for(op(client), remaining)
            except (aex.ClientError, grpc.RpcError, asyncio.TimeoutError, OSError) as e:
                if _is_final(e):
                    raise AuthorityUnavailable(f"etcd refused to {what}: {e}") from e
                last = e
                self._current = (self._current + 1) % len(clients)
                # A refused connection fails at once: do not spin through the endpoints.
                await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        raise AuthorityUnavailable(f"no etcd member answered within {budget:g} s "
                                   f"(to {what}): {last!r:.200}") from last
