"""Background jobs: long operations (GC, rebuild, verify, reindex) with progress and a report.

A job runs one engine function in its own thread. Its state moves along ``TRANSITIONS``
only; ``progress(done, total)`` updates are cheap and may come from the job's thread at any
rate. Jobs are kept in memory (the last ``KEEP`` of them): a job's lasting effects are in the
WAL, its report is for the operator who started it.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict

log = logging.getLogger("artstored.jobs")

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
TRANSITIONS = {QUEUED: (RUNNING,), RUNNING: (SUCCEEDED, FAILED), SUCCEEDED: (), FAILED: ()}
KEEP = 100


class Job:
    def __init__(self, kind: str, started_by: str):
        self.id = "job_" + secrets.token_hex(8)
        self.kind = kind
        self.started_by = started_by
        self.state = QUEUED
        self.done = 0
        self.total: int | None = None
        self.created_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.report: dict | None = None
        self.error: str | None = None

    def _move(self, state: str) -> None:
        if state not in TRANSITIONS[self.state]:
            raise RuntimeError(f"job {self.id}: {self.state} -> {state} is not allowed")
        self.state = state

    def progress(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total

    def as_dict(self) -> dict:
        return {"job_id": self.id, "kind": self.kind, "state": self.state,
                "started_by": self.started_by,
                "progress": {"done": self.done, "total": self.total},
                "created_at": self.created_at, "started_at": self.started_at,
                "finished_at": self.finished_at, "report": self.report, "error": self.error}


class JobRunner:
    def __init__(self):
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, kind: str, started_by: str, fn) -> Job:
        """Run ``fn(progress)`` in a thread as a new job; returns at once."""
        job = Job(kind, started_by)
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > KEEP:
                self._jobs.popitem(last=False)
        threading.Thread(target=self._run, args=(job, fn), name=f"job-{kind}",
                         daemon=True).start()
        return job

    def _run(self, job: Job, fn) -> None:
        job.started_at = time.time()
        job._move(RUNNING)
        try:
            job.report = fn(job.progress)
            job._move(SUCCEEDED)
        except Exception as exc:
            log.exception("job %s (%s) failed", job.id, job.kind)
            job.error = f"{type(exc).__name__}: {exc}"
            job._move(FAILED)
        finally:
            job.finished_at = time.time()

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def running(self) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if j.state in (QUEUED, RUNNING)]
