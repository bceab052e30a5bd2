"""What every handler can reach: the services of a running daemon (set once ready)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from dataclasses import dataclass

from aiohttp import web

from ..engine.errors import NotReady


@dataclass
class Services:
    config: object
    store: object = None          # engine.Store once recovery has finished
    view: object = None           # engine.ReadView over the store: every read of LMDB
    accounts: object = None       # auth.accounts.AccountStore
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
