"""Argon2id secret verification in its own small, bounded pool.

Each verification costs about 0.1 s of CPU and 64 MiB of memory. Run in the worker pool that
uploads and downloads use, a few addresses sending sign-ins could take every thread and
gigabytes of memory. Here they run on at most ``workers`` threads (no more than the
cores), with at most ``queue`` more waiting; past that a sign-in is refused at once with
``SignInBusy`` (503 with ``Retry-After``), so a flood of sign-ins costs at most
``workers × 64 MiB`` and never delays anything else. The threads run at a lower priority
(nice 10), so the CPU goes to the rest of the daemon first.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from ..engine.errors import ArtStoreError


class SignInBusy(ArtStoreError):
    """Too many sign-ins are waiting for verification; try again in a moment."""

    code = "sign_in_busy"
    status = 503
    title = "Too many sign-ins at once"


NICE = 10


def _lower_priority() -> None:
    """A verification thread yields the CPU to everything else in the daemon: under a
    flood of sign-ins the event loop and the upload threads still get their share."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
    except OSError:  # not allowed here: the bound on threads still holds
        pass


class SecretVerifier:
    """``submit(fn, *args)`` runs ``fn`` on the verification pool; thread-safe."""

    def __init__(self, workers: int | None = None, queue: int = 32):
        # Half the cores at most: the other half stays for uploads, downloads and search.
        self.workers = workers or max(1, (os.cpu_count() or 2) // 2)
        self.queue = queue
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="argon2",
                                        initializer=_lower_priority)
        self._slots = threading.BoundedSemaphore(self.workers + queue)
        self._lock = threading.Lock()
        self.in_flight = 0
        self.refused = 0

    def submit(self, fn, *args, **kwargs) -> Future:
        """A future of ``fn(*args)``; SignInBusy (nothing queued) if the pool and its queue
        are full."""
        if not self._slots.acquire(blocking=False):
            with self._lock:
                self.refused += 1
            raise SignInBusy("too many sign-ins are being verified; retry in a second",
                             retry_after=1)
        with self._lock:
            self.in_flight += 1
        try:
            future = self._pool.submit(fn, *args, **kwargs)
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)
        return future

    def _release(self, _future) -> None:
        with self._lock:
            self.in_flight -= 1
        self._slots.release()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
