"""Following the other members' change feeds: the pull side of replication (a mixin of
``replicator.Replicator``, which owns the state it uses).

Every member follows every other member's WAL (``POST /cluster/v1/changes``, long-polled)
from a cursor kept in LMDB, and applies what concerns it: the new files it owns and lacks
are fetched together in bundles (``bundle``), a metadata change of a file it holds is
applied by the engine's rule, a delete leaves a tombstone. Applying a record twice changes
nothing, so a node back from an outage simply catches up from its cursors.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from ..engine import replica as R
from ..engine import wal as W
from . import bundle
from .repair import missing_here
from .wire import CHANGES

log = logging.getLogger("artstored.cluster.replication")

FEED_LIMIT = 1000
FEED_WAIT = 20.0
RETRY_SECONDS = 2.0
RECORD_TRIES = 5            # a record that fails this often is passed by (and repaired)
PUSH_GRACE_SECONDS = 3.0    # a new file's own push usually lands within this


class FeedFollower:
    """The follower half of a Replicator: ``_follow(peer)`` runs as a task per peer."""

    async def _follow(self, peer: str) -> None:
        """Apply ``peer``'s records for as long as it is on the roster."""
        loop = asyncio.get_running_loop()
        cursor = await loop.run_in_executor(None, R.peer_cursor, self.store, peer)
        failures: dict[int, int] = {}       # seq → failed attempts
        while True:
            try:
                batch = await self._fetch_changes(peer, cursor)
                records = batch["records"]
            except asyncio.CancelledError:
                raise
            except Exception as exc:        # unreachable, refused, garbled: ask again
                log.debug("following %s: %s", peer, exc)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            try:
                cursor = await self._apply_batch(peer, records, cursor, failures)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug, or the store failing: the follower must not die of it (nothing
                # would start it again before a restart). The batch is tried again.
                log.exception("applying %s's records failed", peer)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            await self._save_cursor(peer, cursor)

    async def _apply_batch(self, peer: str, records: list[dict], cursor: int,
                           failures: dict[int, int]) -> int:
        """Apply one batch of ``peer``'s records; return the sequence up to which all are
        applied. The new files it names that this node owns and lacks are fetched together,
        in bundles (their commits share flushes); a change or delete of one of them waits
        for that fetch. A record that fails is retried (the batch stops there) and, after
        ``RECORD_TRIES``, passed by with a repair asked for its file; a file that could not
        be fetched is repaired, not retried."""
        creates = {r["file_id"]: r for r in records if r.get("kind") == W.FILE_CREATE
                   and r.get("state") == W.COMMITTED and isinstance(r.get("file_id"), str)
                   and self.cluster.id in self.owners(r["file_id"])}
        fetch = asyncio.ensure_future(self._fetch_new(peer, list(creates.values()))) \
            if creates else None
        done_upto, stopped = cursor, False

        def passed_by(record: dict, exc) -> None:
            log.warning("passing %s's record %s by: %s", peer, record.get("seq"), exc)
            self.stats["records_passed_by"] += 1
            if record.get("file_id"):
                self.repairer.request([record["file_id"]])

        try:
            for record in records:
                fid = record.get("file_id")
                if fetch is not None and fid in creates and not fetch.done():
                    await asyncio.wait([fetch])
                try:
                    if record.get("kind") != W.FILE_CREATE:
                        await self._apply(peer, record)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    tries = failures[record["seq"]] = failures.get(record["seq"], 0) + 1
                    if tries < RECORD_TRIES:
                        log.info("applying %s's record %s failed (%s); retrying", peer,
                                 record.get("seq"), exc)
                        stopped = True
                        break
                    passed_by(record, exc)
                failures.pop(record["seq"], None)
                done_upto = record["seq"]
        except BaseException:
            if fetch is not None:
                fetch.cancel()
                await asyncio.gather(fetch, return_exceptions=True)
            raise
        try:
            failed = await fetch if fetch is not None else []
        except Exception:
            # The fetch broke as a whole (a bug, the store refusing): every new file of the
            # batch is passed by with a repair asked for; the follower goes on.
            log.exception("fetching %s's new files failed", peer)
            failed = list(creates)
            self.stats["pull_failures"] += 1
        for fid in failed:
            passed_by(creates[fid], "its file could not be fetched")
        if stopped:
            await asyncio.sleep(RETRY_SECONDS)  # a record failed: retry it shortly
        return done_upto

    async def _fetch_new(self, peer: str, creates: list[dict]) -> list[str]:
        """Fetch the files of ``creates`` (records of ``peer``'s) that this node lacks;
        return those that could not be fetched."""
        loop = asyncio.get_running_loop()
        # The node that took an upload pushes it to its owners at once: give that push
        # time to land before fetching a second copy of the same bytes.
        age = time.time() - max(r.get("ts", 0) for r in creates) / 1e6
        if 0 <= age < PUSH_GRACE_SECONDS:
            await asyncio.sleep(PUSH_GRACE_SECONDS - age)
        if not R.may_take_replicas(self.store):
            return []
        lacking = await loop.run_in_executor(None, missing_here, self.store,
                                             [r["file_id"] for r in creates])
        origins = {r["file_id"]: (r.get("data") or {}).get("origin")
                   or {"node": peer, "seq": r["seq"]} for r in creates}
        return await self.pull_many(peer, lacking, origins)

    async def pull_many(self, peer: str, file_ids: list[str], origins: dict) -> list[str]:
        """Fetch ``file_ids`` from ``peer`` (bundled) unless a fetch of one is already
        under way (then that one is awaited: each member's feed lists the copies it took,
        so two feeds name a file). Returns the ids this call could not fetch."""
        loop = asyncio.get_running_loop()
        mine: dict[str, asyncio.Future] = {}
        others = []
        for fid in dict.fromkeys(file_ids):
            if fid in self._pulling:
                others.append(self._pulling[fid])
            else:
                mine[fid] = self._pulling[fid] = loop.create_future()
        try:
            failed = await bundle.fetch(self, peer, list(mine), origins) if mine else []
        finally:
            for fid, future in mine.items():
                if self._pulling.get(fid) is future:
                    del self._pulling[fid]
                if not future.done():
                    future.set_result(None)
        if others:
            # Waited for, never cancelled from here: they belong to another fetch.
            await asyncio.wait(others)
        return failed

    async def _save_cursor(self, peer: str, cursor: int) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, R.set_peer_cursor,
                                                             self.store, peer, cursor)
        except Exception:
            # Not saved: after a restart these records are applied again, which changes
            # nothing (every apply is idempotent).
            log.exception("saving the cursor of %s failed", peer)

    def _refused(self, peer: str, record: dict, why: str) -> None:
        """A change in ``peer``'s feed that this node will not apply: counted and logged
        (a relaying node altered it, or forged it); the follower goes on."""
        self.stats["changes_refused"] += 1
        log.warning("refused %s of %s from %s (record %s): %s", record.get("kind"),
                    record.get("file_id"), peer, record.get("seq"), why)

    async def _fetch_changes(self, peer: str, after: int) -> dict:
        address = self.cluster.doc.address(peer)
        blob = self.cluster.sign_for(peer, {"t": "changes", "after": after, "limit": FEED_LIMIT,
                                         "wait": FEED_WAIT})
        async with self._session.post(
                f"http://{address}{CHANGES}", data=blob,
                headers={"Content-Type": "application/msgpack"},
                timeout=aiohttp.ClientTimeout(total=FEED_WAIT + 10)) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise ValueError(f"{peer} answered {resp.status}: {body[:200]!r}")
            return self.cluster.open_answer(body, peer, "changes")

    async def _apply(self, peer: str, record: dict) -> None:
        if record.get("state") != W.COMMITTED:
            return
        kind, file_id, data = record.get("kind"), record.get("file_id"), record.get("data") or {}
        origin = data.get("origin") or {"node": peer, "seq": record["seq"],
                                        "sig": data.get("origin_sig")}
        loop = asyncio.get_running_loop()
        if kind == W.FILE_UPDATE and isinstance(data.get("attr"), dict):
            try:
                result = await loop.run_in_executor(None, lambda: R.apply_update(
                    self.store, data["attr"], origin=origin,
                    verify_signature=self.verify_origin))
            except R.ReplicaRefused as exc:
                self._refused(peer, record, exc.detail)
                return
            if result == R.APPLIED:
                self.stats["updates_applied"] += 1
        elif kind == W.FILE_DELETE and file_id:
            if not R.delete_signed(file_id, origin.get("node"), origin.get("sig"),
                                   self.verify_origin):
                self._refused(peer, record, "the delete is not signed by the node it names "
                                            "as its origin")
                return
            actor = W.Actor(**{k: (record.get("actor") or {}).get(k, "system")
                               for k in ("id", "name")})
            result = await loop.run_in_executor(None, lambda: R.apply_delete(
                self.store, file_id, actor, origin=origin))
            if result == R.APPLIED:
                self.stats["deletes_applied"] += 1
