"""Sign-in under attack: the throttle's rules (artstored.auth.throttle), from two real source
addresses against a real daemon, and its bounds in memory."""

import sys
import threading
import tracemalloc

from artstored.auth.throttle import FailureTally, LoginThrottle, SuccessCache
from artstored.auth.verifier import SecretVerifier, SignInBusy
from harness import token_request

A, B = "127.0.0.1", "127.0.0.2"


def _fail(daemon, cid, source, n=8):
    return [token_request(daemon.port, cid, f"wrong-{i}", source=source)[0] for i in range(n)]


def test_failures_at_one_address_never_refuse_a_client_at_another(daemon):
    cid, secret = daemon.create_account("pipeline", "user")
    assert 429 in _fail(daemon, cid, A)               # someone guesses its secret at A
    status, headers, doc = token_request(daemon.port, cid, secret, source=A)
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert token_request(daemon.port, cid, secret, source=B)[0] == 200   # its own address


def test_one_clients_failures_never_refuse_another_client_at_that_address(daemon):
    x, _ = daemon.create_account("careless", "user")
    y, y_secret = daemon.create_account("gateway-neighbour", "user")
    assert 429 in _fail(daemon, x, A)
    assert token_request(daemon.port, y, y_secret, source=A)[0] == 200
    assert token_request(daemon.port, x, "still-wrong", source=B)[0] == 401   # B is fresh


def test_a_proven_secret_passes_a_lock_made_by_guessing(daemon):
    """Someone at the client's own address guessing its secret does not lock it out."""
    cid, secret = daemon.create_account("scanner", "user")
    assert token_request(daemon.port, cid, secret, source=A)[0] == 200
    assert 429 in _fail(daemon, cid, A)
    assert token_request(daemon.port, cid, secret, source=A)[0] == 200
    assert token_request(daemon.port, cid, "a-guess", source=A)[0] == 429


def test_a_rotated_secret_is_not_passed_on_an_old_proof(daemon):
    cid, secret = daemon.create_account("rotating", "user")
    assert token_request(daemon.port, cid, secret)[0] == 200
    r = daemon.api().request("POST", f"/api/v1/accounts/{cid}/rotate-secret", json_body={})
    assert r.status == 200, r.body
    assert token_request(daemon.port, cid, secret)[0] == 401
    assert token_request(daemon.port, cid, r.json()["client_secret"])[0] == 200


def test_counters_decay():
    throttle = LoginThrottle(free_failures=5, half_life=3600)
    day = 86400.0
    # A pipeline that fails once a day is never locked, however long it runs.
    for n in range(365):
        assert not throttle.failed("cl_pipeline", A, now=n * day)
        assert throttle.check("cl_pipeline", A, now=n * day + 1) == 0
    # Five quick failures lock; a few half-lives later the score has decayed and one more
    # failure does not lock again.
    for i in range(5):
        throttle.failed("cl_x", A, now=1000.0 + i)
    assert throttle.check("cl_x", A, now=1004.5) > 0
    assert not throttle.failed("cl_x", A, now=1005.0 + 6 * 3600)
    assert throttle.check("cl_x", A, now=1006.0 + 6 * 3600) == 0


def test_state_is_bounded_with_a_million_client_ids_and_65536_addresses():
    throttle = LoginThrottle(max_pairs=65_536)
    tally = FailureTally()
    for i in range(1_000_000):
        client, address = f"cl_{i:016x}", f"10.{(i >> 8) & 255}.{i & 255}.1"
        locked = throttle.failed(client, address, now=float(i))
        tally.add(client, address, "invalid_client", locked)
        throttle.check(client, address, now=float(i))
    assert len(throttle) == 65_536 and throttle.evicted == 1_000_000 - 65_536
    summary = tally.drain()
    assert summary["failures"] == 1_000_000 and len(summary["busiest"]) == 20
    assert summary["counts_capped"] and summary["distinct_addresses"] == 65_536
    # The stated bound in bytes: a throttle at its 65,536 pairs, as tracemalloc counts it.
    full = LoginThrottle(max_pairs=65_536)
    tracemalloc.start()
    try:
        for i in range(65_536):
            full.failed(f"cl_{i:016x}", f"10.{(i >> 8) & 255}.{i & 255}.1", now=0.0)
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert used < 65_536 * 512, used   # the bound artstored.auth.throttle states
    print(f"\nthrottle at its bound of 65,536 pairs: {used / 2**20:.1f} MiB "
          f"({used / 65_536:.0f} bytes a pair)", file=sys.stderr)


def test_success_cache_is_bounded_and_keeps_no_secret():
    cache = SuccessCache(capacity=100)
    for i in range(1000):
        cache.remember(f"cl_{i}", f"secret-{i}", "hash", now=0.0)
    assert len(cache._entries) == 100
    assert cache.proven("cl_999", "secret-999", "hash", now=1.0)
    assert not cache.proven("cl_999", "secret-999", "other-hash", now=1.0)
    assert not cache.proven("cl_999", "secret-999", "hash", now=10_000.0)
    assert not cache.proven("cl_0", "secret-0", "hash", now=1.0)   # evicted
    assert all(b"secret" not in repr(v).encode() for v in cache._entries.values())


def test_verifier_pool_refuses_beyond_its_queue():
    release = threading.Event()
    verifier = SecretVerifier(workers=2, queue=3)
    futures = [verifier.submit(release.wait, 10) for _ in range(5)]
    try:
        refused = 0
        for _ in range(3):
            try:
                verifier.submit(release.wait, 10)
            except SignInBusy as exc:
                refused += 1
                assert exc.status == 503 and exc.extra["retry_after"] == 1
        assert refused == 3 and verifier.in_flight == 5
    finally:
        release.set()
        for f in futures:
            f.result(10)
    assert verifier.in_flight == 0
    verifier.submit(lambda: None).result(10)   # room again
    verifier.shutdown()


def test_a_sign_in_flood_gets_503_with_retry_after_not_an_upload(daemon):
    """More wrong sign-ins at once than the Argon2id pool and its queue hold: the surplus
    is refused at once with 503 + Retry-After, uploads go on, a proven client signs in."""
    cid, secret = daemon.create_account("steady", "user")
    assert token_request(daemon.port, cid, secret, source=B)[0] == 200
    api = daemon.api()
    results: list = []
    lock = threading.Lock()

    def flood(n):
        answer = token_request(daemon.port, f"cl_flood{n:06d}", "wrong", source=A)
        with lock:
            results.append(answer)

    threads = [threading.Thread(target=flood, args=(n,)) for n in range(120)]
    for t in threads:
        t.start()
    upload = api.upload(b"during the flood", "flood.txt")
    proven = token_request(daemon.port, cid, secret, source=B)[0]
    for t in threads:
        t.join(60)
    assert upload.status == 201 and proven == 200
    statuses = [s for s, _, _ in results]
    assert set(statuses) <= {401, 503}, statuses
    busy = [(h, d) for s, h, d in results if s == 503]
    assert busy, "120 sign-ins at once never filled the verification queue"
    assert all(d["code"] == "sign_in_busy" and h["retry-after"] == "1" for h, d in busy)
