"""One daemon's place in the cluster: the shell around the SWIM state machine and the
signed cluster document.

A node is in one of these states (``ClusterNode.state``):

- ``pending``: it has seeds but is not on the roster. Every ``JOIN_INTERVAL`` it sends a
  self-signed join request to its seeds and to the admins of any document it holds; the
  answer carries the current document. The admin lists the request until an operator runs
  ``artstore cluster join NODE_ID`` (or it stops asking).
- ``member``: on the roster. It runs ``Membership`` (probes, gossip, the document) over
  ``/cluster/v1/swim``; only envelopes signed by roster members are read.
- the *authority* (``role = "admin"``): a member that also signs new documents
  (``Authority``) when the roster, a mode, a token key or an account changes.

A document is written to disk (``<data_dir>/cluster/document.bin``) before its roster and
modes are applied; its token keys and revocations take effect (and it is gossiped on) as
soon as it is accepted. A node never goes back to an older one, even after a restart. A
node holding a document it did not sign checks tokens by it (``cluster.tokens``), not by
its own account store. Every message between members names its recipient (``rcpt``) and
every answer is signed by the node that gives it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time

import aiohttp
import msgpack

from ..replication import document as D
from ..replication import envelope as E
from ..replication.swim import Membership, SwimConfig

from ..auth.tokens import TokenService
from ..engine import wal as W
from ..engine.errors import ArtStoreError, Conflict
from ..engine.node import node_id_of
from .admin import AuthorityOps
from .authority import Authority
from .files import ClusterFiles
from .report import status_of
from .replicator import Replicator
from .tokens import CombinedAccounts, CombinedKeys, DocumentAccounts, DocumentKeys
from .transport import Transport

log = logging.getLogger("artstored.cluster")

SWIM_PATH = "/cluster/v1/swim"
JOIN_PATH = "/cluster/v1/join"
JOIN_INTERVAL = 2.0          # a pending node repeats its join request this often
REFRESH_INTERVAL = 1.0       # the authority re-reads accounts and keys this often


class NotMember(ArtStoreError):
    """A cluster message reached a node that is not (yet) on the roster."""

    code = "not_a_member"
    status = 503
    title = "This node is not on the cluster roster"


class Misdirected(E.EnvelopeError):
    """A genuine message meant for another member."""

    code = "envelope_misdirected"
    status = 400
    title = "Message addressed to another node"


class ClusterNode(AuthorityOps):
    """Drive with ``await start()``, ``await stop()``; the HTTP handlers call
    ``receive_swim`` / ``receive_join``; the admin API calls ``admit`` / ``remove`` /
    ``set_mode``. Everything runs on the daemon's event loop (not thread-safe)."""

    def __init__(self, svc, identity, cfg, *, swim_config: SwimConfig | None = None):
        self.svc, self.identity = svc, identity
        self.id = identity.node_id
        self.role = cfg["cluster.role"]
        self.advertise = cfg["cluster.advertise"] or cfg["server.listen"]
        self.seeds = [s for s in cfg["cluster.seeds"] if s != self.advertise]
        self.replication_factor = cfg["cluster.replication_factor"]
        self.pinned = _pinned_keys(cfg["cluster.admin_key"])
        self.token_issuer = svc.tokens.issuer if svc.tokens is not None else \
            (cfg["auth.issuer"] or f"artstore:{self.id}")
        self.swim_config = swim_config or SwimConfig.lan()
        self.started_at = time.time()
        self.signer = E.Signer(self.id, identity.key)
        self.replay = E.ReplayState(not_before=self.started_at - 1.0)
        self.join_replay = E.ReplayState(not_before=self.started_at - 1.0, max_senders=10_000)
        self.answer_replay = E.ReplayState(not_before=self.started_at - 1.0)
        self.transport = Transport(timeout=max(1.0, self.swim_config.probe_interval),
                                   on_refused=self._peer_refused)
        self.files = ClusterFiles(os.path.join(svc.store.data_dir, "cluster"))
        self.doc: D.Document | None = self.files.load_document()
        self.authority = Authority(self.id, identity.key, self.doc) \
            if self.role == "admin" else None
        # authority = etcd: every admin node has a seat; etcd's lease says who signs.
        self.seat = None
        if self.authority is not None and cfg["cluster.authority"] == "etcd":
            from .seat import Seat   # etcd's client (gRPC) is imported only where used
            self.seat = Seat(self, cfg["cluster.etcd_endpoints"])
        if self.seat is not None:
            self.authority.admins_may_join = True
        self.membership: Membership | None = None
        self.replicator: Replicator | None = None
        self.refused: dict[str, int] = {}
        self.peer_doc_version: dict[str, int] = {}
        self.peer_heard_at: dict[str, float] = {}
        self.mode_result: dict | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()          # one document change at a time
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._keys = DocumentKeys(lambda: self.doc)
        self._accounts = DocumentAccounts(lambda: self.doc)
        self._refresh_now = False
        self._check_roster = False
        self._join_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    def auth_changed(self) -> None:
        """An account, a revocation or a signing key changed here (any thread): the
        authority re-signs its document at once instead of at its next refresh."""
        self._loop.call_soon_threadsafe(self._poke_refresh)

    def _peer_refused(self, address: str, status: int) -> None:
        """A peer refused our message as from a stranger (403): we may have been taken
        off the roster by a document that, for that very reason, nobody sends us. Ask for
        the current document (as a join request does) at the next step."""
        if status == 403:
            self._check_roster = True
            self._wake.set()

    def _poke_refresh(self) -> None:
        self._refresh_now = True
        self._wake.set()

    # --- life -------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        if self.membership is not None:
            return "member"
        return "pending"

    @property
    def is_authority(self) -> bool:
        """Whether this node signs the cluster document now."""
        if self.seat is not None:
            return self.seat.is_leader and self.doc is not None
        return self.authority is not None and (self.doc is None or self.doc.signer == self.id
                                               or self.id in self.doc.admins())

    @property
    def mints_tokens(self) -> bool:
        """Whether sign-in and account management are served here: on the one admin
        (local authority), or on every admin node (etcd)."""
        return self.authority is not None and (self.seat is not None or self.is_authority)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.replicator = Replicator(self)
        await self.replicator.start()
        if self.role == "admin":
            self.svc.accounts.change_listeners.append(self.auth_changed)
        await self.transport.start()
        if self.seat is not None:
            await self.seat.start()
        elif self.authority is not None and self.doc is None and not self.seeds:
            async with self._lock:
                first = self.authority.bootstrap(
                    time.time(), address=self.advertise, name=self.identity.name,
                    token_issuer=self.token_issuer, replication_factor=self.replication_factor,
                    weight=await asyncio.get_running_loop().run_in_executor(
                        None, self.capacity_weight))
                await self.files.persist(first)
                self.doc = first
                self.authority.adopt(first)
            log.info("cluster bootstrapped: %s is its admin (document v1)", self.id)
        if self.doc is not None:
            await self._apply(self.doc)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for task in (self._task, self._join_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        if self.replicator is not None:
            await self.replicator.stop()
        if self.seat is not None:
            await self.seat.close()   # its lease goes at once: another admin leads
        await self.transport.close()

    async def _run(self) -> None:
        next_join = next_refresh = next_seat = 0.0
        while not self._stopping:
            now = time.monotonic()
            try:
                if (self.membership is None or self._check_roster) and now >= next_join \
                        and (self._join_task is None or self._join_task.done()):
                    # Its own task: an unreachable seed must not hold up the probes.
                    next_join, self._check_roster = now + JOIN_INTERVAL, False
                    self._join_task = self._loop.create_task(self._join_step())
                if self.seat is not None and now >= next_seat:
                    next_seat = now + REFRESH_INTERVAL
                    await self.seat.step()
                if self.is_authority and self.doc is not None and (
                        now >= next_refresh or self._refresh_now):
                    next_refresh, self._refresh_now = now + REFRESH_INTERVAL, False
                    await self._refresh_authority()
                if self.membership is not None:
                    self._handle(self.membership.tick(time.monotonic()))
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug here must not stop the gossip for good; it is logged with its trace.
                log.exception("cluster loop step failed")
            deadline = min(next_join if self.membership is None else float("inf"),
                           next_refresh if self.is_authority else float("inf"),
                           next_seat if self.seat is not None else float("inf"))
            if self.membership is not None:
                deadline = min(deadline, self.membership.next_deadline() or deadline)
            timeout = min(max(deadline - time.monotonic(), 0.0), 1.0)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    # --- messages in ------------------------------------------------------------------------

    def receive_swim(self, data: bytes) -> None:
        """One envelope from a peer. Raises an EnvelopeError (refused: bad signature,
        stranger, replay, stale) or NotMember; otherwise the message is handled."""
        if self.doc is not None and self.membership is None:
            self._documents_from_stranger_gossip(data)
        if self.doc is None or self.membership is None:
            self._count_refusal(NotMember.code)
            raise NotMember("not on the roster (yet)")
        self.transport.stats["messages_received"] += 1
        self.transport.stats["bytes_received"] += len(data)
        env = self._open(data, self.replay)
        if isinstance(env.message, dict) and isinstance(env.message.get("dv"), int):
            self.peer_doc_version[env.sender] = env.message["dv"]
        self.peer_heard_at[env.sender] = time.monotonic()
        self._handle(self.membership.receive(time.monotonic(), env.sender, env.message))

    def _documents_from_stranger_gossip(self, data: bytes) -> None:
        """Not on the roster as far as this node knows, yet a roster member gossips to it:
        it was admitted and missed the news (the admin that admitted it may be gone). Take
        any newer document the message carries (checked as always); with it on the
        roster, membership starts."""
        try:
            env = self._open(data, self.replay)
        except E.EnvelopeError:
            return
        msg = env.message
        docs = [(u.get("v"), u.get("d")) for u in msg.get("u") or []
                if isinstance(u, dict) and u.get("k") == "doc"]
        if isinstance(msg.get("doc"), (list, tuple)) and len(msg["doc"]) == 2:
            docs.append(tuple(msg["doc"]))
        for version, blob in docs:
            if isinstance(version, int) and (self.doc is None or version > self.doc.version):
                self._check_document(version, blob)

    def open_request(self, data: bytes) -> E.Envelope:
        """A request from a roster member (a signed envelope, as for the gossip): the
        envelope, or an EnvelopeError / NotMember."""
        if self.doc is None or self.membership is None:
            self._count_refusal(NotMember.code)
            raise NotMember("not on the roster (yet)")
        return self._open(data, self.replay)

    def _open(self, data: bytes, replay: E.ReplayState) -> E.Envelope:
        """Check an envelope from a roster member that must be addressed to this node
        (``rcpt``: a message captured on its way to another member is worth nothing
        here)."""
        try:
            env = E.unpack(data, self.doc.public_keys(), replay)
            if not isinstance(env.message, dict) or env.message.get("rcpt") != self.id:
                raise Misdirected(f"a message for {str(env.message.get('rcpt'))[:40]!r}"
                                  if isinstance(env.message, dict) else "not a map")
        except E.EnvelopeError as exc:
            self._count_refusal(exc.code)
            raise
        return env

    def sign_for(self, node: str, message: dict) -> bytes:
        """``message`` signed by this node, addressed to ``node``."""
        return self.signer.pack({**message, "rcpt": node})

    def open_answer(self, data: bytes, sender: str, kind: str) -> dict:
        """The body of ``sender``'s signed answer of type ``kind`` to this node; an
        EnvelopeError if it is not exactly that (forged on the way, replayed, another
        node's)."""
        if self.doc is None:
            raise NotMember("no cluster document")
        env = self._open(data, self.answer_replay)
        if env.sender != sender or env.message.get("t") != kind:
            raise E.MalformedEnvelope(f"expected a {kind} answer from {sender}")
        return env.message

    def receive_join(self, data: bytes) -> bytes:
        """A join request (self-signed by a node that may not be a member). The authority
        remembers it; every node answers with the document it holds (msgpack)."""
        try:
            env = E.unpack_self_signed(data, self.join_replay, node_id_of)
            msg = env.message
            if not (isinstance(msg.get("address"), str) and ":" in msg["address"]
                    and len(msg["address"]) <= 256 and isinstance(msg.get("name"), str)):
                raise E.MalformedEnvelope("a join request names its address and name")
        except E.EnvelopeError as exc:
            self._count_refusal(exc.code)
            raise
        role = msg.get("role") if msg.get("role") in D.ROLES else "member"
        if self.doc is not None and env.sender not in self.doc.roster:
            if self.seat is not None:      # every admin records it for whoever leads
                self.seat.note_join(env.sender, msg["key"], msg["address"], msg["name"][:256],
                                    role, msg.get("weight", 1.0))
            if self.is_authority:
                new = env.sender not in self.authority.joins
                self.authority.note_join_request(time.time(), env.sender, msg["key"],
                                                 msg["address"], msg["name"], role=role,
                                                 weight=msg.get("weight", 1.0))
                if new:
                    log.info("join request from %s (%s at %s)", env.sender,
                             msg["name"][:64], msg["address"][:64])
        return msgpack.packb({"document": self.doc.blob if self.doc else None,
                              "state": self.state}, use_bin_type=True)

    def capacity_weight(self) -> float:
        """This node's placement weight: the total bytes of its online disks, in TB
        (blocking: asks the filesystems)."""
        total = self.svc.store.capacity().get("total_bytes") or 0
        return max(round(total / 1e12, 6), 1e-6)

    def _count_refusal(self, code: str) -> None:
        self.refused[code] = self.refused.get(code, 0) + 1

    # --- messages out -----------------------------------------------------------------------

    def _handle(self, out) -> None:
        for to, msg in out.messages:
            address = self.doc.address(to) if self.doc is not None else None
            if address is not None:
                self.transport.send(address, SWIM_PATH, self.sign_for(to, msg))
        for event in out.events:
            if event.kind in ("alive", "suspect", "dead", "left", "removed"):
                log.info("member %s is %s (incarnation %s)", event.node, event.kind,
                         event.incarnation)
            elif event.kind == "document_refused":
                log.warning("refused cluster document v%s: %s", event.data,
                            self._last_refusal)
            elif event.kind == "document":
                self._wake.set()

    _last_refusal: str = ""

    def _check_document(self, version: int, value) -> bool:
        """Membership's gate: adopt only a newer document signed by an admin. On success
        the document is this node's at once; ``_run`` persists and applies it."""
        try:
            doc = D.accept(self.doc, value, pinned=self.pinned)
        except D.DocumentError as exc:
            self._count_refusal(exc.code)
            self._last_refusal = exc.detail
            return False
        if doc.version != version:
            self._count_refusal(D.MalformedDocument.code)
            return False
        self.doc = doc
        task = asyncio.get_running_loop().create_task(self._apply_serialized(doc))
        self._tasks.add(task)           # kept until done: a task nobody holds may vanish
        task.add_done_callback(self._tasks.discard)
        return True

    async def _join_step(self) -> None:
        try:
            await self._ask_to_join()
        except Exception:
            log.exception("asking for the cluster document failed")

    async def _ask_to_join(self) -> None:
        message = {"t": "join", "key": bytes(self.identity.key.verify_key),
                   "address": self.advertise, "name": self.identity.name, "role": self.role,
                   "weight": await asyncio.get_running_loop().run_in_executor(
                       None, self.capacity_weight)}
        # Seeds, the admins of the document held, then a few other members: any member
        # answers with the document it holds, so a node admitted by an admin that is gone
        # since still learns it is on the roster.
        others = []
        if self.doc is not None:
            others = [self.doc.address(a) for a in self.doc.admins()]
            rest = [m["address"] for n, m in self.doc.roster.items() if n != self.id]
            random.shuffle(rest)
            others += rest[:8]
        targets = list(dict.fromkeys(self.seeds + others))
        for address in targets:
            if address == self.advertise:
                continue
            try:
                status, body = await self.transport.request(address, JOIN_PATH,
                                                            self.signer.pack(message))
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                log.debug("join request to %s failed: %s", address, exc)
                continue
            if status != 200:
                continue
            try:
                blob = msgpack.unpackb(body, raw=False).get("document")
            except (ValueError, msgpack.UnpackException, AttributeError):
                continue
            if blob is None:
                continue
            try:
                doc = D.accept(self.doc, blob, pinned=self.pinned)
            except D.StaleDocument:
                continue
            except D.DocumentError as exc:
                self._count_refusal(exc.code)
                log.warning("seed %s sent a document we refuse: %s", address, exc.detail)
                continue
            self.doc = doc
            await self._apply_serialized(doc)
            if self.membership is not None:
                return

    # --- applying a document ----------------------------------------------------------------

    async def _apply_serialized(self, doc: D.Document) -> None:
        async with self._lock:
            if self.doc is doc:   # a newer one may have come in meanwhile: apply the newest
                await self._apply(doc)

    async def _apply(self, doc: D.Document) -> None:
        await self.files.persist(doc)
        if self.authority is not None:
            self.authority.adopt(doc)
        now = time.monotonic()
        if self.id in doc.roster:
            if self.membership is None:
                self.membership = Membership(self.id, list(doc.roster), self.swim_config,
                                             random.Random(), incarnation=int(time.time()),
                                             document_check=self._check_document)
                self._handle(self.membership.start(now, join=True))
                self._handle(self.membership.publish_document(now, doc.version, doc.blob))
                log.info("on the roster of document v%s: membership started", doc.version)
            else:
                self._handle(self.membership.update_roster(now, list(doc.roster)))
        elif self.membership is not None:
            log.warning("taken off the roster by document v%s: membership stopped",
                        doc.version)
            self.membership = None
        if self.seat is not None or doc.signer != self.id or not self.is_authority:
            self._use_document_auth(doc)
        if self.replicator is not None:
            self.replicator.roster_changed()
        await self._apply_mode(doc)

    def _use_document_auth(self, doc: D.Document) -> None:
        svc = self.svc
        if self.seat is not None:
            # An admin of an etcd-backed authority mints with its own keys and accounts,
            # and honours every other admin's tokens by the document.
            if not isinstance(getattr(svc.tokens, "keyring", None), CombinedKeys):
                svc.tokens = TokenService(CombinedKeys(svc.keyring, self._keys),
                                          svc.tokens.issuer, svc.config["auth.token_ttl_seconds"])
                svc.token_policy = CombinedAccounts(svc.accounts, self._accounts)
            return
        if not isinstance(getattr(svc.tokens, "keyring", None), DocumentKeys) or \
                svc.tokens.issuer != doc.token_issuer:
            svc.tokens = TokenService(self._keys, doc.token_issuer,
                                      svc.config["auth.token_ttl_seconds"])
        svc.token_policy = self._accounts

    async def _apply_mode(self, doc: D.Document) -> None:
        entry = doc.modes.get(self.id)
        if entry is None:
            return
        applied = self.files.read_state().get("mode_applied_at", 0.0)
        if entry["at"] <= applied:
            return
        actor = W.Actor(entry["by"]["id"], entry["by"]["name"], "admin")
        note = {"cluster_document": doc.version, "requested_at": entry["at"],
                "signed_by": doc.signer}
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, lambda: self.svc.store.set_mode(
                entry["mode"], actor, confirm=True, note=note))
            self.mode_result = {"mode": entry["mode"], "applied": True,
                                "document": doc.version}
        except ArtStoreError as exc:
            # The element's own rules win (e.g. edit is for life): recorded, not retried.
            self.mode_result = {"mode": entry["mode"], "applied": False, "code": exc.code,
                                "detail": exc.detail, "document": doc.version}
            refusal = {**note, "node_id": self.id, "mode": entry["mode"], "applied": False,
                       "code": exc.code}
            await loop.run_in_executor(None, self.svc.store.record_event, W.CLUSTER_MODE,
                                       actor, refusal)
            log.warning("mode %s from document v%s refused: %s", entry["mode"],
                        doc.version, exc.detail)
        await self.files.write_state({"mode_applied_at": entry["at"]})

    # --- what the API shows -----------------------------------------------------------------

    def status(self) -> dict:
        """The cluster as this node sees it (``GET /api/v1/cluster``)."""
        return status_of(self)


def _pinned_keys(text: str) -> dict[str, bytes] | None:
    """``cluster.admin_key``: the admin's public key (base64url), pinned for the first
    document a new node accepts."""
    if not text:
        return None
    from ..engine.node import b64url_decode
    key = b64url_decode(text)
    if len(key) != 32:
        raise Conflict("cluster.admin_key is not an Ed25519 public key",
                       code="invalid_admin_key")
    return {node_id_of(key): key}
