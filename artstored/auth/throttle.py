"""Sign-in throttling: what one client can do to the others at the token endpoint.

The rules (each tested from two real source addresses):

1. **Failures lock one (client id, address) pair, nothing wider.** After ``free_failures``
   failures of client X from address A, X is refused at A (429 with ``Retry-After``) for a
   time that doubles with each further failure, capped at ``max_lock``. Failures from A
   never refuse a client at another address B, and failures of X at A never refuse client
   Y at A: an ingest gateway that fronts many clients at one address is not taken down by
   one of them, and nobody can lock a client out from somewhere else. There is no lock per
   address or per client id across addresses; guessing a 256-bit secret from many
   addresses gains nothing, so such locks would only be a way to lock others out.
2. **Counters decay.** A pair's failure score halves every ``half_life`` seconds, so a
   pipeline that fails once a day never accumulates to a lock.
3. **A proven secret passes.** A client that signed in with this exact secret within
   ``proven_ttl`` seconds is let through even while its pair is locked (someone else at
   its address guessing its secret does not lock it out) and without a new Argon2id
   verification (``SuccessCache``): during a flood, clients already signed in are never
   queued behind the attackers.
4. **Bounded state, O(1) checks.** At most ``max_pairs`` pair entries (least recently seen
   dropped first; 65,536 by default, under 512 bytes each whatever the client sends, since
   a client id is kept as a 16-byte digest: at most 32 MiB) and ``SuccessCache.capacity``
   proven secrets; every check is a dictionary lookup, never a scan. Unknown client ids
   are treated exactly like known ones (same work, same locks), so neither timing nor a
   lock tells which ids exist.
5. **Expensive work is bounded elsewhere**: Argon2id runs in its own small pool with a
   bounded queue (``artstored.auth.verifier``), never in the pool uploads use.

Failures are audited in aggregate (``FailureTally``): one WAL record per interval with
counts by reason, the number of distinct clients and addresses, lockouts, and the busiest
pairs, instead of a synced record per failed attempt.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Pair:
    score: float = 0.0
    updated: float = 0.0
    locked_until: float = 0.0


class LoginThrottle:
    """Failure scores and locks per (client id, address). Thread-safe; O(1) per call."""

    def __init__(self, *, free_failures: int = 5, base_lock: float = 1.0,
                 max_lock: float = 900.0, half_life: float = 3600.0,
                 max_pairs: int = 65_536):
        self.free_failures = free_failures
        self.base_lock = base_lock
        self.max_lock = max_lock
        self.half_life = half_life
        self.max_pairs = max_pairs
        self._pairs: OrderedDict[tuple[bytes, str], _Pair] = OrderedDict()
        self._lock = threading.Lock()
        self.lockouts = 0
        self.refused = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._pairs)

    def _decayed(self, pair: _Pair, now: float) -> float:
        return pair.score * 0.5 ** (max(0.0, now - pair.updated) / self.half_life)

    @staticmethod
    def _key(client_id: str, address: str) -> tuple[bytes, str]:
        # A digest, so that a client id of any length costs the same few bytes.
        return (hashlib.blake2b(client_id.encode("utf-8", "surrogatepass"),
                                digest_size=16).digest(), address[:64])

    def check(self, client_id: str, address: str, now: float | None = None) -> int:
        """Seconds this pair must wait before trying again (0: go ahead)."""
        now = time.monotonic() if now is None else now
        key = self._key(client_id, address)
        with self._lock:
            pair = self._pairs.get(key)
            wait = pair.locked_until - now if pair is not None else 0.0
            if wait > 0:
                self.refused += 1
                return math.ceil(wait)
            return 0

    def failed(self, client_id: str, address: str, now: float | None = None) -> bool:
        """Record a failed sign-in of this pair; True if it started a lock."""
        now = time.monotonic() if now is None else now
        key = self._key(client_id, address)
        with self._lock:
            pair = self._pairs.get(key)
            if pair is None:
                pair = self._pairs[key] = _Pair(updated=now)
                while len(self._pairs) > self.max_pairs:
                    self._pairs.popitem(last=False)
                    self.evicted += 1
            else:
                self._pairs.move_to_end(key)
            pair.score = self._decayed(pair, now) + 1.0
            pair.updated = now
            failures = int(pair.score + 0.5)   # recent failures, the old ones fading out
            if failures < self.free_failures:
                return False
            lock = min(self.max_lock, self.base_lock * 2 ** (failures - self.free_failures))
            started = pair.locked_until <= now
            pair.locked_until = max(pair.locked_until, now + lock)
            if started:
                self.lockouts += 1
            return started

    def succeeded(self, client_id: str, address: str) -> None:
        key = self._key(client_id, address)
        with self._lock:
            self._pairs.pop(key, None)


class SuccessCache:
    """Secrets proven recently, so a client that signs in again needs no Argon2id run.

    Keyed by client id; holds an HMAC of the secret under a key made at start (the secret
    itself is never kept) and the account's secret hash at the time, so a rotated secret
    or a changed account is never let through on an old proof. Bounded; thread-safe.
    """

    def __init__(self, capacity: int = 4096, ttl: float = 900.0):
        self.capacity = capacity
        self.ttl = ttl
        self._key = os.urandom(32)
        self._entries: OrderedDict[str, tuple[bytes, str, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def _digest(self, secret: str) -> bytes:
        return hmac.new(self._key, secret.encode("utf-8", "surrogatepass"),
                        hashlib.sha256).digest()

    def proven(self, client_id: str, secret: str, secret_hash: str | None,
               now: float | None = None) -> bool:
        """Whether ``secret`` is the one proven for ``client_id`` while its account's
        secret hash was ``secret_hash`` (the current one), within ``ttl``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            entry = self._entries.get(client_id)
        if entry is None or secret_hash is None:
            return False
        digest, proven_hash, at = entry
        ok = now - at <= self.ttl and proven_hash == secret_hash and \
            hmac.compare_digest(digest, self._digest(secret))
        if ok:
            self.hits += 1
        return ok

    def remember(self, client_id: str, secret: str, secret_hash: str,
                 now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        entry = (self._digest(secret), secret_hash, now)
        with self._lock:
            self._entries[client_id] = entry
            self._entries.move_to_end(client_id)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def forget(self, client_id: str) -> None:
        with self._lock:
            self._entries.pop(client_id, None)


class FailureTally:
    """Failed sign-ins counted between two audit records (bounded: the busiest
    ``top`` pairs are kept by count; the distinct counts are exact up to ``cap``)."""

    def __init__(self, top: int = 20, cap: int = 100_000):
        self.top = top
        self.cap = cap
        self._lock = threading.Lock()
        self._reset(time.time())

    def _reset(self, now: float) -> None:
        self.since = now
        self.failures = 0
        self.lockouts = 0
        self.by_reason: dict[str, int] = {}
        self._pairs: dict[tuple[str, str], int] = {}
        self._clients: set[str] = set()
        self._addresses: set[str] = set()
        self._overflow = False

    def add(self, client_id: str, address: str, reason: str, locked: bool) -> None:
        with self._lock:
            self.failures += 1
            self.lockouts += int(locked)
            self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
            key = (client_id[:64], address)
            if key in self._pairs or len(self._pairs) < self.cap:
                self._pairs[key] = self._pairs.get(key, 0) + 1
            else:
                self._overflow = True
            if len(self._clients) < self.cap:
                self._clients.add(client_id[:64])
            if len(self._addresses) < self.cap:
                self._addresses.add(address)

    def drain(self, now: float | None = None) -> dict | None:
        """The summary since the last drain (None if nothing failed), and start anew."""
        now = time.time() if now is None else now
        with self._lock:
            if not self.failures:
                self.since = now
                return None
            busiest = sorted(self._pairs.items(), key=lambda kv: -kv[1])[:self.top]
            summary = {
                "from": round(self.since, 3), "to": round(now, 3),
                "failures": self.failures, "lockouts": self.lockouts,
                "by_reason": dict(self.by_reason),
                "distinct_clients": len(self._clients),
                "distinct_addresses": len(self._addresses),
                "counts_capped": self._overflow or len(self._clients) >= self.cap
                or len(self._addresses) >= self.cap,
                "busiest": [{"client_id": c, "address": a, "failures": n}
                            for (c, a), n in busiest],
            }
            self._reset(now)
            return summary
