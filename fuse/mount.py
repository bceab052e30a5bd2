"""``artstore mount``: run the read-only FUSE view in the foreground.

It unmounts cleanly on SIGTERM, SIGINT or SIGHUP (the nursery is cancelled and
``pyfuse3.close(unmount=True)`` runs in ``finally``) and when an operator runs
``fusermount3 -u``; no stale mount is left behind. After mounting it raises the mount's
read-ahead to 1 MiB (``/sys/class/bdi/<major>:<minor>/read_ahead_kb``), since the
``max_read`` mount option breaks pyfuse3 3.5.
"""

from __future__ import annotations

import logging
import os
import signal

import pyfuse3
import trio

from .adapter import ArchiveFS
from .model import ArchiveModel

log = logging.getLogger("artstored.fuse")

READ_AHEAD_KB = 1024


def _raise_read_ahead(mountpoint: str) -> None:
    dev = os.stat(mountpoint).st_dev
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(READ_AHEAD_KB))
    except OSError as exc:  # not root, or no such bdi: reads still work, in smaller requests
        log.warning("could not raise read-ahead (%s): %s", path, exc)


class _MountCollector:
    def __init__(self, fs: ArchiveFS):
        self.fs = fs

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        ops = CounterMetricFamily("artstore_fuse_operations", "FUSE operations served",
                                  labels=["operation"])
        for name, count in sorted(self.fs.counters.ops.items()):
            ops.add_metric([name], count)
        yield ops
        yield CounterMetricFamily("artstore_fuse_read_bytes", "Bytes read through the mount",
                                  value=self.fs.counters.bytes_read)
        yield CounterMetricFamily("artstore_fuse_errors", "Operations that failed with an error",
                                  value=self.fs.counters.errors)


def write_metrics(fs: ArchiveFS, path: str) -> None:
    """The mount's counters in Prometheus text format, for node_exporter's textfile
    collector (written to a temporary name and renamed, so readers never see half)."""
    from prometheus_client import CollectorRegistry, write_to_textfile

    registry = CollectorRegistry()
    registry.register(_MountCollector(fs))
    write_to_textfile(path, registry)


async def _metrics_loop(fs: ArchiveFS, path: str, interval: float = 10.0) -> None:
    while True:
        await trio.to_thread.run_sync(write_metrics, fs, path)
        await trio.sleep(interval)


async def _serve(mountpoint: str, fs: ArchiveFS, metrics_file: str | None) -> None:
    # Signals are caught from before the tree is served: a SIGINT the moment it shows (a
    # script that mounts, looks, and interrupts) unmounts cleanly, not as KeyboardInterrupt.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
        async with trio.open_nursery() as nursery:
            if metrics_file:
                nursery.start_soon(_metrics_loop, fs, metrics_file)
            async def fuse_loop():
                await pyfuse3.main()          # returns when unmounted (fusermount3 -u)
                nursery.cancel_scope.cancel()

            nursery.start_soon(fuse_loop)
            await trio.to_thread.run_sync(_raise_read_ahead, mountpoint)
            log.info("mounted %s", mountpoint)
            async for sig in sigs:
                log.info("signal %s: unmounting", signal.Signals(sig).name)
                nursery.cancel_scope.cancel()
                break


def run(data_dir: str, mountpoint: str, *, disk_roots: list[str] | None = None,
        allow_other: bool | None = None, debug: bool = False,
        metrics_file: str | None = None) -> int:
    """Mount and serve until unmounted or signalled; returns an exit status."""
    model = ArchiveModel(data_dir, disk_roots)
    fs = ArchiveFS(model)
    options = set(pyfuse3.default_options)
    options |= {"fsname=artstore", "subtype=artstore", "ro", "noatime"}
    if allow_other if allow_other is not None else os.getuid() == 0:
        options.add("allow_other")
    if debug:
        options.add("debug")
    pyfuse3.init(fs, mountpoint, options)
    try:
        trio.run(_serve, mountpoint, fs, metrics_file)
    finally:
        pyfuse3.close(unmount=True)
        if metrics_file:
            write_metrics(fs, metrics_file)
        model.close()
        log.info("unmounted %s", mountpoint, extra={"ops": fs.counters.ops,
                                                    "bytes_read": fs.counters.bytes_read})
    return 0
