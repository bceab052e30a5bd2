"""Accounts, lockouts, key rotation, revocation and the audit trail, through a real daemon."""

import json
import os
import statistics
import threading
import time

import lmdb
import pytest

from artstored.auth.accounts import AccountStore
from artstored.auth.keys import KeyRing
from artstored.auth.tokens import TokenService
from artstored.engine import Actor, Store, StoreConfig
from artstored.engine.errors import Unauthorized
from harness import ISSUED_SECRETS, Api, token_request, wait_until

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_account_lifecycle_over_http(daemon):
    admin = daemon.api()
    r = admin.request("POST", "/api/v1/accounts", json_body={"name": "scanner", "role": "user"})
    assert r.status == 201 and r.headers["cache-control"] == "no-store"
    created = r.json()
    cid, secret = created["client_id"], created["client_secret"]
    ISSUED_SECRETS.add(secret)
    assert created["secret_expires_at"] - created["created_at"] == pytest.approx(90 * 86400)
    shown = admin.get(f"/api/v1/accounts/{cid}").json()
    assert "client_secret" not in shown and "secret_hash" not in json.dumps(shown)
    token = daemon.token_for(cid, secret)
    user = Api(daemon.port, token)
    assert user.get("/api/v1/files").status == 200

    # Suspend: the token stops working at once, and no new one is given.
    assert admin.request("PATCH", f"/api/v1/accounts/{cid}",
                         json_body={"status": "suspended"}).json()["status"] == "suspended"
    r = user.get("/api/v1/files")
    assert r.status == 401 and r.problem["code"] == "token_revoked"
    status, _, doc = token_request(daemon.port, cid, secret)
    assert status == 401 and doc["code"] == "account_inactive"
    admin.request("PATCH", f"/api/v1/accounts/{cid}", json_body={"status": "active"})
    user = Api(daemon.port, daemon.token_for(cid, secret))
    assert user.get("/api/v1/files").status == 200

    # Rotate without grace: the old secret stops, the new one works.
    r = admin.request("POST", f"/api/v1/accounts/{cid}/rotate-secret", json_body={})
    new_secret = r.json()["client_secret"]
    ISSUED_SECRETS.add(new_secret)
    assert token_request(daemon.port, cid, secret)[0] == 401
    assert token_request(daemon.port, cid, new_secret)[0] == 200
    # Rotate with a grace period: both work, until the grace ends.
    r = admin.request("POST", f"/api/v1/accounts/{cid}/rotate-secret",
                      json_body={"grace_seconds": 2})
    rotated_at = time.time()
    newest = r.json()["client_secret"]
    ISSUED_SECRETS.add(newest)
    assert token_request(daemon.port, cid, new_secret)[0] == 200
    assert token_request(daemon.port, cid, newest)[0] == 200
    # Waiting out the grace is the behaviour under test; then the old secret is refused.
    time.sleep(max(0.0, rotated_at + 2.2 - time.time()))
    status, _, doc = token_request(daemon.port, cid, new_secret)
    assert (status, doc.get("code")) == (401, "invalid_client"), "old secret outlived its grace"
    assert token_request(daemon.port, cid, newest)[0] == 200
    secret = newest

    # Role change: tokens of the old role stop working.
    old = Api(daemon.port, daemon.token_for(cid, secret))
    r = admin.request("PATCH", f"/api/v1/accounts/{cid}", json_body={"role": "operator"})
    assert r.json()["role"] == "operator" and "storage:write" in r.json()["scopes"]
    assert old.get("/api/v1/files").status == 401
    op = Api(daemon.port, daemon.token_for(cid, secret))
    assert op.request("POST", "/api/v1/element/gc").status == 202
    r = admin.request("PATCH", f"/api/v1/accounts/{cid}",
                      json_body={"role": "user", "scopes": ["files:read"]})
    reader = Api(daemon.port, daemon.token_for(cid, secret))
    assert reader.get("/api/v1/files").status == 200
    assert reader.upload(b"x", "x.txt").status == 403

    # Revoke one token; revoke all.
    t1, t2 = daemon.token_for(cid, secret), daemon.token_for(cid, secret)
    assert admin.request("POST", "/api/v1/auth/revoke", json_body={"token": t1}).status == 200
    assert Api(daemon.port, t1).get("/api/v1/files").problem["code"] == "token_revoked"
    assert Api(daemon.port, t2).get("/api/v1/files").status == 200
    admin.request("POST", f"/api/v1/accounts/{cid}/revoke-tokens")
    assert Api(daemon.port, t2).get("/api/v1/files").status == 401
    assert Api(daemon.port, daemon.token_for(cid, secret)).get("/api/v1/files").status == 200

    # Delete: soft; the id stays taken, the account cannot sign in.
    assert admin.request("DELETE", f"/api/v1/accounts/{cid}").json()["status"] == "deleted"
    assert token_request(daemon.port, cid, secret)[0] == 401
    listed = [a["client_id"] for a in admin.get("/api/v1/accounts").json()["items"]]
    assert cid not in listed
    everything = admin.get("/api/v1/accounts?include_deleted=1").json()["items"]
    assert any(a["client_id"] == cid and a["status"] == "deleted" for a in everything)
    r = admin.request("PATCH", f"/api/v1/accounts/{cid}", json_body={"status": "active"})
    assert r.status == 409 and r.problem["code"] == "invalid_account_transition"

    # The system account can be neither suspended nor deleted.
    sys_id = daemon.admin_credentials()["client_id"]
    for request in (("PATCH", {"status": "suspended"}), ("DELETE", None)):
        r = admin.request(request[0], f"/api/v1/accounts/{sys_id}", json_body=request[1])
        assert r.status == 403 and r.problem["code"] == "system_account"
    assert admin.get("/api/v1/files").status == 200


def test_account_lifecycle_with_the_cli(daemon):
    creds = os.path.join(daemon.data_dir, "initial-admin.json")

    def cli(*args):
        r = daemon.cli(*args, "--credentials", creds)
        assert r.returncode == 0, (args, r.stderr)
        return r.stdout.decode()

    created = json.loads(cli("account", "create", "robot", "--role", "operator", "--json"))
    cid = created["client_id"]
    ISSUED_SECRETS.add(created["client_secret"])
    assert "robot" in cli("account", "list")
    assert json.loads(cli("account", "show", cid, "--json"))["role"] == "operator"
    assert "suspended" in cli("account", "suspend", cid)
    assert "active" in cli("account", "reactivate", cid)
    rotated = json.loads(cli("account", "rotate-secret", cid, "--json"))
    ISSUED_SECRETS.add(rotated["client_secret"])
    assert rotated["client_secret"] != created["client_secret"]
    assert "user" in cli("account", "role", cid, "user")
    assert "revoked" in cli("account", "revoke-tokens", cid)
    assert "deleted" in cli("account", "delete", cid)
    assert cid in cli("account", "list", "--all")
    keys = json.loads(cli("keys", "list", "--json"))["items"]
    assert len(keys) == 1 and keys[0]["active"]


def test_brute_force_is_locked_out(make_daemon):
    daemon = make_daemon("node", config={"auth": {"failure_audit_seconds": 0.5}})
    cid, secret = daemon.create_account("victim", "user")
    other_id, other_secret = daemon.create_account("bystander", "user")
    statuses = []
    retry_after = None
    for i in range(12):
        status, headers, doc = token_request(daemon.port, cid, f"guess-{i}")
        statuses.append(status)
        if status == 429:
            retry_after = int(headers["retry-after"])
            assert doc["code"] == "too_many_requests" and retry_after >= 1
    assert statuses[:5] == [401] * 5 and 429 in statuses
    # Even the right secret waits out the lock at that address (it was never proven)...
    assert token_request(daemon.port, cid, secret)[0] == 429
    # ...but a correct client elsewhere is not affected.
    assert token_request(daemon.port, other_id, other_secret, source="127.0.0.2")[0] == 200
    assert token_request(daemon.port, cid, secret, source="127.0.0.3")[0] == 200
    # Unknown ids are locked the same way: a lockout tells nothing about which ids exist.
    unknown = [token_request(daemon.port, "cl_doesnotexist00", f"g{i}", source="127.0.0.4")[0]
               for i in range(8)]
    assert unknown[:5] == [401] * 5 and 429 in unknown
    # The failures are on the audit trail in aggregate (not a synced record per attempt),
    # without the secrets.
    def aggregate():
        items = daemon.api().get("/api/v1/audit?kind=auth.&limit=1000").json()["items"]
        done = sum(e["data"]["failures"] for e in items) >= 10 and \
            sum(e["data"]["lockouts"] for e in items) >= 2
        return items if done else None
    events = wait_until(aggregate, 10, "the sign-in failures to be audited")
    assert {e["kind"] for e in events} == {"auth.failures"}
    busiest: dict = {}
    for e in events:
        for b in e["data"]["busiest"]:
            key = (b["client_id"], b["address"])
            busiest[key] = busiest.get(key, 0) + b["failures"]
    assert busiest[(cid, "127.0.0.1")] >= 5 and busiest[("cl_doesnotexist00", "127.0.0.4")] >= 5
    assert not any("guess-" in json.dumps(e) for e in events)


def test_unknown_client_and_wrong_secret_take_the_same_time(daemon):
    cid, _ = daemon.create_account("timing", "user")

    def median_time(client_id, source):
        samples = []
        for i in range(4):
            t = time.perf_counter()
            assert token_request(daemon.port, client_id, f"wrong{i}", source=source)[0] == 401
            samples.append(time.perf_counter() - t)
        return statistics.median(samples)

    known = median_time(cid, "127.0.0.5")
    unknown = median_time("cl_" + "0" * 16, "127.0.0.6")
    print(f"\nwrong secret {known * 1000:.0f} ms, unknown client {unknown * 1000:.0f} ms")
    assert 0.6 < known / unknown < 1.6


def test_key_rotation_refuses_no_valid_token(daemon):
    clients = [daemon.create_account(f"c{i}", "user") for i in range(8)]
    before = [daemon.token_for(cid, s) for cid, s in clients]
    stop = threading.Event()
    failures, calls = [], [0]
    after: list[str] = []
    # Per thread: calls with the token of before the rotation, and with the one minted after.
    old_calls, new_calls = [0] * 8, [0] * 8
    rotated = threading.Event()
    old_after_rotation = [0] * 8  # old-key calls that began once the rotation had answered

    def hammer(i):
        try:
            while not stop.is_set():
                for token in [before[i]] + after[i:i + 1]:
                    began_after_rotation = rotated.is_set()
                    r = Api(daemon.port, token).get("/api/v1/files?limit=1")
                    calls[0] += 1
                    if token is before[i]:
                        old_calls[i] += 1
                        old_after_rotation[i] += began_after_rotation
                    else:
                        new_calls[i] += 1
                    if r.status != 200:
                        failures.append((i, r.status, r.body[:100]))
        except Exception as exc:  # a crashed thread must fail the test, not hide
            failures.append((i, "crash", repr(exc)))

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    wait_until(lambda: min(old_calls) >= 3 or failures, 30,
               "every client to be using its token before the rotation")
    r = daemon.api().request("POST", "/api/v1/auth/keys/rotate", json_body={})
    assert r.status == 200
    rotated.set()
    new_kid = r.json()["active"]
    minted = [daemon.token_for(cid, s) for cid, s in clients]
    after.extend(minted)  # all at once: the threads switch when the list is whole
    # Both keys in use at once: each client's old token keeps being sent after the rotation,
    # side by side with its new one.
    wait_until(lambda: (min(new_calls) >= 3 and min(old_after_rotation) >= 3) or failures,
               30, "every client to use both its old and its new token after the rotation")
    stop.set()
    for t in threads:
        t.join()
    assert failures == [], failures[:3]
    assert min(old_after_rotation) >= 3 and min(new_calls) >= 3
    assert calls[0] > 50
    jwks = Api(daemon.port).get("/api/v1/auth/jwks").json()["keys"]
    assert len(jwks) == 2 and new_kid in [k["kid"] for k in jwks]
    # The rotation survives a restart and both keys still verify.
    daemon.restart()
    assert Api(daemon.port, before[0]).get("/api/v1/files").status == 200
    assert Api(daemon.port, after[0]).get("/api/v1/files").status == 200
    r = daemon.api().request("POST", "/api/v1/auth/keys/rotate",
                             json_body={"grace_seconds": 5})
    assert r.status == 422 and r.problem["code"] == "invalid_grace"


def test_grace_ends_and_secrets_expire(tmp_path):
    """The clock-bound rules, with the real key ring and account store (no HTTP)."""
    store = Store(StoreConfig(data_dir=str(tmp_path / "d")))
    try:
        ring = KeyRing(store.data_dir)
        # Tokens live far longer than the grace: a refusal after the grace can only be the
        # retired key's, never the token's own expiry.
        tokens = TokenService(ring, "artstore:test", ttl_seconds=86400)
        old, _ = tokens.issue(sub="a", name="a", role="user", scopes=["files:read"])
        old_kid = ring.active_kid
        rotated_at = time.time()
        ring.rotate(grace_seconds=100)
        new, _ = tokens.issue(sub="b", name="b", role="user", scopes=["files:read"])
        assert ring.active_kid != old_kid
        # During the grace the retired key still verifies: through the verified-token cache
        # and through a fresh signature check alike.
        fresh = TokenService(ring, "artstore:test", ttl_seconds=86400)
        for service in (tokens, fresh):
            assert service.verify(old).sub == "a"
            assert service.verify(old, now=rotated_at + 95).sub == "a"
        assert old_kid in [k["kid"] for k in ring.jwks()["keys"]]
        # After it, the same unexpired token is refused, as signed with an unknown key...
        for service in (tokens, TokenService(ring, "artstore:test", ttl_seconds=86400)):
            with pytest.raises(Unauthorized) as info:
                service.verify(old, now=rotated_at + 105)
            assert info.value.code == "token_invalid"
            assert "unknown key" in info.value.detail
        assert set(ring.verifying_keys(now=rotated_at + 105)) == {ring.active_kid}
        # ...while a token of the new key is still good then.
        assert tokens.verify(new, now=rotated_at + 105).sub == "b"
        # The end of the grace is durable: a key ring read back from disk agrees.
        reread = TokenService(KeyRing(store.data_dir), "artstore:test", ttl_seconds=86400)
        assert reread.verify(old, now=rotated_at + 95).sub == "a"
        with pytest.raises(Unauthorized) as info:
            reread.verify(old, now=rotated_at + 105)
        assert info.value.code == "token_invalid"
        accounts = AccountStore(store.env, secret_ttl_days=1)
        account, secret = accounts.create(name="e", role="user", actor=Actor("t", "t"))
        assert accounts.authenticate(account["client_id"], secret)["client_id"]
        with pytest.raises(Unauthorized) as info:
            accounts.authenticate(account["client_id"], secret, now=time.time() + 86401)
        assert info.value.code == "secret_expired"
        # Revocations outlive their tokens only until the GC purges them.
        accounts.revoke_token("old-jti", int(time.time()) - 10, Actor("t", "t"), client_id="x")
        accounts.revoke_token("live-jti", int(time.time()) + 600, Actor("t", "t"), client_id="x")
        assert accounts.purge_revoked() == 1
        assert not accounts.token_allowed(account["client_id"], 1, "live-jti")
    finally:
        store.close()


def test_audit_trail(daemon):
    api = daemon.api()
    attr = api.upload_ok(b"audited", "a.txt")
    api.request("PATCH", f"/api/v1/files/{attr['file_id']}", json_body={"description": "d"},
                headers={"Content-Type": "application/merge-patch+json"})
    api.request("PUT", "/api/v1/element/mode", json_body={"mode": "ro"})
    admin_id = daemon.admin_credentials()["client_id"]
    events = api.get(f"/api/v1/audit?file_id={attr['file_id']}&order=asc").json()["items"]
    assert [e["kind"] for e in events] == ["file.create", "file.update"]
    assert all(e["actor"]["id"] == admin_id for e in events)
    mode = api.get("/api/v1/audit?kind=element.mode").json()["items"]
    assert mode[0]["data"] == {"from": "rw", "to": "ro"}
    by_actor = api.get(f"/api/v1/audit?actor={admin_id}&limit=2").json()
    assert len(by_actor["items"]) == 2 and by_actor["next_cursor"]
    rest = api.get(f"/api/v1/audit?actor={admin_id}&cursor={by_actor['next_cursor']}").json()
    assert all(e["seq"] < by_actor["items"][-1]["seq"] for e in rest["items"])
    future = api.get("/api/v1/audit?from=2999-01-01T00:00:00Z").json()["items"]
    assert future == []
    assert api.get("/api/v1/audit/verify").json()["ok"] is True
    assert api.get("/api/v1/audit?limit=5000").problem["code"] == "invalid_limit"

    out = daemon.cli("audit", "export", "--data-dir", daemon.data_dir, "--kind", "file.")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(l) for l in out.stdout.decode().splitlines()]
    assert [l["kind"] for l in lines] == ["file.create", "file.update"]

    # Changing one byte of one WAL record: verify names that record; untouched verifies.
    r = daemon.cli("audit", "verify", "--data-dir", daemon.data_dir)
    assert r.returncode == 0 and b"intact" in r.stdout
    daemon.stop()
    target = events[0]["seq"]
    env = lmdb.open(os.path.join(daemon.data_dir, "store.lmdb"), max_dbs=16)
    db = env.open_db(b"wal")
    with env.begin(write=True) as txn:
        key = target.to_bytes(8, "big")
        raw = bytearray(txn.get(key, db=db))
        raw[len(raw) // 2] ^= 0x20
        txn.put(key, bytes(raw), db=db)
    env.close()
    r = daemon.cli("audit", "verify", "--data-dir", daemon.data_dir, "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout)["broken_seq"] == target
    assert f"BROKEN at record {target}".encode() in \
        daemon.cli("audit", "verify", "--data-dir", daemon.data_dir).stdout


def test_an_expired_system_admin_secret_is_renewed_offline(make_daemon):
    """Nothing online can renew the system admin's secret once it has expired; on the host,
    with the daemon stopped, ``artstore account rotate-secret --data-dir`` can."""
    d = make_daemon("node", config={"auth": {"secret_ttl_days": 1}})
    creds = d.admin_credentials()
    d.stop()
    store = Store(StoreConfig(data_dir=d.data_dir))   # age the secret past its expiry
    try:
        accounts = AccountStore(store.env)
        accounts._update(creds["client_id"], Actor("t", "t"), "test: expire",
                         lambda a: a.update(secret_expires_at=time.time() - 1) or {})
    finally:
        store.close()
    d.start()
    status, _, doc = token_request(d.port, creds["client_id"], creds["client_secret"])
    assert status == 401 and doc["code"] == "secret_expired"
    running = d.cli("account", "rotate-secret", "--data-dir", d.data_dir, creds["client_id"])
    assert running.returncode != 0 and b"store_locked" in running.stderr  # daemon must stop
    d.stop()
    result = d.cli("account", "rotate-secret", "--data-dir", d.data_dir, creds["client_id"],
                   "--json")
    assert result.returncode == 0, result.stderr
    new = json.loads(result.stdout)
    ISSUED_SECRETS.add(new["client_secret"])
    assert new["client_id"] == creds["client_id"] and "secret_hash" not in new
    assert d.admin_credentials()["client_secret"] == new["client_secret"]
    d.start()
    assert token_request(d.port, creds["client_id"], new["client_secret"])[0] == 200
    assert token_request(d.port, creds["client_id"], creds["client_secret"])[0] == 401
    changes = d.api().get("/api/v1/audit?kind=account.update&limit=100").json()["items"]
    assert any(e["data"]["change"] == "secret rotated" and
               e["actor"]["name"] == "offline rotate-secret" for e in changes)
