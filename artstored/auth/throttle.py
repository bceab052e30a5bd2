"""Sign-in throttling: rate limits and lockouts for the token endpoint.

Kept in memory (a restart forgets them, which only gives an attacker a few more tries).

- Requests: a token bucket per source address and per client id (a burst, then a steady
  rate), so nobody can hammer Argon2id verification at full speed.
- Failures: after ``free_failures`` consecutive failures of one client id from one address,
  that pair is locked for a time that doubles with each further failure (capped); an
  address failing for many client ids is locked as a whole; and one client id failing from
  many addresses is locked at a higher threshold. A client id is counted whether it exists
  or not, so a lockout says nothing about which ids are real; a correct client from
  elsewhere is not locked out by someone else's guessing.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class _Failures:
    count: int = 0
    locked_until: float = 0.0
    last: float = 0.0


class LoginThrottle:
    def __init__(self, *, free_failures: int = 5, base_lock: float = 1.0,
                 max_lock: float = 900.0, address_failures: int = 30,
                 client_failures: int = 50, rate: float = 5.0, burst: float = 20.0):
        self.free_failures = free_failures
        self.base_lock = base_lock
        self.max_lock = max_lock
        self.address_failures = address_failures
        self.client_failures = client_failures
        self.rate = rate
        self.burst = burst
        self._buckets: dict[tuple, _Bucket] = {}
        self._failures: dict[tuple, _Failures] = {}
        self._lock = threading.Lock()
        self.lockouts = 0
        self.refused = 0

    def _take(self, key: tuple, now: float) -> float:
        """Take one token from ``key``'s bucket; seconds to wait if it is empty."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate

    def check(self, client_id: str, address: str, now: float | None = None) -> int:
        """Seconds the caller must wait (0: go ahead). Counts the attempt."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._prune(now)
            waits = [f.locked_until - now for f in (
                self._failures.get(("pair", client_id, address)),
                self._failures.get(("address", address)),
                self._failures.get(("client", client_id))) if f is not None]
            waits += [self._take(("address", address), now),
                      self._take(("client", client_id), now)]
            wait = max([0.0] + waits)
            if wait > 0:
                self.refused += 1
            return math.ceil(wait)

    def failed(self, client_id: str, address: str, now: float | None = None) -> bool:
        """Record a failed sign-in; True if it started a lockout."""
        now = time.monotonic() if now is None else now
        started = False
        with self._lock:
            for key, free in ((("pair", client_id, address), self.free_failures),
                              (("address", address), self.address_failures),
                              (("client", client_id), self.client_failures)):
                f = self._failures.setdefault(key, _Failures())
                f.count += 1
                f.last = now
                if f.count >= free:
                    lock = min(self.max_lock, self.base_lock * 2 ** (f.count - free))
                    if f.locked_until <= now:
                        started = True
                    f.locked_until = max(f.locked_until, now + lock)
            if started:
                self.lockouts += 1
        return started

    def succeeded(self, client_id: str, address: str) -> None:
        with self._lock:
            self._failures.pop(("pair", client_id, address), None)

    def _prune(self, now: float) -> None:
        if len(self._failures) + len(self._buckets) < 10_000:
            return
        for key in [k for k, f in self._failures.items()
                    if f.locked_until < now and now - f.last > self.max_lock]:
            del self._failures[key]
        for key in [k for k, b in self._buckets.items() if now - b.updated > 60]:
            del self._buckets[key]
