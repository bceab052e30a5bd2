"""Tokens: issued by the token endpoint, checked on every route; forgeries refused."""

import base64
import json
import os
import time
import urllib.parse

import jwt as pyjwt
import nacl.signing
import pytest

from harness import Api


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _signing_key(daemon) -> tuple[str, nacl.signing.SigningKey]:
    with open(os.path.join(daemon.data_dir, "keys", "signing.json")) as f:
        kid = json.load(f)["active"]
    with open(os.path.join(daemon.data_dir, "keys", "signing", f"{kid}.key"), "rb") as f:
        return kid, nacl.signing.SigningKey(f.read())


def _claims(daemon, **over) -> dict:
    real = pyjwt.decode(daemon.admin_token(), options={"verify_signature": False})
    real.update(over)
    return real


def _sign(header: dict, claims: dict, key: nacl.signing.SigningKey) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return signing_input + "." + b64url(key.sign(signing_input.encode()).signature)


def _status(daemon, token: str | None, path="/api/v1/files"):
    r = Api(daemon.port, token).get(path)
    return r.status, (r.problem["code"] if r.status >= 400 else None)


def test_token_endpoint_form_and_basic(shared_daemon):
    creds = shared_daemon.admin_credentials()
    api = Api(shared_daemon.port)
    form = urllib.parse.urlencode({"grant_type": "client_credentials", **creds}).encode()
    r = api.request("POST", "/api/v1/auth/token", body=form,
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 200
    doc = r.json()
    assert doc["token_type"] == "Bearer" and doc["expires_in"] == 1800
    assert set(doc["scope"].split()) >= {"files:read", "admin:write"}
    assert r.headers["cache-control"] == "no-store"
    basic = base64.b64encode(f"{creds['client_id']}:{creds['client_secret']}".encode()).decode()
    r = api.request("POST", "/api/v1/auth/token", body=b"grant_type=client_credentials",
                    headers={"Content-Type": "application/x-www-form-urlencoded",
                             "Authorization": f"Basic {basic}"})
    assert r.status == 200
    assert Api(shared_daemon.port, r.json()["access_token"]).get("/api/v1/files").status == 200


def test_token_endpoint_refusals(shared_daemon):
    creds = shared_daemon.admin_credentials()
    api = Api(shared_daemon.port)
    h = {"Content-Type": "application/x-www-form-urlencoded"}
    cases = [
        ({"grant_type": "client_credentials", "client_id": creds["client_id"],
          "client_secret": "wrong"}, 401, "invalid_client"),
        ({"grant_type": "client_credentials", "client_id": "cl_nobody",
          "client_secret": "wrong"}, 401, "invalid_client"),
        ({"grant_type": "password", **creds}, 400, "unsupported_grant_type"),
        ({**creds}, 400, "invalid_request"),
        ({"grant_type": "client_credentials"}, 401, "invalid_client"),
    ]
    for form, status, code in cases:
        r = api.request("POST", "/api/v1/auth/token",
                        body=urllib.parse.urlencode(form).encode(), headers=h)
        assert r.status == status, form
        doc = r.problem
        assert doc["code"] == code and doc["error"] == code
        assert "client_secret" not in r.body.decode() or "wrong" not in r.body.decode()


def test_unknown_client_and_wrong_secret_read_the_same(shared_daemon):
    creds = shared_daemon.admin_credentials()
    api = Api(shared_daemon.port)
    h = {"Content-Type": "application/x-www-form-urlencoded"}
    bodies = []
    for cid in (creds["client_id"], "cl_0000000000000000"):
        r = api.request("POST", "/api/v1/auth/token", headers=h, body=urllib.parse.urlencode(
            {"grant_type": "client_credentials", "client_id": cid,
             "client_secret": "nope"}).encode())
        bodies.append(r.body)
    assert bodies[0] == bodies[1]


def test_token_verifies_with_pyjwt_against_jwks(shared_daemon):
    token = shared_daemon.admin_token()
    jwks = Api(shared_daemon.port).get("/api/v1/auth/jwks").json()
    header = pyjwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA"
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    assert key["kty"] == "OKP" and key["crv"] == "Ed25519"
    public = pyjwt.PyJWK(key).key
    claims = pyjwt.decode(token, public, algorithms=["EdDSA"],
                          options={"verify_aud": False})
    for claim in ("iss", "sub", "role", "scope", "iat", "nbf", "exp", "jti"):
        assert claim in claims
    assert claims["exp"] - claims["iat"] == 1800
    assert claims["role"] == "admin"


def test_missing_and_malformed_tokens(shared_daemon):
    assert _status(shared_daemon, None) == (401, "token_missing")
    r = Api(shared_daemon.port).get("/api/v1/files", headers={"Authorization": "Basic abc"})
    assert r.status == 401 and r.problem["code"] == "token_malformed"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert _status(shared_daemon, "not-a-jwt") == (401, "token_malformed")
    assert _status(shared_daemon, "a.b.c") == (401, "token_malformed")


def test_forged_tokens(shared_daemon):
    d = shared_daemon
    kid, key = _signing_key(d)
    good = _claims(d)
    # A token we sign ourselves with the real key passes: the forgeries below differ in one way.
    assert _status(d, _sign({"alg": "EdDSA", "kid": kid}, good, key)) == (200, None)
    # alg none
    none = f"{b64url(json.dumps({'alg': 'none', 'kid': kid}).encode())}." \
           f"{b64url(json.dumps(good).encode())}."
    assert _status(d, none) == (401, "token_invalid")
    # HS256 with the public key as the HMAC secret
    jwks = Api(d.port).get("/api/v1/auth/jwks").json()
    public_x = jwks["keys"][0]["x"].encode()
    hs = pyjwt.encode(good, public_x, algorithm="HS256", headers={"kid": kid})
    assert _status(d, hs) == (401, "token_invalid")
    # an unknown kid
    assert _status(d, _sign({"alg": "EdDSA", "kid": "nope"}, good, key)) == (401, "token_invalid")
    # signed by another key
    other = nacl.signing.SigningKey.generate()
    assert _status(d, _sign({"alg": "EdDSA", "kid": kid}, good, other)) == (401, "token_invalid")
    # payload changed after signing
    real = d.admin_token()
    h, p, s = real.split(".")
    tampered = dict(pyjwt.decode(real, options={"verify_signature": False}), role="admin",
                    sub="someone-else")
    assert _status(d, f"{h}.{b64url(json.dumps(tampered).encode())}.{s}") == \
        (401, "token_invalid")
    # expired, and not yet valid (both signed with the real key)
    now = int(time.time())
    expired = _sign({"alg": "EdDSA", "kid": kid}, dict(good, iat=now - 7200, nbf=now - 7200,
                                                       exp=now - 3600), key)
    assert _status(d, expired) == (401, "token_expired")
    future = _sign({"alg": "EdDSA", "kid": kid}, dict(good, nbf=now + 3600,
                                                      exp=now + 7200), key)
    assert _status(d, future) == (401, "token_not_yet_valid")
    # another issuer
    assert _status(d, _sign({"alg": "EdDSA", "kid": kid}, dict(good, iss="evil"), key)) == \
        (401, "token_invalid")


def test_roles_are_enforced(shared_daemon):
    d = shared_daemon
    cid, secret = d.create_account("ingest-bot", "user")
    user = Api(d.port, d.token_for(cid, secret))
    assert user.upload(b"ok", "u.txt").status == 201
    assert user.get("/api/v1/element").status == 200
    r = user.request("PUT", "/api/v1/element/mode", json_body={"mode": "ro"})
    assert r.status == 403 and r.problem["code"] == "insufficient_scope"
    r = user.request("POST", "/api/v1/accounts", json_body={"name": "x", "role": "admin"})
    assert r.status == 403
    assert user.get("/api/v1/accounts").status == 403
    r = user.request("POST", "/api/v1/element/gc")
    assert r.status == 403


def test_narrowed_scope(shared_daemon):
    d = shared_daemon
    creds = d.admin_credentials()
    read_only = Api(d.port, d.token_for(creds["client_id"], creds["client_secret"],
                                        scope="files:read"))
    assert read_only.get("/api/v1/files").status == 200
    r = read_only.upload(b"x", "x.txt")
    assert r.status == 403 and r.problem["code"] == "insufficient_scope"


def test_every_route_declares_its_access_rule():
    from artstored import config
    from artstored.api.app import build_app, route_requirement
    from artstored.api.state import Services

    app = build_app(Services(config=config.load(env={})))
    public = set()
    for route in app.router.routes():
        requirement = route_requirement(route.handler)
        assert requirement is not ..., f"{route.method} {route.resource.canonical}"
        if requirement is None:
            public.add(route.resource.canonical)
    assert public == {"/health/live", "/health/ready", "/health/startup", "/metrics",
                      "/api/v1/auth/token", "/api/v1/auth/jwks", "/api/v1/openapi.json",
                      # signed envelopes between daemons, not tokens
                      "/cluster/v1/swim", "/cluster/v1/join",
          "/cluster/v1/objects/{file_id}", "/cluster/v1/changes", "/cluster/v1/have",
          "/cluster/v1/digest", "/cluster/v1/bundle"}


@pytest.mark.parametrize("path", ["/api/v1/files", "/api/v1/element", "/api/v1/accounts",
                                  "/api/v1/jobs/job_x"])
def test_protected_routes_need_a_token(shared_daemon, path):
    assert _status(shared_daemon, None, path) == (401, "token_missing")


def test_initial_admin_file_is_private(shared_daemon):
    path = os.path.join(shared_daemon.data_dir, "initial-admin.json")
    assert os.stat(path).st_mode & 0o777 == 0o600
    secret = shared_daemon.admin_credentials()["client_secret"]
    with open(shared_daemon.log_path, encoding="utf-8") as f:
        assert secret not in f.read()
