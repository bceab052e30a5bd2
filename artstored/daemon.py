"""``artstored``: the storage daemon (one per host), in the foreground.

Starts the HTTP server at once, so that health probes answer (503) during recovery; opens
the Store (which resolves PENDING intents) in a worker thread; then builds the auth services
and starts answering. SIGTERM/SIGINT: stop taking uploads, let in-flight requests finish
within ``server.shutdown_grace_seconds``, commit what is queued, close LMDB, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import os
import signal
import sys
import time

import uvloop
from aiohttp import web

from . import __version__, config as C, logs, sdnotify
from .api.app import build_app
from .api.state import Services, watch_resizes
from .changefeed import ChangeFeed
from .auth.accounts import AccountStore
from .auth.keys import KeyRing
from .auth.s3keys import S3KeyStore
from .auth.throttle import FailureTally, LoginThrottle, SuccessCache
from .auth.verifier import SecretVerifier
from .auth.tokens import TokenService
from .engine import attrs as A
from .engine import retention
from .engine.multipart import MultipartUploads
from .engine.sessions import UploadSessions
from .engine.rebuild import rebuild_catalog
from .engine.errors import ArtStoreError
from .engine.store import Store, StoreConfig
from .engine import wal as W
from .engine.view import ReadView
from .index.follower import IndexFollower
from .index.search import SearchService
from .preservation import jobs as J
from .preservation import scrub, verify
from .metrics import Metrics

log = logging.getLogger("artstored")

# What SIGHUP applies; any other change waits for a restart.
RELOADABLE = {"log.level", "log.file", "retention.gc_interval_seconds"}

# How much of a request body aiohttp buffers before it stops reading the socket: room for
# the network to keep flowing while a worker thread hashes and writes the previous batch.
READ_BUFSIZE = 512 << 10
# Worker threads (hashing, checking, writing) and the event loop share the GIL; with the
# default 5 ms switch interval the loop waited behind them for every read of a bulk
# transfer. 1 ms: a catch-up (bench/catchup.py) took 0.64-0.72 s after ready instead of
# 0.81-0.85 s.
SWITCH_INTERVAL = 0.001


def store_config(cfg: C.Config) -> StoreConfig:
    return StoreConfig(
        data_dir=cfg.data_dir,
        disks=[os.path.abspath(d) for d in cfg["storage.disks"]],
        max_upload_bytes=cfg["limits.max_upload_bytes"],
        initial_mode=cfg["element.initial_mode"],
        sync_method=cfg["storage.sync_method"],
        max_batch=cfg["storage.max_batch"],
        map_size=cfg["storage.lmdb_map_size"],
        wal_segment_records=cfg["storage.wal_segment_records"],
        node_name=cfg["element.name"] or None,
    )


def open_services(svc: Services) -> None:
    """Blocking: recovery and everything that needs the store. Runs in a worker thread."""
    cfg = svc.config
    store = Store(store_config(cfg))
    try:
        keyring = KeyRing(store.data_dir)
        # With several admin nodes (authority = etcd), every one of them mints tokens: they
        # share the issuer.
        issuer = cfg["auth.issuer"] or ("artstore:cluster" if cfg["cluster.authority"] == "etcd"
                                        else f"artstore:{store.node.node_id}")
        svc.keyring = keyring
        svc.tokens = TokenService(keyring, issuer, cfg["auth.token_ttl_seconds"])
        svc.accounts = AccountStore(store.env, secret_ttl_days=cfg["auth.secret_ttl_days"])
        svc.accounts.ensure_initial_admin(store.data_dir)
        svc.s3_keys = S3KeyStore(store.env, svc.accounts, store.data_dir)
        svc.multipart = MultipartUploads(store)
        svc.sessions = UploadSessions(store)
        svc.throttle = LoginThrottle()
        svc.proven = SuccessCache()
        svc.failure_tally = FailureTally()
        svc.verifier = SecretVerifier()
        svc.view = ReadView.of_store(store)
        svc.index = IndexFollower(store, os.path.join(store.data_dir, "index"),
                                  view=svc.view)
        svc.search = SearchService(svc.index)
        svc.index.start()
        svc.jobs = J.JobRunner(store, job_kinds(svc, store))
        svc.jobs.resume_interrupted()
    except BaseException:
        if svc.index is not None:
            svc.index.stop()
        store.close()
        raise
    svc.store = store
    watch_resizes(store.env)
    log.info("store open: mode %s, recovery %s", store.mode, store.recovery_report,
             extra={"node_id": store.node.node_id})


def job_kinds(svc: Services, store: Store) -> list[J.JobKind]:
    """The background jobs this daemon runs (all of them pick up again after a restart:
    verify and scrub from their checkpoints, the others from the start, which is safe)."""

    def actor(ctx) -> W.Actor:
        who = ctx.params.get("actor") or {}
        return W.Actor(who.get("id", "system"), who.get("name", "system"))

    return [
        J.JobKind("gc", lambda ctx: retention.collect_expired(
            store, progress=ctx.files_progress), resumable=True),
        J.JobKind("rebuild", lambda ctx: rebuild_catalog(
            store, progress=ctx.files_progress, actor=actor(ctx)), resumable=True),
        J.JobKind("reindex", lambda ctx: svc.index.reindex(progress=ctx.files_progress),
                  resumable=True),
        J.JobKind("verify", lambda ctx: verify.run(store, ctx, actor=actor(ctx),
                                                   deep=ctx.params.get("deep", False)),
                  resumable=True),
        J.JobKind("export", lambda ctx: export_job(svc, store, ctx)),
        J.JobKind("scrub", lambda ctx: scrub.run(
            store, ctx, rate_mb_per_s=ctx.params.get("rate_mb_per_s",
                                                     svc.config["scrub.rate_mb_per_s"]),
            concurrency=ctx.params.get("concurrency", svc.config["scrub.concurrency"])),
            resumable=True),
    ]


def export_job(svc: Services, store: Store, ctx) -> dict:
    """A BagIt bag of the selected files under ``export.directory``; a PREMIS
    ``replication`` event records it."""
    from .index.search import ASC, CREATED_AT, SearchRequest
    from .preservation.export import export_bag

    params = ctx.params
    root = svc.config["export.directory"] or os.path.join(store.data_dir, "exports")
    os.makedirs(root, exist_ok=True)
    if "query" in params:
        ids, cursor = [], None
        while True:
            page = svc.search.search(SearchRequest(q=params["query"], sort=CREATED_AT,
                                                   order=ASC, limit=100, cursor=cursor))
            ids.extend(hit.file_id for hit in page.hits)
            cursor = page.next_cursor
            if not cursor:
                break
        items, selection = ids, f"query: {params['query']}"
    elif "file_ids" in params:
        items, selection = params["file_ids"], f"{len(params['file_ids'])} file ids"
    else:
        items, selection = (e for page in _catalog_pages(store) for e in page), "all files"
    report = export_bag(
        store.view, items, os.path.join(root, params["name"]),
        source=f"{store.node.node_id} ({store.node.name})", selection=selection,
        bag_info={"Source-Organization": params["organization"]}
        if params.get("organization") else None,
        progress=lambda files, nbytes: ctx.progress(done_files=files, done_bytes=nbytes),
        cancelled=ctx.cancelled.is_set)
    who = params.get("actor") or {}
    store.record_event(W.PRESERVATION, W.Actor(who.get("id", "system"),
                                               who.get("name", "system")),
                       {"premis_event_type": "replication", "outcome": "success",
                        "detail": f"BagIt export of {report['files']} files "
                                  f"({selection}) to {report['bag']}"})
    return report


def _catalog_pages(store: Store):
    cursor = None
    while True:
        entries, cursor = store.view.page(limit=500, cursor=cursor, order="asc")
        yield entries
        if cursor is None:
            return


def start_scheduled_scrub(svc: Services) -> dict | None:
    """Start a scrub if the element's mode asks for a full pass more often than the last
    one finished (``scrub.interval_days_<mode>``); the job's record, or None."""
    mode = "rw" if svc.store.mode == "edit" else svc.store.mode
    days = svc.config[f"scrub.interval_days_{mode}"]
    if not days or any(j["kind"] == "scrub" for j in svc.jobs.running()):
        return None
    last = svc.jobs.list(limit=1, kind="scrub", states=(J.SUCCEEDED,))
    # The first pass is due one interval after the element was made: its files are new.
    since = last[0]["finished_at"] if last and last[0]["finished_at"] else \
        A.parse_time(svc.store.element_state()["created_at"]).timestamp()
    if time.time() - since < days * 86400:
        return None
    try:
        return svc.jobs.start("scrub", "system", {"scheduled": True})
    except ArtStoreError:
        return None


def close_services(svc: Services) -> None:
    """Blocking: stop the jobs (resumable ones resume at the next start) and the index
    follower, audit the last sign-in failures, then commit what is queued and close the
    store."""
    if svc.jobs is not None:
        svc.jobs.stop()
    if svc.index is not None:
        svc.index.stop()
    if svc.verifier is not None:
        svc.verifier.shutdown()
    try:
        audit_sign_in_failures(svc)
    finally:
        svc.store.close()


def audit_sign_in_failures(svc: Services) -> None:
    """One WAL record with the sign-in failures since the last one (none if there were
    none): the audit trail has them in aggregate, not a synced record per attempt."""
    summary = svc.failure_tally.drain() if svc.failure_tally is not None else None
    if summary is not None:
        svc.store.record_event(W.AUTH_FAILURES, W.SYSTEM, summary)


async def _gc_loop(svc: Services) -> None:
    while True:
        interval = svc.config["retention.gc_interval_seconds"]  # SIGHUP may change it
        await asyncio.sleep(interval or 60)
        if not interval:
            continue
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, retention.collect_expired, svc.store)
            # Revocations of tokens that have expired anyway are no longer needed.
            await asyncio.get_running_loop().run_in_executor(None, svc.accounts.purge_revoked)
        except Exception:
            log.exception("retention GC failed")


UPKEEP_INTERVAL_SECONDS = 10


async def _failure_audit_loop(svc: Services) -> None:
    while True:
        await asyncio.sleep(svc.config["auth.failure_audit_seconds"])
        try:
            await asyncio.get_running_loop().run_in_executor(None, audit_sign_in_failures, svc)
        except Exception:
            log.exception("auditing sign-in failures failed")


async def _upkeep_loop(svc: Services) -> None:
    """Store upkeep that must not wait for an operator: stale LMDB reader slots (a mount
    killed inside a read) are cleared, and multipart uploads and upload sessions untouched
    for ``uploads.abandoned_days`` aborted, within ``UPKEEP_INTERVAL_SECONDS``."""
    while True:
        await asyncio.sleep(UPKEEP_INTERVAL_SECONDS)
        try:
            await asyncio.get_running_loop().run_in_executor(None, start_scheduled_scrub, svc)
            done = await asyncio.get_running_loop().run_in_executor(None, svc.store.maintain)
            idle = svc.config["uploads.abandoned_days"] * 86400
            for unfinished in (svc.multipart, svc.sessions):
                expired = await asyncio.get_running_loop().run_in_executor(
                    None, unfinished.expire, idle)
                if expired:
                    log.info("aborted %d %s untouched for more than %g days", expired,
                             type(unfinished).__name__, idle / 86400)
            if done["stale_readers_cleared"]:
                log.warning("cleared %d stale LMDB reader slots (a reader process died "
                            "inside a transaction)", done["stale_readers_cleared"])
        except Exception:
            log.exception("store upkeep failed")


async def _watchdog(interval: float) -> None:
    """WATCHDOG=1 every ``interval`` s, from the event loop itself: if the loop hangs, the
    pings stop and systemd restarts the daemon."""
    while True:
        sdnotify.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def reload(svc: Services, reload_config) -> None:
    """SIGHUP: re-read the configuration, apply what can change while running (log level
    and file, retention GC interval), reopen the log file; say what needs a restart."""
    try:
        new = reload_config()
    except C.ConfigError as exc:
        log.error("SIGHUP: configuration not reloaded: %s", exc)
        return
    logs.setup(new["log.level"], new["log.file"] or None)
    needs_restart = [key for key, value, _ in new.items()
                     if key not in RELOADABLE and value != svc.config[key]]
    svc.config = new
    # At warning level, so that it shows whatever level was just set.
    log.warning("configuration reloaded", extra={"restart_needed_for": needs_restart})
    sdnotify.notify("STATUS=configuration reloaded")


async def serve(cfg: C.Config, reload_config=None) -> int:
    loop = asyncio.get_running_loop()
    sys.setswitchinterval(SWITCH_INTERVAL)
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(
        max_workers=32, thread_name_prefix="worker"))
    svc = Services(config=cfg)
    svc.metrics = Metrics(svc)
    app = build_app(svc)
    # auto_decompress=False: a request body is taken as sent; one with a Content-Encoding
    # is refused with 415 before it is read (api.app.content_encoding_middleware), so no
    # compressed body is ever inflated here (no decompression bombs, no zlib errors).
    runner = web.AppRunner(app, access_log=None, read_bufsize=READ_BUFSIZE,
                           auto_decompress=False,
                           shutdown_timeout=cfg["server.shutdown_grace_seconds"])
    await runner.setup()
    host, port = cfg.listen
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    log.info("artstored %s listening on %s:%d (data %s)", __version__, host, port,
             cfg.data_dir)
    s3 = await _start_s3(svc, cfg)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if reload_config is not None:
        loop.add_signal_handler(signal.SIGHUP, reload, svc, reload_config)
    interval = sdnotify.watchdog_interval()
    watchdog = asyncio.ensure_future(_watchdog(interval)) if interval else None

    sdnotify.notify("STATUS=recovering: resolving pending writes")
    opener = loop.run_in_executor(None, open_services, svc)
    clustered = cfg["cluster.enabled"] or cfg["cluster.seeds"]
    if clustered:
        # Imported while the store opens, not after "ready": a node back from an outage
        # starts following its peers' feeds ~0.1 s sooner.
        from .cluster.node import ClusterNode
    waiter = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({opener, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if opener in done:
        try:
            opener.result()
        except ArtStoreError as exc:
            svc.startup_error = exc.detail
            log.error("cannot open the store: %s", exc.detail)
            sdnotify.notify(f"STATUS=cannot open the store: {exc.detail}")
            if s3 is not None:
                await s3[1].cleanup()
            await runner.cleanup()
            return 1
        svc.started = True
        log.info("ready")
        stats = svc.store.stats()
        sdnotify.notify(f"READY=1\nSTATUS=ready: mode {svc.store.mode}, "
                        f"{stats['files']} files, listening on {host}:{port}")
        svc.feed = ChangeFeed(svc.store)
        if clustered:
            svc.cluster = ClusterNode(svc, svc.store.node, cfg)
            await svc.cluster.start()
        gc_task = asyncio.ensure_future(_gc_loop(svc))
        upkeep_task = asyncio.ensure_future(_upkeep_loop(svc))
        audit_task = asyncio.ensure_future(_failure_audit_loop(svc))
        await waiter
        gc_task.cancel()
        upkeep_task.cancel()
        audit_task.cancel()
    else:
        # Signalled during recovery: let recovery finish (it must not be cut), then stop.
        await opener
    sdnotify.notify("STOPPING=1\nSTATUS=stopping: finishing requests in flight")
    if s3 is not None:
        await s3[0].stop()     # no new S3 connections; its requests drain with the rest
    await _drain(svc, site, runner, svc.config["server.shutdown_grace_seconds"])
    if s3 is not None:
        await s3[1].cleanup()
    if svc.cluster is not None:
        # After the drain: uploads in flight still get their copies pushed.
        await svc.cluster.stop()
    if svc.store is not None:
        await loop.run_in_executor(None, close_services, svc)
    if watchdog is not None:
        watchdog.cancel()
    log.info("stopped")
    return 0


async def _start_s3(svc: Services, cfg: C.Config):
    """The S3 endpoint on ``s3.listen`` (None when it is empty): its (site, runner)."""
    if not cfg["s3.listen"]:
        return None
    from .s3.app import build_app as build_s3_app
    runner = web.AppRunner(build_s3_app(svc), access_log=None, read_bufsize=READ_BUFSIZE,
                           auto_decompress=False,
                           shutdown_timeout=cfg["server.shutdown_grace_seconds"])
    await runner.setup()
    host, port = C.parse_listen(cfg["s3.listen"])
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    log.info("S3 endpoint listening on %s:%d (region %s)", host, port, cfg["s3.region"])
    return site, runner


async def _drain(svc: Services, site: web.TCPSite, runner: web.AppRunner,
                 grace: float) -> None:
    """Stop listening and refuse new uploads, then give requests in flight ``grace``
    seconds to finish before connections are closed. (aiohttp's own shutdown stops reading
    request bodies at once, which would cut every upload in flight.)"""
    log.info("stopping: no new uploads; %d requests in flight have %.0f s",
             svc.inflight_requests, grace)
    svc.stopping = True
    await site.stop()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while svc.inflight_requests and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if svc.inflight_requests:
        log.warning("grace period over: cutting %d requests", svc.inflight_requests)
    await runner.cleanup()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="artstored", description="ArtStore storage daemon (runs in the foreground).")
    p.add_argument("--config", help="TOML config file (default: $ARTSTORE_CONFIG, else "
                   f"{C.DEFAULT_CONFIG_PATH} if it exists, else the embedded default)")
    p.add_argument("--data-dir", help="data directory (storage.data_dir)")
    p.add_argument("--listen", help="HOST:PORT to listen on (server.listen)")
    p.add_argument("--version", action="version", version=f"artstored {__version__}")
    return p.parse_args(argv)


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates its own malloc arena (up to 8 per core), and
    with dozens of worker threads that fragments into hundreds of MiB of resident memory
    that is never returned. Two arenas keep the daemon small; allocation is not our
    bottleneck. (Same as MALLOC_ARENA_MAX=2, set from inside.)"""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def main(argv=None) -> int:
    _limit_malloc_arenas()
    args = parse_args(argv)
    overrides = {}
    if args.data_dir:
        overrides["storage.data_dir"] = (args.data_dir, "flag --data-dir")
    if args.listen:
        overrides["server.listen"] = (args.listen, "flag --listen")
    try:
        cfg = C.load(args.config, overrides=overrides)
    except C.ConfigError as exc:
        print(f"artstored: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup(cfg["log.level"], cfg["log.file"] or None)
    try:
        # uvloop: the same asyncio API on libuv; the loop's own work per request (socket
        # reads and writes, callbacks, futures from worker threads) is what bounds the
        # daemon on few cores.
        return uvloop.run(serve(cfg, lambda: C.load(args.config, overrides=overrides)))
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
