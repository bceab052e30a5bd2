"""Moving files between nodes: each file on its ``replication_factor`` owners.

Two paths, both ending in the engine's ``replica`` functions (verified size, SHA-256 and
origin signature; committed once through the group commit):

- **push**, for the acknowledgement: after an upload is durable here, it is streamed to its
  other owners (``PUT /cluster/v1/objects/{id}``), and the upload is answered once
  ``replication.ack`` is met (``local``; ``quorum`` = a majority of the owners, counting
  this node if it is one; ``all``). A node that is not an owner keeps its copy (the
  hand-off) meanwhile.
- **pull**, for everything else (``follower.FeedFollower``, a mixin of Replicator): every
  member follows every other member's WAL from a cursor kept in LMDB and applies what
  concerns it; new files are fetched many at a time (``bundle``). A node back from an
  outage catches up from its cursors; applying a record twice changes nothing.

Requests between nodes carry an envelope signed with the sender's node key (header
``X-ArtStore-Envelope``, checked like the gossip's: roster members only, no replays).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

import aiohttp

from ..engine import replica as R
from ..engine.errors import ArtStoreError
from ..engine.node import verify_signature
from ..replication import placement as P
from ..streaming import stream_to_writer
from . import bundle
from .follower import FeedFollower
from .repair import ROSTER_SETTLE_SECONDS, Repairer
from .wire import CONNECT_SECONDS, HEADER, OBJECTS, encode_header

log = logging.getLogger("artstored.cluster.replication")

CHUNK = 1 << 20
SMALL_REPLICA_BYTES = 256 * 1024   # replicas this small are taken in memory, as uploads are
HEDGE_SECONDS = 2.0         # an owner silent this long gets a substitute for the ack
VERIFIED_KEPT = 4096        # signature checks remembered (a few bundles' worth)


@functools.lru_cache(maxsize=VERIFIED_KEPT)
def _verified(key: bytes, payload: bytes, key_id: str, value: str) -> bool:
    """``verify_signature``, remembered: a bundle's receiver checks each record's origin
    signature before reading its bytes (they say where the next file starts), and the
    engine checks it again as it takes the copy. A verification is deterministic, so the
    answer for the same key, payload and signature can be kept (~100 µs each)."""
    return verify_signature(key, payload, {"key_id": key_id, "value": value})


class QuorumNotReached(ArtStoreError):
    """The upload is durable here, but not on enough owners in time."""

    code = "replication_incomplete"
    status = 503
    title = "Stored here, not yet on enough nodes"


class Replicator(FeedFollower):
    """Owned by a ClusterNode; runs on the daemon's event loop (bundle receivers call
    ``verify_origin`` from their threads: it only reads)."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.store = cluster.svc.store
        self.ack_timeout = cluster.svc.config["replication.ack_timeout_seconds"]
        self._session: aiohttp.ClientSession | None = None
        self._followers: dict[str, asyncio.Task] = {}
        self._weights: tuple | None = None
        self._pulling: dict[str, asyncio.Future] = {}   # file id → its fetch under way
        self._background: set[asyncio.Task] = set()
        self.bundle_gate = asyncio.Semaphore(bundle.SERVING_AT_ONCE)   # answers being sent
        config = cluster.svc.config
        self.repairer = Repairer(self, config["replication.repair_interval_seconds"],
                                 config["replication.tombstone_days"])
        self.stats = {"pushed": 0, "push_failures": 0, "pulled": 0, "pull_failures": 0,
                      "updates_applied": 0, "deletes_applied": 0, "records_passed_by": 0,
                      "changes_refused": 0}

    # --- life -------------------------------------------------------------------------------

    async def start(self) -> None:
        # A large read buffer: proxied downloads and the change feed can be bulk
        # transfers, and a 64 KiB buffer pauses and resumes the socket every few packets.
        self._session = aiohttp.ClientSession(auto_decompress=False, read_bufsize=4 << 20)
        self.repairer.start()

    async def stop(self) -> None:
        await self.repairer.stop()
        tasks = [*self._followers.values(), *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._followers.clear()
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The HTTP client this node uses towards its peers."""
        return self._session

    def roster_changed(self) -> None:
        """Follow exactly the other roster members (called when a document is applied)."""
        doc = self.cluster.doc
        peers = set(doc.roster) - {self.cluster.id} if doc and self.cluster.membership \
            else set()
        for peer in set(self._followers) - peers:
            self._followers.pop(peer).cancel()
        for peer in peers - set(self._followers):
            self._followers[peer] = asyncio.get_running_loop().create_task(self._follow(peer))
        if peers:
            # A join, a leave: files change owners; a pass gives the new owners theirs.
            self.repairer.request(delay=ROSTER_SETTLE_SECONDS)
        if doc is not None:
            keys = doc.public_keys()
            self.spawn(asyncio.get_running_loop().run_in_executor(
                None, R.remember_node_keys, self.store, keys))

    def spawn(self, awaitable) -> None:
        """Run ``awaitable`` in the background, cancelled at stop."""
        task = asyncio.ensure_future(awaitable)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- placement --------------------------------------------------------------------------

    def weights(self) -> dict[str, float]:
        """Placement weights of the roster (cached per document version)."""
        doc = self.cluster.doc
        if self._weights is None or self._weights[0] is not doc:
            self._weights = (doc, {n: float(m.get("weight", 1.0))
                                   for n, m in doc.roster.items()})
        return self._weights[1]

    def owners(self, file_id: str) -> list[str]:
        """The file's owners under the roster of the document this node holds."""
        doc = self.cluster.doc
        if doc is None:
            return [self.cluster.id]
        return P.owners(file_id, self.weights(), doc.replication_factor)

    # --- push (the acknowledgement) ---------------------------------------------------------

    async def replicate_upload(self, attr: dict, seq: int | None, ack: str) -> list[str]:
        """Push a just-committed upload to its other owners; return the nodes holding it
        durably once ``ack`` is met (this node first).

        ``quorum``: a majority of ``replication_factor`` copies on distinct nodes. An owner
        that cannot take it is replaced by the next node in the file's ranking, which keeps
        a hand-off copy (as this node does when it is not an owner): the owners get theirs
        from the change feed when they are back. ``all``: every owner, no substitutes.
        Raises QuorumNotReached if ``ack`` is not met within
        ``replication.ack_timeout_seconds``; pushes under way go on in the background."""
        me, file_id = self.cluster.id, attr["file_id"]
        owners = self.owners(file_id)
        targets = [n for n in owners if n != me]
        if ack == "local" or not targets:
            for node in targets:
                self.spawn(self.push(node, attr, seq))
            return [me]
        if ack == "all":
            needed, spare = len(targets), []
        else:
            needed = P.quorum(len(owners)) - 1        # this node's copy counts
            doc = self.cluster.doc
            ranking = P.owners(file_id, self.weights(), len(doc.roster))
            spare = [n for n in ranking if n not in owners and n != me]
        holders = [me]
        # Owners the membership does not hold alive go to the back of the queue, behind
        # the substitutes (they are still tried: a suspicion may be wrong); an owner that
        # has not answered within HEDGE_SECONDS (a partition the membership has not
        # noticed yet) gets the next candidate started beside it.
        if ack != "all":
            live = [n for n in targets if self._reachable(n)]
            queue = live + spare + [n for n in targets if n not in live]
            start, spare = queue[:len(targets)], queue[len(targets):]
        else:
            start = targets
        pending = {asyncio.ensure_future(self.push(n, attr, seq)): n for n in start}
        tried: dict[str, bool | None] = dict.fromkeys(start)
        deadline = time.monotonic() + self.ack_timeout
        while pending and len(holders) - 1 < needed:
            now = time.monotonic()
            wait = min(deadline - now, HEDGE_SECONDS) if spare else deadline - now
            done, _ = await asyncio.wait(pending, timeout=max(0.0, wait),
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                if time.monotonic() >= deadline:
                    break
                substitute = spare.pop(0)
                pending[asyncio.ensure_future(self.push(substitute, attr, seq))] = substitute
                tried[substitute] = None
                continue
            for task in done:
                node = pending.pop(task)
                tried[node] = task.result()
                if tried[node]:
                    holders.append(node)
                elif spare:
                    substitute = spare.pop(0)
                    pending[asyncio.ensure_future(self.push(substitute, attr, seq))] = \
                        substitute
                    tried[substitute] = None
        for task in pending:          # the others go on in the background
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        if len(holders) - 1 < needed:
            raise QuorumNotReached(
                f"stored durably here, on {len(holders)} of the {needed + 1} nodes ack={ack} "
                f"needs; it will be replicated when they answer", file_id=file_id,
                holders=holders, tried=tried)
        return holders

    def _reachable(self, node: str) -> bool:
        membership = self.cluster.membership
        try:
            return membership is not None and membership.member(node).state == "alive"
        except KeyError:
            return False

    async def push(self, node: str, attr: dict, seq: int | None) -> bool:
        """Stream the file ``attr`` names to ``node``; True once it is durable there."""
        address = self.cluster.doc.address(node) if self.cluster.doc else None
        if address is None:
            return False
        header = encode_header(self.cluster.sign_for(node,
            {"t": "replica", "attr": attr,
             "origin": {"node": attr.get("origin_node") or self.cluster.id, "seq": seq}}))
        try:
            async with self._session.put(
                    f"http://{address}{OBJECTS}{attr['file_id']}",
                    data=self._read_chunks(attr["file_id"]),
                    headers={HEADER: header, "Content-Type": "application/octet-stream",
                             "Content-Length": str(attr["file_size"])},
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_SECONDS,
                                                  sock_read=60)) as resp:
                body = await resp.read()
                if resp.status in (200, 201):
                    answer = self.cluster.open_answer(body, node, "stored")
                    if answer.get("file_id") == attr["file_id"]:
                        self.stats["pushed"] += 1
                        return True
                log.warning("push of %s to %s refused: %s %s", attr["file_id"], node,
                            resp.status, body[:200])
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ArtStoreError) as exc:
            log.info("push of %s to %s failed: %s", attr["file_id"], node, exc)
        self.stats["push_failures"] += 1
        return False

    async def _read_chunks(self, file_id: str):
        loop = asyncio.get_running_loop()
        _, f = await loop.run_in_executor(None, self.store.open_content, file_id)
        try:
            while chunk := await loop.run_in_executor(None, f.read, CHUNK):
                yield chunk
        finally:
            f.close()

    # --- receiving a replica (push or pull) -------------------------------------------------

    small_replica_bytes = SMALL_REPLICA_BYTES

    async def take_replica(self, attr: dict, origin: dict, pieces) -> dict:
        """Store the bytes of ``pieces`` (an async iterable) as a replica of ``attr``.
        Returns what is here afterwards; raises ReplicaRefused, ChecksumMismatch,
        FileDeleted, ModeNotAllowed. Nothing is kept of a refused replica."""
        size = attr.get("file_size") if isinstance(attr.get("file_size"), int) else 0
        if 0 <= size <= SMALL_REPLICA_BYTES:
            # As a small upload: in memory, written by the group commit with its batch; no
            # disk I/O on the way in.
            chunks, received = [], 0
            async for piece in pieces:
                received += len(piece)
                if received > size:
                    raise R.ReplicaRefused(f"replica of {attr.get('file_id')}: more bytes "
                                           "than its record says")
                chunks.append(bytes(piece))
            writer = self.store.buffer(chunks)
            try:
                prepared = R.prepare_replica(self.store, writer, attr, origin=origin,
                                             verify_signature=self.verify_origin)
            except BaseException:
                writer.abort()
                raise
            return await asyncio.wrap_future(self.store.commit_upload(prepared))
        loop = asyncio.get_running_loop()
        writer = await loop.run_in_executor(None, self.store.begin_upload, size)
        try:
            await stream_to_writer(pieces, writer)
            await loop.run_in_executor(None, writer.finish)
            prepared = await loop.run_in_executor(None, lambda: R.prepare_replica(
                self.store, writer, attr, origin=origin,
                verify_signature=self.verify_origin))
        except BaseException:
            writer.abort()
            raise
        return await asyncio.wrap_future(self.store.commit_upload(prepared))

    def verify_origin(self, payload: bytes, signature: dict) -> bool:
        """Whether ``signature`` over ``payload`` is a roster node's (or a node this
        store once knew). Thread-safe."""
        key_id, value = signature.get("key_id"), signature.get("value")
        if not isinstance(key_id, str) or not isinstance(value, str):
            return False
        doc = self.cluster.doc
        key = doc.roster.get(key_id, {}).get("key") if doc else None
        if key is None:
            key = R.known_node_keys(self.store).get(key_id)
        return key is not None and _verified(bytes(key), payload, key_id, value)

    # --- the change feed, served ---------------------------------------------------------------

    async def changes(self, after: int, limit: int, wait: float) -> dict:
        """WAL records after ``after`` (at most ``limit``), waiting up to ``wait`` s for one
        to exist. {"records": [...], "head": the last sequence returned (or ``after``)}."""
        records = await self.cluster.svc.feed.after(after, limit, wait)
        return {"records": records, "head": records[-1]["seq"] if records else after}

    def status(self) -> dict:
        return {**self.stats, "following": sorted(self._followers),
                "anti_entropy": self.repairer.status()}
