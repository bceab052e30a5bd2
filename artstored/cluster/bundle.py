"""Many files in one answer: how a node fetches what it lacks (catching up after an outage,
following a busy feed, repairing a bucket).

One signed fetch per file cost a request, a signature each way and a commit of its own;
a bundle costs one request for up to ``MAX_IDS`` files, and its files reach the group
commit together (one flush for the lot).

``POST /cluster/v1/bundle`` with a signed ``{t: "bundle", ids: [...]}`` is answered (200,
``application/x-artstore-bundle``) by:

- 4 bytes, big-endian: the length of the manifest;
- the manifest, signed by the answering node for the asker: ``{t: "bundle", files:
  [attr, ...], later: [ids], missing: [ids]}``;
- each listed file's bytes, in the manifest's order, exactly ``attr["file_size"]`` of each.

A file the node does not hold (deleted, quarantined, on an offline disk) is under
``missing``; files past ``BUNDLE_BYTES`` are under ``later`` (ask again). The manifest's
signature says which node answered; each file's bytes are checked by the receiver against
its origin-signed attr (size, SHA-256, signature), as every replica's are.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct

import aiohttp
from aiohttp import web

from ..engine.errors import ArtStoreError, FileDeleted, FileNotFound
from ..replication import envelope as E
from .wire import BUNDLE, CONNECT_SECONDS

log = logging.getLogger("artstored.cluster.bundle")

MAX_IDS = 256                 # files one request may name
BUNDLE_BYTES = 32 << 20       # bytes one answer carries at most (more: ``later``)
IDS_PER_BUNDLE = 32           # files one fetch puts in a request: several requests overlap
BUNDLES_AT_ONCE = 4           # requests one fetch keeps open towards a peer
CHUNK = 1 << 20
READ_AHEAD = 8               # pieces (up to CHUNK each) read before they are sent
CONTENT_TYPE = "application/x-artstore-bundle"
_LENGTH = struct.Struct(">I")


# --- serving ----------------------------------------------------------------------------------

def open_files(store, file_ids: list[str]):
    """([(attr, open file)], later, missing) for a bundle of ``file_ids`` (blocking). The
    files are opened before the manifest is sent, so a delete meanwhile cannot cut the
    stream short. The caller closes them."""
    opened, later, missing, total = [], [], [], 0
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
            except ArtStoreError:
                missing.append(fid)
                continue
            opened.append((entry.attr, fobj))
            total += entry.attr["file_size"]
            # Read-ahead of every file at once: the disk works on the next files (in its
            # own order) while this one is on the wire.
            os.posix_fadvise(fobj.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)
    except BaseException:
        for _, fobj in opened:
            fobj.close()
        raise
    return opened, later, missing


async def serve(request: web.Request, cluster, env, store) -> web.StreamResponse:
    """Answer the bundle request ``env`` (already checked: a roster member's, for this
    node). Raises BadRequest for a malformed list of ids."""
    from ..engine.errors import BadRequest
    ids = env.message.get("ids")
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_IDS or \
            not all(isinstance(i, str) and len(i) <= 64 for i in ids):
        raise BadRequest(f"send {{t: bundle, ids: [1 to {MAX_IDS} file ids]}}",
                         code="envelope_malformed")
    loop = asyncio.get_running_loop()
    opened, later, missing = await loop.run_in_executor(None, open_files, store, ids)
    try:
        manifest = cluster.sign_for(env.sender, {
            "t": "bundle", "files": [attr for attr, _ in opened], "later": later,
            "missing": missing})
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
        if isinstance(piece, OSError):
            # Shorter on disk than its record, or unreadable: cut the answer (the receiver
            # sees a short stream and asks elsewhere); scrub will find this copy.
            log.error("bundle: %s", piece)
            response.force_close()
            return response
        await response.write_eof()
        return response
    finally:
        for _, fobj in opened:
            fobj.close()


async def _read_all(opened, pieces: asyncio.Queue) -> None:
    """Put the bytes of every opened file on ``pieces`` (None at the end, or the OSError
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
    except OSError as exc:
        await pieces.put(exc)       # the sender cuts the answer there
        return
    await pieces.put(None)


# --- fetching ---------------------------------------------------------------------------------

async def fetch(replicator, peer: str, file_ids: list[str], origins: dict) -> list[str]:
    """Fetch ``file_ids`` from ``peer`` in bundles (``BUNDLES_AT_ONCE`` requests at a time)
    and commit each as a replica (origin ``origins[id]``). A file ``peer`` does not hold
    (deleted there since: its record follows) or whose copy is refused (counted in
    ``pull_failures``) is done with. Returns the ids that could not be fetched at all
    (``peer`` unreachable, the answer cut or forged): the caller asks for their repair."""
    gate = asyncio.Semaphore(BUNDLES_AT_ONCE)
    failed: list[str] = []

    async def one(ids: list[str]) -> None:
        async with gate:
            while ids:
                try:
                    ids = await _fetch_one(replicator, peer, ids, origins)
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError,
                        asyncio.IncompleteReadError, E.EnvelopeError, ArtStoreError) as exc:
                    log.info("bundle of %d files from %s failed: %s", len(ids), peer, exc)
                    replicator.stats["pull_failures"] += 1
                    failed.extend(ids)
                    return

    await asyncio.gather(*(one(file_ids[i:i + IDS_PER_BUNDLE])
                           for i in range(0, len(file_ids), IDS_PER_BUNDLE)))
    return failed


async def _fetch_one(replicator, peer: str, ids: list[str], origins: dict) -> list[str]:
    """One bundle request; returns the ids ``peer`` put off (``later``). Files whose bytes
    arrived are committed before this returns; on a failure part-way, the ones not yet
    received are what the raised exception is about (the caller counts them failed; a
    second fetch of one that did arrive changes nothing)."""
    cluster = replicator.cluster
    blob = cluster.sign_for(peer, {"t": "bundle", "ids": ids})
    commits: list[asyncio.Task] = []
    try:
        async with replicator.session.post(
                f"http://{cluster.doc.address(peer)}{BUNDLE}", data=blob,
                headers={"Content-Type": "application/msgpack"},
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_SECONDS,
                                              sock_read=60)) as resp:
            if resp.status != 200:
                raise ValueError(f"{peer} answered {resp.status}: "
                                 f"{(await resp.read())[:200]!r}")
            (length,) = _LENGTH.unpack(await resp.content.readexactly(_LENGTH.size))
            if length > E.MAX_ENVELOPE_BYTES:
                raise E.MalformedEnvelope(f"{peer}'s bundle manifest is too large")
            manifest = cluster.open_answer(await resp.content.readexactly(length), peer,
                                           "bundle")
            files, later = _checked(manifest, ids, peer)
            for attr in files:
                origin = origins.get(attr["file_id"]) or {"node": peer, "seq": None}
                commits.append(await _receive(replicator, resp.content, attr, origin))
    finally:
        # What arrived is committed (or refused) whatever happened to the rest.
        for result in await asyncio.gather(*commits, return_exceptions=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
    return later


def _checked(manifest: dict, asked: list[str], peer: str) -> tuple[list[dict], list[str]]:
    files, later = manifest.get("files"), manifest.get("later")
    if not isinstance(files, list) or not isinstance(later, list):
        raise E.MalformedEnvelope(f"{peer}'s bundle manifest has no files/later lists")
    wanted, seen = set(asked), set()
    for attr in files:
        fid = attr.get("file_id") if isinstance(attr, dict) else None
        size = attr.get("file_size") if isinstance(attr, dict) else None
        if fid not in wanted or fid in seen or type(size) is not int or size < 0:
            raise E.MalformedEnvelope(f"{peer}'s bundle lists a file not asked for, twice, "
                                      "or without a size")
        seen.add(fid)
    later = [fid for fid in later if fid in wanted and fid not in seen]
    return files, later


async def _exactly(content: aiohttp.StreamReader, size: int):
    """The next ``size`` bytes of the answer, in pieces of at most CHUNK;
    IncompleteReadError if it ends sooner."""
    while size > 0:
        piece = await content.readexactly(min(CHUNK, size))
        size -= len(piece)
        yield piece


async def _receive(replicator, content, attr: dict, origin: dict) -> asyncio.Task:
    """Take one file's bytes off the answer; return the task committing it (hashing and
    checking run in a worker thread while the next file arrives)."""
    fid = attr["file_id"]
    if attr["file_size"] <= replicator.small_replica_bytes:
        data = await content.readexactly(attr["file_size"]) if attr["file_size"] else b""
        work = replicator.take_replica(attr, origin, _once(data), in_thread=True)
    else:
        writer = await replicator.begin_replica(attr)
        try:
            await replicator.fill(writer, _exactly(content, attr["file_size"]))
        except BaseException:
            writer.abort()
            raise
        work = replicator.finish_replica(writer, attr, origin)

    async def commit() -> None:
        try:
            await work
            replicator.stats["pulled"] += 1
        except (FileNotFound, FileDeleted):
            pass
        except ArtStoreError as exc:
            replicator.stats["pull_failures"] += 1
            log.warning("replica of %s refused: %s", fid, exc.detail)
    return asyncio.ensure_future(commit())


async def _once(data: bytes):
    yield data
