"""What every handler can reach: the services of a running daemon (set once ready)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import resource
import time
from dataclasses import dataclass

from aiohttp import web

from ..engine.errors import NotReady


@dataclass
class Services:
    config: object
    store: object = None          # engine.Store once recovery has finished
    view: object = None           # engine.ReadView over the store: every read of LMDB
    accounts: object = None       # auth.accounts.AccountStore
    s3_keys: object = None        # auth.s3keys.S3KeyStore
    multipart: object = None      # engine.multipart.MultipartUploads
    sessions: object = None       # engine.sessions.UploadSessions
    token_policy: object = None   # what says a verified token may be used (default: accounts;
                                  # cluster.tokens.DocumentAccounts on a member)
    cluster: object = None        # cluster.node.ClusterNode when [cluster] is on
    feed: object = None           # changefeed.ChangeFeed: the WAL, followed
    tokens: object = None         # auth.tokens.TokenService
    keyring: object = None        # auth.keys.KeyRing
    throttle: object = None       # auth.throttle.LoginThrottle
    proven: object = None         # auth.throttle.SuccessCache
    failure_tally: object = None  # auth.throttle.FailureTally
    verifier: object = None       # auth.verifier.SecretVerifier
    malformed: object = None      # api.app.MalformedRequestFilter (counts unparsable requests)
    metrics: object = None        # artstored.metrics.Metrics
    jobs: object = None           # artstored.preservation.jobs.JobRunner
    index: object = None          # artstored.index.follower.IndexFollower
    search: object = None         # artstored.index.search.SearchService
    started: bool = False         # recovery done, services built
    stopping: bool = False        # SIGTERM received: no new uploads
    startup_error: str | None = None
    inflight_requests: int = 0    # counted by the request-id middleware

    def require_ready(self) -> None:
        if not self.started:
            raise NotReady("the daemon is still starting (recovery in progress)")

    def require_token_authority(self) -> None:
        """Raise NotAuthority on a cluster node whose tokens and accounts come from the
        admin's document: sign in and manage accounts there."""
        if self.cluster is not None and self.cluster.doc is not None and \
                not self.cluster.mints_tokens:
            self.cluster.raise_not_authority()

    def token_allowed(self, claims) -> bool:
        policy = self.token_policy or self.accounts
        return policy.token_allowed(claims.sub, claims.gen, claims.jti)


SERVICES = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    svc = request.app[SERVICES]
    svc.require_ready()
    return svc


async def blocking(fn, *args, **kwargs):
    """Run a blocking engine call in the default worker pool, in the caller's context
    (so its log lines keep the request id)."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    return await loop.run_in_executor(None, functools.partial(context.run, fn, *args,
                                                              **kwargs))


# Reads of the catalog (a page of entries, one entry) from a warm LMDB map take well under
# a millisecond: less than handing them to a worker thread, which under 16 concurrent
# requests costs more than the read (a page of 100 files at 16 clients: 243 pages/s through
# the pool, 580-645 on the event loop, p99 124 → 29-36 ms). A cold map faults its pages in
# from the disk, and the loop would wait for that: a read that went to the disk (a major
# page fault or a block read by this thread) or took longer than INLINE_SLOW_SECONDS for
# any reason sends the next ones to the pool for INLINE_COOL_OFF_SECONDS. So does a
# pending resize of the LMDB map (a read would wait for it).
INLINE_SLOW_SECONDS = 0.02
INLINE_COOL_OFF_SECONDS = 10.0
_inline_paused_until = 0.0


def _disk_waits() -> tuple[int, int]:
    """This thread's major page faults and block reads so far: either growing means a
    read went to the disk."""
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_majflt, usage.ru_inblock


async def quick_read(fn, *args, **kwargs):
    """Run a short catalog read (``Store.get``, a ``Store.list`` page of at most 100) on
    the event loop while the map is in memory, else in the worker pool (``blocking``).
    Same result and exceptions as ``fn``. Only for reads of LMDB: never for reads of data
    files (a hung disk would stall every request), writes, or anything that may wait
    long (the one wait, a pending map resize, is checked first)."""
    global _inline_paused_until
    if time.monotonic() < _inline_paused_until or _resizing():
        return await blocking(fn, *args, **kwargs)
    before, started = _disk_waits(), time.monotonic()
    try:
        return fn(*args, **kwargs)
    finally:
        if _disk_waits() != before or time.monotonic() - started > INLINE_SLOW_SECONDS:
            _inline_paused_until = time.monotonic() + INLINE_COOL_OFF_SECONDS


_resizing = lambda: False     # noqa: E731  (set by the daemon: Env.resize_pending)


def watch_resizes(env) -> None:
    """Let ``quick_read`` send reads to the pool while ``env``'s map is being resized."""
    global _resizing
    _resizing = env.resize_pending
