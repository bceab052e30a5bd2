"""Sending cluster messages over HTTP: the only place the cluster opens connections.

Every message is one signed envelope POSTed to the peer's ``/cluster/v1/swim`` (or
``/cluster/v1/join``). Delivery is best effort, as SWIM assumes: a send that fails or
times out is counted and forgotten, never retried here (the protocol retries by itself).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import aiohttp

log = logging.getLogger("artstored.cluster")

MSGPACK = "application/msgpack"
MAX_IN_FLIGHT = 256          # sends beyond this are dropped (counted): a slow peer must not
                             # make this node buffer without bound


class Transport:
    """Fire-and-forget POSTs with a per-message timeout; counts bytes and failures."""

    def __init__(self, timeout: float, on_refused=None):
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        # on_refused(address, status): a peer answered a fire-and-forget send with an error
        self.on_refused = on_refused
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()
        self.stats: Counter = Counter(bytes_sent=0, bytes_received=0, messages_sent=0,
                                      messages_received=0, send_failures=0, send_dropped=0)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_IN_FLIGHT, limit_per_host=16),
            auto_decompress=False)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def send(self, address: str, path: str, blob: bytes) -> None:
        """Queue one POST of ``blob`` to ``http://address/path``; returns at once."""
        if self._session is None:
            return
        if len(self._tasks) >= MAX_IN_FLIGHT:
            self.stats["send_dropped"] += 1
            return
        task = asyncio.get_running_loop().create_task(self._post(address, path, blob))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, address: str, path: str, blob: bytes) -> None:
        try:
            status, _ = await self.request(address, path, blob)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            self.stats["send_failures"] += 1
            return
        if status >= 300 and self.on_refused is not None:
            self.on_refused(address, status)

    async def request(self, address: str, path: str, blob: bytes,
                      timeout: float | None = None) -> tuple[int, bytes]:
        """POST ``blob`` and return (status, body). Raises aiohttp.ClientError,
        asyncio.TimeoutError or OSError when the peer cannot be reached (within
        ``timeout`` seconds, default the gossip's)."""
        assert self._session is not None
        self.stats["messages_sent"] += 1
        self.stats["bytes_sent"] += len(blob)
        limit = self.timeout if timeout is None else aiohttp.ClientTimeout(total=timeout)
        async with self._session.post(f"http://{address}{path}", data=blob,
                                      headers={"Content-Type": MSGPACK},
                                      timeout=limit) as resp:
            body = await resp.read()
            if resp.status >= 300:
                self.stats[f"refused_{resp.status}"] += 1
                log.debug("peer %s refused %s: %s %s", address, path, resp.status,
                          body[:200])
            return resp.status, body
