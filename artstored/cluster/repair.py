"""Anti-entropy: find where owners of a file disagree, and repair it.

A pass walks this node's catalog once. For each other member it computes the digests
(``replication.digest``: XOR of XXH3 over file id and version, in 1,024 buckets) of the
files both should hold, and compares them with the member's (``POST /cluster/v1/digest``);
only differing buckets are listed and compared. A file the member lacks is pushed to it, a
file this node lacks is fetched, and a metadata version that differs is settled by the
engine's rule on both sides. Agreeing owners exchange a few kilobytes per pass. A node
that joins gets its share, a node taken off the roster has its files re-replicated by the
owners that remain, and both sides of a healed partition fill each other in.

Files held here that this node does not own (hand-off copies) are checked one by one
(``POST /cluster/v1/have``), as are files an operator names.

The only copy a pass ever removes is this node's own, of a file it does not own (a
hand-off copy, or one whose owners changed with the roster), and only once every owner,
holding the same cluster document version, said it holds the file (a quarantined copy
does not count): so no file goes below its factor while files move. The removal is a
``file.release`` record, which no other node applies. A quarantined local copy is
restored from a member that holds a good one.

Passes run every ``replication.repair_interval_seconds``, soon after a roster change, and
on request (``POST /api/v1/cluster/repair``, optionally for given files first). The time of
the last full pass and what it found are in ``artstore cluster status`` and /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import aiohttp

from ..engine import catalog, fixity, ids
from ..engine import replica as R
from ..engine.errors import ArtStoreError, BadRequest, StoreCorrupt
from ..engine.ingest import UploadWriter
from ..replication import digest as G
from ..streaming import stream_to_writer
from .reads import attr_of, candidates, fetch_object
from .wire import DIGEST, HAVE

log = logging.getLogger("artstored.cluster.repair")

PAGE = 500
PUSH_CONCURRENCY = 4
ROSTER_SETTLE_SECONDS = 5.0   # a roster change starts a pass this much later
SLOW_ANSWER_SECONDS = 120.0   # a digest walks the peer's whole catalog
DIGEST_REUSE_SECONDS = 30.0   # a scan's digests answer peers for this long (same roster)
LISTED_FILES = 50_000         # files one bucket listing carries at most (~4 MB: envelopes
                              # are at most 8 MiB)


class Repairer:
    def __init__(self, replicator, interval: float, tombstone_days: float = 30.0):
        self.replicator = replicator
        self.cluster = replicator.cluster
        self.store = replicator.store
        self.interval = interval
        self.tombstone_days = tombstone_days
        self.last_full_pass: dict | None = None
        self.restored = 0
        self.running: dict | None = None
        self._wake = asyncio.Event()
        self._urgent: list[str] = []
        self._task: asyncio.Task | None = None
        self._next_at = time.monotonic() + ROSTER_SETTLE_SECONDS
        self._last_scan: tuple | None = None      # (document, monotonic time, pairs)
        self._scan_lock = threading.Lock()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run())
        self.store.quarantine_listeners.append(
            lambda file_id: loop.call_soon_threadsafe(self._restore_soon, file_id))

    def _restore_soon(self, file_id: str) -> None:
        self.replicator.spawn(self.restore(file_id))

    async def restore(self, file_id: str) -> bool:
        """Replace a quarantined local copy with a verified one from a member that holds
        the file. True once restored (durable, audited); False if no member could give a
        good copy (it stays quarantined; the next pass tries again)."""
        loop = asyncio.get_running_loop()
        entry = await loop.run_in_executor(None, self.store.view.entry, file_id)
        if entry is None:
            return False
        for node in candidates(self.cluster, file_id):
            disk = self.store.disks.get(entry.disk)
            writer = await loop.run_in_executor(None, UploadWriter, self.store.disks, disk,
                                                self.store.config.max_upload_bytes)
            try:
                async with fetch_object(self.cluster, self.replicator.session, node, file_id,
                                        {}, meta=False) as resp:
                    if resp.status != 200:
                        raise ValueError(f"{node} answered {resp.status}")
                    await stream_to_writer(resp.content.iter_chunked(1 << 20), writer)
                await loop.run_in_executor(None, writer.finish)
                await loop.run_in_executor(None, lambda: fixity.restore(
                    self.store, entry, writer, source=node))
                self.restored += 1
                log.warning("restored %s from %s after a failed fixity check", file_id, node)
                return True
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError,
                    ArtStoreError) as exc:
                writer.abort()
                log.info("restoring %s from %s failed: %s", file_id, node, exc)
        return False

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def request(self, file_ids: list[str] | None = None, *, delay: float = 0.0) -> None:
        """Start a pass soon (``file_ids``: only these, first)."""
        if file_ids:
            self._urgent.extend(file_ids)
        self._next_at = min(self._next_at, time.monotonic() + delay)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            timeout = max(0.0, self._next_at - time.monotonic())
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            if time.monotonic() < self._next_at:
                continue
            self._next_at = time.monotonic() + self.interval
            try:
                if self._urgent:
                    ids, self._urgent = self._urgent, []
                    await self.repair(ids)
                else:
                    await self.full_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("anti-entropy pass failed")

    async def full_pass(self) -> dict:
        """One pass over every file held here. Returns (and keeps) its report."""
        started = time.time()
        report = {"started_at": started, "files": 0, "missing_copies": 0, "pushed": 0,
                  "push_failures": 0, "unreachable_owners": 0, "restored": 0, "released": 0}
        self.running = report
        loop = asyncio.get_running_loop()
        for file_id in await loop.run_in_executor(None, fixity.quarantined, self.store):
            report["restored"] += bool(await self.restore(file_id))
        try:
            scan = await loop.run_in_executor(None, self._scan)
            report["files"] = scan["files"]
            for peer, mine in scan["pairs"].items():
                await self._sync_pair(peer, mine, report)
            handoffs = scan["handoffs"]
            for i in range(0, len(handoffs), PAGE):
                await self._check(handoffs[i:i + PAGE], report, count=False)
            report["tombstones_purged"] = await self._purge_tombstones()
        finally:
            self.running = None
        report["finished_at"] = time.time()
        report["seconds"] = round(report["finished_at"] - started, 3)
        self.last_full_pass = report
        if report["missing_copies"]:
            log.info("anti-entropy pass: %d files, %d copies missing, %d pushed",
                     report["files"], report["missing_copies"], report["pushed"])
        return report

    async def repair(self, file_ids: list[str]) -> dict:
        """Check (and fix) just these files now."""
        report = {"files": 0, "missing_copies": 0, "pushed": 0, "push_failures": 0,
                  "unreachable_owners": 0, "released": 0}
        for i in range(0, len(file_ids), PAGE):
            await self._check(file_ids[i:i + PAGE], report)
        return report

    # --- digests: what two owners should both hold, compared bucket by bucket -------------

    def _entries(self):
        """Every catalog entry, page by page (blocking)."""
        cursor = None
        while True:
            entries, cursor = self.store.view.page(limit=1000, cursor=cursor,
                                                   order=catalog.ASC)
            yield from entries
            if cursor is None:
                return

    def _scan(self) -> dict:
        """One walk of the catalog (blocking): per other owner, the digests of the files
        both should hold; and the files held here that this node does not own."""
        me, doc, at = self.cluster.id, self.cluster.doc, time.monotonic()
        pairs: dict[str, list[int]] = {}
        handoffs, files = [], 0
        for entry in self._entries():
            files += 1
            owners = self.replicator.owners(entry.file_id)
            if me not in owners:
                handoffs.append(entry.file_id)
                continue
            h = G.item_hash(entry.file_id, _stamp(entry.attr))
            b = G.bucket_of(entry.file_id, G.DEFAULT_BUCKETS)
            for peer in owners:
                if peer != me:
                    pairs.setdefault(peer, [0] * G.DEFAULT_BUCKETS)[b] ^= h
        self._last_scan = (doc, at, pairs)
        return {"pairs": pairs, "handoffs": handoffs, "files": files}

    def listing(self, peer: str, buckets: set[int] | None) -> dict[str, int] | list[int]:
        """What this node holds that it and ``peer`` both own (blocking): the digests of
        every bucket (``buckets`` None), or file_id → version in the given buckets.

        Digests come from this node's latest scan if it is younger than DIGEST_REUSE_SECONDS
        and of the same roster (one scan serves every peer of a pass: a walk of the catalog
        per pass, not one per peer). A stale one mostly makes the asker list a few more
        buckets (listings are always fresh); it can also hide a change of the last seconds
        from one pass, which the next pass then finds."""
        if buckets is None:
            return self._pairs().get(peer) or [0] * G.DEFAULT_BUCKETS
        me = self.cluster.id
        items = {}
        for entry in self._entries():
            if G.bucket_of(entry.file_id, G.DEFAULT_BUCKETS) not in buckets:
                continue
            owners = self.replicator.owners(entry.file_id)
            if me in owners and peer in owners:
                items[entry.file_id] = _stamp(entry.attr)
        return items

    def listing_page(self, peer: str, buckets: list[int]) -> tuple[dict[str, str], list[int]]:
        """The files of as many whole ``buckets`` (in the asker's order) as fit in one
        answer (LISTED_FILES; always at least one bucket, so a single bucket of more than
        LISTED_FILES, some 50 million files shared by one pair, would still go whole),
        and which buckets those are (blocking; one walk of the catalog per page)."""
        items = self.listing(peer, set(buckets))
        by_bucket: dict[int, dict[str, str]] = {}
        for fid, stamp in items.items():
            by_bucket.setdefault(G.bucket_of(fid, G.DEFAULT_BUCKETS), {})[fid] = stamp
        files, listed = {}, []
        for b in buckets:
            these = by_bucket.get(b, {})
            if listed and len(files) + len(these) > LISTED_FILES:
                break
            files.update(these)
            listed.append(b)
        return files, listed

    def _pairs(self) -> dict[str, list[int]]:
        """Per other owner, the digests of the files both should hold: the latest scan's,
        or a new scan (blocking)."""
        with self._scan_lock:
            cached = self._last_scan
            if cached is None or cached[0] is not self.cluster.doc or \
                    time.monotonic() - cached[1] > DIGEST_REUSE_SECONDS:
                self._scan()
            return self._last_scan[2]

    async def _sync_pair(self, peer: str, mine: list[int], report: dict) -> None:
        theirs = await self._ask(peer, {"t": "digest"})
        if theirs is None:
            report["unreachable_owners"] += 1
            return
        buckets = G.differing(mine, theirs["digests"])
        report["buckets_differing"] = report.get("buckets_differing", 0) + len(buckets)
        if not buckets:
            return
        loop = asyncio.get_running_loop()
        my_files = await loop.run_in_executor(None, self.listing, peer, set(buckets))
        while buckets:
            # The peer lists as many whole buckets as fit in one answer (``listing_page``)
            # and says which: the rest are asked for next.
            answer = await self._ask(peer, {"t": "digest", "list": buckets})
            if answer is None:
                report["unreachable_owners"] += 1
                return
            listed = set(answer.get("buckets", buckets)) & set(buckets)
            if not listed:
                return
            buckets = [b for b in buckets if b not in listed]

            def in_listed(files: dict) -> dict:
                return {f: v for f, v in files.items() if isinstance(f, str)
                        and G.bucket_of(f, G.DEFAULT_BUCKETS) in listed}
            await self._repair_diff(peer, G.compare(in_listed(my_files),
                                                    in_listed(answer["files"])), report)

    async def _repair_diff(self, peer: str, diff: dict, report: dict) -> None:
        """Give ``peer`` what it lacks, take what this node lacks, reconcile versions."""
        loop = asyncio.get_running_loop()
        report["missing_copies"] += len(diff["they_lack"]) + len(diff["we_lack"])
        gate = asyncio.Semaphore(PUSH_CONCURRENCY)

        async def push(fid: str) -> bool:
            entry = await loop.run_in_executor(None, self.store.view.entry, fid)
            async with gate:
                return entry is not None and await self.replicator.push(peer, entry.attr, None)

        results = await asyncio.gather(*(push(f) for f in diff["they_lack"]))
        report["pushed"] += sum(1 for r in results if r)
        report["push_failures"] += sum(1 for r in results if not r)
        if diff["we_lack"] and R.may_take_replicas(self.store):
            failed = await self.replicator.pull_many(peer, diff["we_lack"], {})
            report["pull_failures"] = report.get("pull_failures", 0) + len(failed)
        for fid in diff["versions"]:
            report["metadata_repaired"] = report.get("metadata_repaired", 0) + \
                await self._reconcile(peer, fid)

    async def _reconcile(self, peer: str, file_id: str) -> int:
        """Take ``peer``'s attr of a file both hold if it wins by the engine's rule."""
        try:
            async with fetch_object(self.cluster, self.replicator.session, peer, file_id,
                                    {}, meta=True) as resp:
                if resp.status != 200:
                    return 0
                attr = attr_of(self.cluster, resp, peer, file_id)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, KeyError,
                ArtStoreError):
            return 0
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                None, lambda: R.apply_update(self.store, attr,
                                             origin={"node": peer, "seq": None},
                                             verify_signature=self.replicator.verify_origin))
        except R.ReplicaRefused as exc:
            log.warning("anti-entropy: %s offered a record of %s that is refused: %s", peer,
                        file_id, exc.detail)
            return 0
        return 1 if result == R.APPLIED else 0

    async def _ask(self, peer: str, message: dict) -> dict | None:
        address = self.cluster.doc.address(peer) if self.cluster.doc else None
        if address is None:
            return None
        try:
            status, body = await self.cluster.transport.request(
                address, DIGEST, self.cluster.sign_for(peer, message),
                timeout=SLOW_ANSWER_SECONDS)
            if status != 200:
                return None
            answer = self.cluster.open_answer(body, peer, "digest")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ArtStoreError):
            return None
        ok = isinstance(answer.get("digests"), list) if "list" not in message else \
            isinstance(answer.get("files"), dict)
        return answer if ok else None

    # --- tombstones: kept until no member holds the file and a while has passed -----------

    async def _purge_tombstones(self) -> int:
        """Forget tombstones older than ``replication.tombstone_days`` that every other
        roster member confirms it holds no copy of (a member that does not answer keeps
        them all). Returns how many went."""
        loop = asyncio.get_running_loop()
        before = time.time() - self.tombstone_days * 86400
        old = await loop.run_in_executor(None, R.old_tombstones, self.store, before)
        if not old or self.cluster.doc is None:
            return 0
        held: set[str] = set()
        for peer in self.cluster.doc.roster:
            if peer == self.cluster.id:
                continue
            answer = await self._ask_held(peer, old)
            if answer is None:
                return 0
            held.update(answer)
        gone = [f for f in old if f not in held]
        return await loop.run_in_executor(None, R.purge_tombstones, self.store, gone)

    async def _ask_held(self, peer: str, file_ids: list[str]) -> list[str] | None:
        address = self.cluster.doc.address(peer)
        try:
            status, body = await self.cluster.transport.request(
                address, HAVE, self.cluster.sign_for(peer, {"t": "have", "ids": file_ids,
                                                            "held": True}),
                timeout=SLOW_ANSWER_SECONDS)
            if status != 200:
                return None
            held = self.cluster.open_answer(body, peer, "have").get("held")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ArtStoreError):
            return None
        return held if isinstance(held, list) else None

    # --- hand-off copies and explicit requests: one question per file ---------------------

    async def _check(self, file_ids: list[str], report: dict, count: bool = True) -> None:
        me = self.cluster.id
        by_owner: dict[str, list[str]] = {}
        loop = asyncio.get_running_loop()
        held = []
        asked: dict[str, list[str]] = {}   # file → the owners asked (the release rule's)
        version = self.cluster.doc.version if self.cluster.doc else None
        for fid in file_ids:
            entry = await loop.run_in_executor(None, self.store.view.entry, fid)
            if entry is None:
                continue
            held.append(entry.attr)
            asked[fid] = self.replicator.owners(fid)
            for owner in asked[fid]:
                if owner != me:
                    by_owner.setdefault(owner, []).append(fid)
        if count:
            report["files"] += len(held)
        attrs = {a["file_id"]: a for a in held}
        pushes = []
        unsure: set[str] = set()     # files some owner could not confirm
        for owner, their_files in by_owner.items():
            answer = await self._missing(owner, their_files)
            if answer is None:
                report["unreachable_owners"] += 1
                unsure.update(their_files)
                continue
            missing, their_version = answer
            if their_version != version:
                unsure.update(their_files)  # not the same roster: do not let go of anything
            report["missing_copies"] += len(missing)
            unsure.update(missing)
            pushes += [(owner, attrs[fid]) for fid in missing if fid in attrs]
        gate = asyncio.Semaphore(PUSH_CONCURRENCY)

        async def push(owner: str, attr: dict) -> bool:
            async with gate:
                return await self.replicator.push(owner, attr, None)

        results = await asyncio.gather(*(push(o, a) for o, a in pushes))
        report["pushed"] += sum(1 for r in results if r)
        report["push_failures"] += sum(1 for r in results if not r)
        # A copy here that is not an owner's (a hand-off, or owners changed by a join) goes
        # once every owner, on the same roster version, said it holds the file.
        changed = (self.cluster.doc.version if self.cluster.doc else None) != version
        for fid in attrs:
            owners = asked[fid]
            if changed or not owners or me in owners or fid in unsure:
                continue
            note = {"reason": "held by its owners", "owners": owners,
                    "document_version": version}
            try:
                await loop.run_in_executor(None, self.store.release_copy, fid, note)
                report["released"] += 1
            except ArtStoreError as exc:
                log.info("keeping %s: %s", fid, exc.detail)

    async def _missing(self, owner: str, file_ids: list[str]) -> tuple[list[str], int] | None:
        """Which of ``file_ids`` ``owner`` lacks, and the cluster document version it holds
        (None: it could not be asked)."""
        address = self.cluster.doc.address(owner) if self.cluster.doc else None
        if address is None:
            return None
        blob = self.cluster.sign_for(owner, {"t": "have", "ids": file_ids})
        try:
            status, body = await self.cluster.transport.request(
                address, HAVE, blob, timeout=SLOW_ANSWER_SECONDS)
            if status != 200:
                return None
            answer = self.cluster.open_answer(body, owner, "have")
            missing, version = answer["missing"], answer["document_version"]
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ArtStoreError, KeyError):
            return None
        if not isinstance(missing, list):
            return None
        return [f for f in missing if isinstance(f, str)], version

    def status(self) -> dict:
        return {"last_full_pass": self.last_full_pass, "running": self.running,
                "interval_seconds": self.interval, "restored": self.restored}


def _stamp(attr: dict) -> str:
    """What must agree between two copies' metadata: its version and when it was made (two
    concurrent PATCHes give the same version number)."""
    return f"{attr.get('version') or 1}:{attr.get('updated_at') or ''}"


def held_here(store, file_ids: list) -> list[str]:
    """Of ``file_ids``, those this node holds a live copy of (blocking)."""
    out = []
    for fid in file_ids:
        try:
            if isinstance(fid, str) and len(fid) <= 64 and store.view.entry(fid) is not None:
                out.append(fid)
        except BadRequest:
            continue
    return out


def missing_here(store, file_ids: list) -> list[str]:
    """Of ``file_ids``, those this node neither holds nor holds deleted (what a peer's
    ``have`` request asks), as they were asked; what is not a file id (a UUID) is left
    out. One read snapshot.
    Blocking: call in a worker thread."""
    out = []
    with store.view.snapshot() as snap:
        for asked in file_ids:
            fid = ids.canonical(asked)
            if fid is None or snap.deleted(fid):
                continue
            entry, check = snap.entry(fid), snap.fixity(fid)
            try:
                held = entry is not None and store.disks.get(entry.disk).online
            except StoreCorrupt:    # on a disk that is not configured: not a copy either
                held = False
            if not held or (check and check.get("quarantine")):
                out.append(asked)   # a quarantined copy, or one on an offline disk, is none
    return out
