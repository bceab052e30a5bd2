"""Many files in one answer: how a node fetches what it lacks (catching up after an outage,
following a busy feed, repairing a bucket).

One signed fetch per file cost a request, a signature each way and a commit of its own;
a bundle costs one request for up to ``MAX_IDS`` files, and its files reach the group
commit together (one flush for the lot).

``POST /cluster/v1/bundle`` with a signed ``{t: "bundle", ids: [...]}`` is answered (200,
``application/x-artstore-bundle``) by:

- 4 bytes, big-endian: the length of the manifest;
- the manifest, signed by the answering node for the asker: ``{t: "bundle", files:
  [attr, ...], later: [ids], gone: [ids], unavailable: [ids]}``;
- each listed file's bytes, in the manifest's order, exactly ``attr["file_size"]`` of each.

``gone``: not held there, or deleted (its delete record follows); ``unavailable``: held
but not readable now (quarantined, disk offline); ``later``: past ``BUNDLE_BYTES`` (ask
again). The receiver checks every attr's origin signature before reading any bytes (a
file's size says where the next begins), then each file's bytes against its attr (size,
SHA-256), as every replica's are. What it could not take, it has repaired.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import os
import socket
import struct
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from ..engine import attrs as A
from ..engine import replica as R
from ..engine.errors import ArtStoreError, BadRequest, FileDeleted, FileNotFound
from ..replication import envelope as E
from .wire import BUNDLE, CONNECT_SECONDS

log = logging.getLogger("artstored.cluster.bundle")

MAX_IDS = 256                 # files one request may name
BUNDLE_BYTES = 32 << 20       # bytes one answer carries at most (more: ``later``)
IDS_PER_BUNDLE = 32           # files one fetch puts in a request: several requests overlap
BUNDLES_AT_ONCE = 4           # requests one fetch keeps open towards a peer
CHUNK = 1 << 20
RECEIVE_TIMEOUT = 60.0       # seconds a bundle's sender may stay silent
RECEIVER_THREADS = 8         # bundles received at once by this node (more wait)
READ_AHEAD = 8               # pieces (up to CHUNK each) read before they are sent
READ_AHEAD_BYTES = 8 << 20    # of each file, asked of the disk when the bundle is opened
SERVING_AT_ONCE = 8          # bundle answers one node sends at a time (the rest wait)
CONTENT_TYPE = "application/x-artstore-bundle"
_LENGTH = struct.Struct(">I")


# --- serving ----------------------------------------------------------------------------------

def open_files(store, file_ids: list[str]):
    """([(attr, open file)], later, gone, unavailable) for a bundle of ``file_ids``
    (blocking). ``gone``: not held here or deleted; ``unavailable``: held but not readable
    now (quarantined, disk offline, mode ``ar``). The files are opened before the manifest
    is sent, so a delete meanwhile cannot cut the stream short. The caller closes them."""
    opened, later, gone, unavailable, total = [], [], [], [], 0
    seen = set()
    try:
        for fid in file_ids:
            if fid in seen:
                continue
            seen.add(fid)
            if opened and total >= BUNDLE_BYTES:
                later.append(fid)
                continue
            try:
                entry, fobj = store.open_content(fid)
            except (FileNotFound, FileDeleted, BadRequest):
                gone.append(fid)
                continue
            except ArtStoreError:
                unavailable.append(fid)
                continue
            opened.append((entry.attr, fobj))
            total += entry.attr["file_size"]
            # Read-ahead of every file's start at once: the disk works on the next files
            # (in its own order) while this one is on the wire.
            os.posix_fadvise(fobj.fileno(), 0, READ_AHEAD_BYTES, os.POSIX_FADV_WILLNEED)
    except BaseException:
        for _, fobj in opened:
            fobj.close()
        raise
    return opened, later, gone, unavailable


async def serve(request: web.Request, cluster, env, store) -> web.StreamResponse:
    """Answer the bundle request ``env`` (already checked: a roster member's, for this
    node). Raises BadRequest for a malformed list of ids."""
    ids = env.message.get("ids")
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_IDS or \
            not all(isinstance(i, str) and len(i) <= 64 for i in ids):
        raise BadRequest(f"send {{t: bundle, ids: [1 to {MAX_IDS} file ids]}}",
                         code="envelope_malformed")
    loop = asyncio.get_running_loop()
    async with cluster.replicator.bundle_gate:
        opened, later, gone, unavailable = await loop.run_in_executor(None, open_files,
                                                                      store, ids)
        try:
            return await _send(request, cluster, env, opened, later, gone, unavailable)
        finally:
            await loop.run_in_executor(None, _close_all, opened)


def _close_all(opened) -> None:
    for _, fobj in opened:
        fobj.close()


async def _send(request, cluster, env, opened, later, gone, unavailable):
    """The manifest, then the bytes of every opened file (read ahead of the socket by
    ``_read_all``); an unreadable file cuts the answer there (the asker sees it short)."""
    manifest = cluster.sign_for(env.sender, {
        "t": "bundle", "files": [attr for attr, _ in opened], "later": later,
        "gone": gone, "unavailable": unavailable})
    head = _LENGTH.pack(len(manifest)) + manifest
    response = web.StreamResponse(status=200, headers={
        "Content-Type": CONTENT_TYPE,
        "Content-Length": str(len(head) + sum(a["file_size"] for a, _ in opened))})
    await response.prepare(request)
    await response.write(head)
    # Reading runs ahead of sending (up to READ_AHEAD pieces): the disk and the socket
    # work at the same time, not in turns.
    pieces: asyncio.Queue = asyncio.Queue(READ_AHEAD)
    reader = asyncio.ensure_future(_read_all(opened, pieces))
    try:
        while isinstance(piece := await pieces.get(), bytes):
            await response.write(piece)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    if piece is not None:
        # Shorter on disk than its record, or unreadable: cut the answer (the receiver
        # sees a short stream and asks elsewhere); scrub will find this copy.
        log.error("bundle: %s", piece)
        response.force_close()
        return response
    await response.write_eof()
    return response


async def _read_all(opened, pieces: asyncio.Queue) -> None:
    """Put the bytes of every opened file on ``pieces`` (None at the end, or the exception
    that stopped it), reading in a worker thread: small files a batch at a time, large
    ones a CHUNK at a time."""
    loop = asyncio.get_running_loop()

    def read_batch(start: int) -> tuple[list[bytes], int]:
        out, size, i = [], 0, start
        while i < len(opened) and size < CHUNK:
            attr, fobj = opened[i]
            left = attr["file_size"] - fobj.tell()
            data = fobj.read(min(left, CHUNK)) if left > 0 else b""
            if left > 0 and not data:
                raise OSError(f"{attr['file_id']} is shorter on disk than its record")
            out.append(data)
            size += len(data)
            if len(data) == left:
                i += 1
        return out, i

    i = 0
    try:
        while i < len(opened):
            batch, i = await loop.run_in_executor(None, read_batch, i)
            for data in batch:
                if data:
                    await pieces.put(data)
    except Exception as exc:        # unreadable, shorter than its record, or a bug
        await pieces.put(exc)       # the sender cuts the answer there
        return
    await pieces.put(None)


# --- fetching ---------------------------------------------------------------------------------

async def fetch(replicator, peer: str, file_ids: list[str], origins: dict) -> list[str]:
    """Fetch ``file_ids`` from ``peer`` in bundles (``BUNDLES_AT_ONCE`` requests at a time)
    and commit each as a replica (origin ``origins[id]``). Done with: a file committed
    here (or already here), and one ``peer`` no longer holds (deleted there: its record
    follows). Returned, for the caller to have repaired: every other one (``peer``
    unreachable or unable to read it, the answer cut, forged or incomplete, the copy
    refused here)."""
    gate = asyncio.Semaphore(BUNDLES_AT_ONCE)
    failed: list[str] = []
    # Commits under way: awaited at the end, so that a request slot goes on to the next
    # bundle while the group commit flushes the last one.
    committing: list[tuple[str, object]] = []

    async def one(ids: list[str]) -> None:
        async with gate:
            while ids:
                pending = set(ids)        # asked for, not yet accounted for
                try:
                    ids = await _fetch_one(replicator, peer, ids, origins, pending, failed,
                                           committing)
                except (http.client.HTTPException, OSError, ValueError,
                        asyncio.IncompleteReadError, E.EnvelopeError, ArtStoreError) as exc:
                    log.info("bundle of %d files from %s failed: %s", len(pending), peer,
                             exc)
                    replicator.stats["pull_failures"] += 1
                    failed.extend(sorted(pending))
                    return

    try:
        results = await asyncio.gather(*(one(file_ids[i:i + IDS_PER_BUNDLE])
                                         for i in range(0, len(file_ids), IDS_PER_BUNDLE)),
                                       return_exceptions=True)
    finally:
        # Every commit handed on is awaited and counted, whatever happened to the rest.
        for fid, future in committing:
            if not await _committed(replicator, fid, future):
                failed.append(fid)
    for result in results:
        if isinstance(result, BaseException):
            raise result                  # a bug, or cancelled: the caller repairs them all
    return failed


async def _fetch_one(replicator, peer: str, ids: list[str], origins: dict, pending: set,
                     failed: list, committing: list) -> list[str]:
    """One bundle request; returns the ids ``peer`` put off (``later``). Each id leaves
    ``pending`` once accounted for (handed to the group commit -- its commit is added to
    ``committing`` --, gone there, or added to ``failed``), also when this raises.

    The answer's bytes are received, hashed, checked and written by one worker thread with
    a blocking socket (``_Receiver``), not by the event loop: a bulk transfer through the
    loop went at the pace the loop got the GIL back after each 256 KiB read. Signing the
    request and opening the signed manifest stay on the loop."""
    cluster = replicator.cluster
    blob = cluster.sign_for(peer, {"t": "bundle", "ids": ids})
    receiver = _Receiver(replicator, cluster.doc.address(peer), peer)
    commits: list[tuple[str, asyncio.Future]] = []
    try:
        raw = await _in_receiver_thread(receiver, receiver.start, blob)
        manifest = cluster.open_answer(raw, peer, "bundle")
        await _in_receiver_thread(receiver, receiver.take_all, manifest, ids, origins,
                                  commits.append)
        pending.difference_update(receiver.later)
    finally:
        receiver.close()
        # What arrived goes on to be committed (awaited in ``fetch``), whatever happened
        # to the rest; what was refused here is counted here, on the loop.
        pending.difference_update(receiver.gone)
        committing.extend(commits)
        replicator.stats["pull_failures"] += len(receiver.refused)
        pending.difference_update(fid for fid, _ in commits)
        for fid in receiver.refused:
            failed.append(fid)
            pending.discard(fid)
    # Neither sent, nor put off, nor gone there (unavailable, or left out): failed.
    failed.extend(sorted(pending))
    pending.clear()
    return receiver.later


async def _in_receiver_thread(receiver, fn, *args):
    """Run one blocking step of ``receiver`` in a receiver thread (their own pool: a
    transfer holds its thread for seconds, and must never queue the daemon's other work,
    or a peer's bundle requests it is serving, behind it). If the caller is cancelled, the
    receiver is stopped (its socket shut down wakes a blocked read) and the step is waited
    for, so that nothing of it runs on, or blocks the event loop, afterwards."""
    future = asyncio.get_running_loop().run_in_executor(_RECEIVERS, fn, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        receiver.stop()
        await asyncio.gather(future, return_exceptions=True)
        raise


_RECEIVERS = ThreadPoolExecutor(max_workers=RECEIVER_THREADS,
                                thread_name_prefix="bundle-receiver")


async def _committed(replicator, fid: str, future) -> bool:
    """Whether the commit of ``fid`` left the file here (or it is gone here: nothing to
    take); a refusal or failure is counted and logged. (Shielded: a cancelled caller must
    not cancel the group commit's future, which the committer still resolves.)"""
    try:
        await asyncio.shield(asyncio.wrap_future(future))
        replicator.stats["pulled"] += 1
        return True
    except (FileNotFound, FileDeleted):
        return True                     # deleted here meanwhile: nothing to take
    except ArtStoreError as exc:        # refused: no room, the mode
        replicator.stats["pull_failures"] += 1
        log.warning("replica of %s from a bundle refused: %s", fid, exc.detail)
        return False
    except Exception:                   # never silently on the write path
        replicator.stats["pull_failures"] += 1
        log.exception("replica of %s from a bundle failed", fid)
        return False


class _Receiver:
    """The blocking side of one bundle request, run in a worker thread: send it, read the
    manifest (``start``), then read each file's bytes, check them against its attr and
    hand them to the group commit (``take_all``). One thread at a time, except ``stop``
    (from the event loop, to end it)."""

    def __init__(self, replicator, address: str, peer: str):
        self.replicator, self.store, self.peer = replicator, replicator.store, peer
        host, _, port = address.rpartition(":")
        self.conn = http.client.HTTPConnection(host.strip("[]"), int(port),
                                               timeout=CONNECT_SECONDS)
        self.resp = None
        self.refused: list[str] = []    # ids whose bytes arrived and were refused here
        self.later: list[str] = []      # ids the peer put off (ask again)
        self.gone: list[str] = []       # ids the peer does not hold (or deleted)
        self._stopped = False

    def start(self, blob: bytes) -> bytes:
        """Send the request; the manifest's bytes (not yet checked)."""
        self.conn.connect()                       # a peer that does not accept fast is down
        self.conn.sock.settimeout(RECEIVE_TIMEOUT)
        self.conn.request("POST", BUNDLE, body=blob,
                          headers={"Content-Type": "application/msgpack"})
        self.resp = self.conn.getresponse()
        if self.resp.status != 200:
            raise ValueError(f"{self.peer} answered {self.resp.status}: "
                             f"{self.resp.read(200)!r}")
        (length,) = _LENGTH.unpack(self._exactly(_LENGTH.size))
        if length > E.MAX_ENVELOPE_BYTES:
            raise E.MalformedEnvelope(f"{self.peer}'s bundle manifest is too large")
        return self._exactly(length)

    def take_all(self, manifest: dict, asked: list[str], origins: dict, submitted) -> None:
        """Check the (opened) manifest (``_checked``, here rather than on the event loop:
        a signature check per file), note its ``later`` and ``gone``, then read every
        listed file's bytes (in the manifest's order) and submit each good copy to the
        group commit (``submitted((file_id, future))``), with origin ``origins[id]``; a
        copy refused here (size, SHA-256, signature, no room) is listed in ``refused``.
        Raises MalformedEnvelope for a bad manifest, ValueError if every file was put
        off, and if the answer is cut (what is not read yet is then the caller's to count
        failed)."""
        files, self.later, self.gone = _checked(manifest, asked, self.peer,
                                                self.replicator.verify_origin)
        if len(self.later) == len(asked):
            raise ValueError(f"{self.peer} put every file of a bundle off")
        plan = [(attr, origins.get(attr["file_id"]) or {"node": self.peer, "seq": None})
                for attr in files]
        for attr, origin in plan:
            fid, size = attr["file_id"], attr["file_size"]
            left = size
            try:
                if size <= self.replicator.small_replica_bytes:
                    data, left = self._exactly(size), 0
                    writer = self.store.buffer([data] if size else [])
                else:
                    writer = self.store.begin_upload(size)
                    try:
                        while left:
                            chunk = self._exactly(min(CHUNK, left))
                            left -= len(chunk)
                            writer.write_many([chunk])
                        writer.finish()
                    except BaseException:
                        writer.abort()
                        raise
                try:
                    prepared = R.prepare_replica(self.store, writer, attr, origin=origin,
                                                 verify_signature=self.replicator.verify_origin)
                except BaseException:
                    writer.abort()
                    raise
                try:
                    prepared.stage()         # here, not in the committer's one thread
                except BaseException:
                    prepared.discard()
                    raise
            except ArtStoreError as exc:     # refused here (no room, the mode, a bad copy)
                self._skip(left)             # the stream stays in step with the manifest
                log.warning("replica of %s from %s refused: %s", fid, self.peer, exc.detail)
                self.refused.append(fid)
                continue
            if self._stopped:                # the fetch was cancelled: nobody would await
                prepared.discard()
                raise asyncio.CancelledError()
            try:
                future = self.store.commit_upload(prepared)
            except BaseException:            # the committer has stopped (shutting down)
                prepared.discard()
                raise
            submitted((fid, future))

    def _skip(self, n: int) -> None:
        while n:
            n -= len(self._exactly(min(CHUNK, n)))

    def _exactly(self, n: int) -> bytes:
        data = self.resp.read(n) if n else b""
        if len(data) != n:
            raise asyncio.IncompleteReadError(data, n)
        return data

    def stop(self) -> None:
        """From another thread: make the receiving thread's blocked read (if any) return
        at once and its ``take_all`` hand nothing more to the group commit."""
        self._stopped = True
        sock = self.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.conn.close()


def _checked(manifest: dict, asked: list[str], peer: str, verify_origin):
    """(files, later, gone) of a bundle manifest, checked: only files asked for, once
    each, each attr signed by its origin node (its size says where the next file starts:
    it must be the signed one). MalformedEnvelope otherwise."""
    files, later, gone = manifest.get("files"), manifest.get("later"), manifest.get("gone")
    if not all(isinstance(x, list) for x in (files, later, gone)):
        raise E.MalformedEnvelope(f"{peer}'s bundle manifest lacks files/later/gone lists")
    wanted, seen = set(asked), set()
    for attr in files:
        fid = attr.get("file_id") if isinstance(attr, dict) else None
        size = attr.get("file_size") if isinstance(attr, dict) else None
        if fid not in wanted or fid in seen or type(size) is not int or size < 0:
            raise E.MalformedEnvelope(f"{peer}'s bundle lists a file not asked for, twice, "
                                      "or without a size")
        signature = attr.get("signature")
        if not isinstance(signature, dict) or not verify_origin(A.fixity_payload(attr),
                                                                signature):
            raise E.MalformedEnvelope(f"{peer}'s bundle: the record of {fid} is not "
                                      "signed by its origin node")
        seen.add(fid)
    later = [fid for fid in later if fid in wanted and fid not in seen]
    gone = [fid for fid in gone if fid in wanted and fid not in seen]
    return files, later, gone
