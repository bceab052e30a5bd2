"""Streaming bytes from the network into an upload writer: the event loop receives while
a worker thread hashes and writes the previous batch (bounded memory, disk and network
overlap). Used by the upload route and by replication."""

from __future__ import annotations

import asyncio

BATCH_BYTES = 1 << 20


async def stream_to_writer(pieces, writer, *, keep_partial: bool = False) -> None:
    """Write an async iterable of byte pieces to an upload writer in ~1 MiB batches, one
    batch in a worker thread while the next is received. Raises what the writer raises, and
    what the iterable raises (a connection lost); with ``keep_partial`` every piece received
    before that is written first (a resumable session keeps what arrived)."""
    loop = asyncio.get_running_loop()
    batch: list[memoryview] = []
    size = 0
    in_flight = None
    try:
        async for piece in pieces:
            batch.append(piece)
            size += len(piece)
            if size >= BATCH_BYTES:
                if in_flight is not None:
                    await in_flight
                in_flight = loop.run_in_executor(None, writer.write_many, batch)
                batch, size = [], 0
    except (ConnectionError, asyncio.IncompleteReadError, EOFError):
        if in_flight is not None:
            await in_flight
        if keep_partial and batch:
            await loop.run_in_executor(None, writer.write_many, batch)
        raise
    except Exception:
        # The body failed its checks: let the write in flight end before the caller
        # aborts the writer (writers also lock against it).
        if in_flight is not None and not in_flight.done():
            await asyncio.wait([in_flight])
        raise
    if in_flight is not None:
        await in_flight
    if batch:
        await loop.run_in_executor(None, writer.write_many, batch)
