"""Background jobs that last: recorded in LMDB, resumed after a restart, cancellable.

A job is one function of a ``JobKind`` run in its own thread with a ``JobContext``: it
reports progress (files and bytes, done and total), saves a checkpoint now and then, and
checks for cancellation. Its record (``engine.jobstore``) is rewritten at most once a
second while it runs and at every change of state, so after a crash or a restart the
daemon finds it ``running`` and either resumes it from its checkpoint (kinds that can) or
marks it failed, saying why. One job of a kind runs at a time.

The state machine, the whole of it::

    queued ──────► running ──► succeeded
      │              │ ├─────► failed
      │              │ └─────► cancelled
      │              └──────── interrupted ──► running (resumed at the next start)
      └──► cancelled                       └─► failed  (its kind cannot resume)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

from ..engine.errors import ArtStoreError, Conflict, NotFound
from ..engine.jobstore import JobStore, new_job_id

log = logging.getLogger("artstored.jobs")

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, INTERRUPTED = (
    "queued", "running", "succeeded", "failed", "cancelled", "interrupted")
TRANSITIONS = {
    QUEUED: (RUNNING, CANCELLED),
    RUNNING: (SUCCEEDED, FAILED, CANCELLED, INTERRUPTED),
    INTERRUPTED: (RUNNING, FAILED),
    SUCCEEDED: (), FAILED: (), CANCELLED: (),
}
ACTIVE = (QUEUED, RUNNING)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
SAVE_EVERY = 1.0   # seconds between progress records while a job runs


BACKGROUND_NICE = 10


def background_priority() -> None:
    """Lower the calling thread's CPU priority: a job yields to uploads, downloads and
    searches first (the GIL still shares the interpreter, but the kernel picks the
    request threads when both are ready)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except OSError:
        pass


class JobCancelled(Exception):
    """Raised inside a job by ``JobContext.check`` once the job is cancelled."""


class JobNotCancellable(ArtStoreError):
    code = "job_finished"
    status = 409
    title = "The job has finished"


@dataclass(frozen=True)
class JobKind:
    """``run(ctx) -> report``; ``resumable``: may be run again from its saved checkpoint
    after a restart (its function reads ``ctx.checkpoint``)."""

    name: str
    run: Callable
    resumable: bool = False


class JobContext:
    """What a running job may call. Thread-safe; every call is cheap."""

    def __init__(self, runner: "JobRunner", record: dict):
        self._runner = runner
        self.record = record
        self.params: dict = record.get("params") or {}
        self.checkpoint: dict = record.get("checkpoint") or {}
        self.cancelled = threading.Event()
        self._last_save = 0.0
        self._run_started = time.time()
        self._bytes_at_start = record["progress"].get("done_bytes") or 0

    def check(self) -> None:
        """Raise JobCancelled if the job was cancelled (or the daemon is stopping)."""
        if self.cancelled.is_set():
            raise JobCancelled()

    def progress(self, *, done_files: int | None = None, total_files: int | None = None,
                 done_bytes: int | None = None, total_bytes: int | None = None,
                 checkpoint: dict | None = None) -> None:
        """Record how far the job is (and, with ``checkpoint``, where to resume from);
        persisted at most once a second. Raises JobCancelled once cancelled."""
        p = self.record["progress"]
        for key, value in (("done_files", done_files), ("total_files", total_files),
                           ("done_bytes", done_bytes), ("total_bytes", total_bytes)):
            if value is not None:
                p[key] = value
        elapsed = max(1e-3, time.time() - self._run_started)
        rate = ((p.get("done_bytes") or 0) - self._bytes_at_start) / elapsed
        p["bytes_per_second"] = round(rate, 1)
        left = (p.get("total_bytes") or 0) - (p.get("done_bytes") or 0)
        p["eta_seconds"] = round(left / rate, 1) if rate > 0 and p.get("total_bytes") else None
        if checkpoint is not None:
            self.checkpoint = checkpoint
            self.record["checkpoint"] = checkpoint
        now = time.monotonic()
        if now - self._last_save >= SAVE_EVERY:
            self._last_save = now
            self._runner._save(self.record)
        self.check()

    def save_in(self, txn, checkpoint: dict) -> None:
        """Record ``checkpoint`` inside the caller's write transaction, so that it commits
        atomically with the work it counts (a crash can never leave them apart)."""
        self.checkpoint = checkpoint
        self.record["checkpoint"] = checkpoint
        self._runner.jobs.put_in(txn, self.record)

    def files_progress(self, done: int, total: int | None = None) -> None:
        """The ``progress(done, total)`` callback older engine functions take."""
        self.progress(done_files=done, total_files=total)


class JobRunner:
    """Starts, records, resumes and cancels jobs of the kinds it was given."""

    def __init__(self, store, kinds: list[JobKind]):
        self.jobs = JobStore(store.env)
        self.kinds = {k.name: k for k in kinds}
        self._contexts: dict[str, JobContext] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._stopping = False

    # --- starting ---------------------------------------------------------------------------

    def start(self, kind: str, started_by: str, params: dict | None = None) -> dict:
        """A new job of ``kind`` running in its thread; its record. Conflict
        (``job_running``) if a job of that kind is queued or running already."""
        if kind not in self.kinds:
            raise NotFound(f"no job kind {kind!r}", code="job_kind_unknown")
        with self._lock:
            if self._stopping:
                raise Conflict("the daemon is stopping", code="stopping")
            busy = [c.record for c in self._contexts.values() if c.record["kind"] == kind]
            if busy:
                raise Conflict(f"a {kind} job is already running ({busy[0]['job_id']})",
                               code="job_running", job_id=busy[0]["job_id"])
            record = {"job_id": new_job_id(), "kind": kind, "state": QUEUED,
                      "started_by": started_by, "params": params or {},
                      "created_at": time.time(), "started_at": None, "finished_at": None,
                      "resumed": 0, "progress": {"done_files": 0, "total_files": None,
                                                 "done_bytes": 0, "total_bytes": None,
                                                 "bytes_per_second": 0.0,
                                                 "eta_seconds": None},
                      "checkpoint": {}, "report": None, "error": None}
            self._save(record)
            self._launch(record)
        self.jobs.prune(finished=FINISHED)
        return dict(record)

    def _launch(self, record: dict) -> None:
        ctx = JobContext(self, record)
        self._contexts[record["job_id"]] = ctx
        thread = threading.Thread(target=self._run, args=(ctx,),
                                  name=f"job-{record['kind']}", daemon=True)
        self._threads[record["job_id"]] = thread
        thread.start()

    def resume_interrupted(self) -> list[dict]:
        """At start: every job a previous process left active resumes from its checkpoint
        if its kind can, else fails saying why. Returns the records touched."""
        touched = []
        for record in self.jobs.list(limit=10_000, states=(QUEUED, RUNNING, INTERRUPTED)):
            kind = self.kinds.get(record["kind"])
            if kind is None or not kind.resumable:
                self._move(record, FAILED if record["state"] != QUEUED else CANCELLED,
                           error="interrupted by a restart of the daemon; this kind of job "
                                 "cannot resume: start it again")
                record["finished_at"] = time.time()
                self._save(record)
            else:
                with self._lock:
                    if any(c.record["kind"] == record["kind"]
                           for c in self._contexts.values()):
                        continue
                    record["resumed"] = record.get("resumed", 0) + 1
                    record["state"] = INTERRUPTED if record["state"] == RUNNING \
                        else record["state"]
                    log.info("resuming job %s (%s) from its checkpoint", record["job_id"],
                             record["kind"])
                    self._save(record)
                    self._launch(record)
            touched.append(record)
        return touched

    # --- running ----------------------------------------------------------------------------

    def _move(self, record: dict, state: str, *, error: str | None = None) -> None:
        if state not in TRANSITIONS[record["state"]] and \
                not (record["state"] == QUEUED and state == FAILED):
            raise RuntimeError(f"job {record['job_id']}: {record['state']} -> {state}")
        record["state"] = state
        if error is not None:
            record["error"] = error

    def _run(self, ctx: JobContext) -> None:
        background_priority()
        record = ctx.record
        kind = self.kinds[record["kind"]]
        self._move(record, RUNNING)
        record["started_at"] = record["started_at"] or time.time()
        self._save(record)
        try:
            report = kind.run(ctx)
            record["report"] = report
            self._move(record, SUCCEEDED)
        except JobCancelled:
            if self._stopping and kind.resumable:
                self._move(record, INTERRUPTED)   # resumes at the next start
            else:
                self._move(record, CANCELLED)
        except Exception as exc:
            log.exception("job %s (%s) failed", record["job_id"], record["kind"])
            self._move(record, FAILED, error=f"{type(exc).__name__}: {exc}")
        finally:
            if record["state"] != INTERRUPTED:
                record["finished_at"] = time.time()
            self._save(record)
            with self._lock:
                self._contexts.pop(record["job_id"], None)
                self._threads.pop(record["job_id"], None)

    def _save(self, record: dict) -> None:
        try:
            self.jobs.put(record)
        except Exception:  # a job's bookkeeping must not kill the job
            log.exception("saving job %s failed", record["job_id"])

    # --- looking and stopping ---------------------------------------------------------------

    def get(self, job_id: str) -> dict | None:
        with self._lock:
            ctx = self._contexts.get(job_id)
            if ctx is not None:
                return dict(ctx.record, progress=dict(ctx.record["progress"]))
        return self.jobs.get(job_id)

    def list(self, *, limit: int = 100, kind: str | None = None,
             states: tuple[str, ...] | None = None) -> list[dict]:
        live = {}
        with self._lock:
            for job_id, ctx in self._contexts.items():
                live[job_id] = dict(ctx.record, progress=dict(ctx.record["progress"]))
        return [live.get(r["job_id"], r)
                for r in self.jobs.list(limit=limit, kind=kind, states=states)]

    def running(self) -> list[dict]:
        with self._lock:
            return [dict(c.record) for c in self._contexts.values()]

    def cancel(self, job_id: str, timeout: float = 5.0) -> dict:
        """Cancel a queued or running job and wait (up to ``timeout``) for it to stop;
        its record. NotFound; JobNotCancellable if it has finished."""
        with self._lock:
            ctx = self._contexts.get(job_id)
            thread = self._threads.get(job_id)
        if ctx is None:
            record = self.jobs.get(job_id)
            if record is None:
                raise NotFound(f"no job {job_id}", code="job_not_found")
            raise JobNotCancellable(f"job {job_id} has {record['state']}", state=record["state"])
        ctx.cancelled.set()
        if thread is not None:
            thread.join(timeout)
        return self.get(job_id)

    def stop(self, timeout: float = 10.0) -> None:
        """At shutdown: running jobs stop at their next check; resumable ones are left
        ``interrupted`` to resume at the next start."""
        with self._lock:
            self._stopping = True
            contexts = list(self._contexts.values())
            threads = list(self._threads.values())
        for ctx in contexts:
            ctx.cancelled.set()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
