"""The OpenAPI document (``GET /api/v1/openapi.json``) and the router, walked together: every
route is documented and every documented operation is routed, with the same path parameters
and the same access rule; the document holds together; a daemon serves it without a token.

HEAD: aiohttp answers HEAD on every GET route. The document lists HEAD only where it is a
feature (the download: headers, Range and ETag without the content); any other HEAD route
must be the automatic twin of a documented GET.
"""

import json
import re

import pytest

from artstored import config
from artstored.api import audit_routes, search
from artstored.api.app import build_app, route_requirement
from artstored.api.openapi import DOCUMENT, PATH
from artstored.api.state import Services
from harness import Api

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
DOCUMENTED_HEAD = {"/api/v1/files/{file_id}/download"}
PUBLIC = {"/health/live", "/health/ready", "/health/startup", "/metrics",
          "/api/v1/auth/token", "/api/v1/auth/jwks", PATH,
          # Between daemons: no token, every body is an envelope signed with a node key.
          "/cluster/v1/swim", "/cluster/v1/join",
          "/cluster/v1/objects/{file_id}", "/cluster/v1/changes", "/cluster/v1/have",
          "/cluster/v1/digest", "/cluster/v1/bundle"}


@pytest.fixture(scope="module")
def routes():
    app = build_app(Services(config=config.load(env={})))
    return {(r.method, r.resource.canonical): r for r in app.router.routes()}


def documented():
    """(METHOD, path) -> (operation, path item) for every operation of the document."""
    return {(m.upper(), path): (op, item) for path, item in DOCUMENT["paths"].items()
            for m, op in item.items() if m in METHODS}


def path_params(op: dict, item: dict) -> list[dict]:
    return [p for p in item.get("parameters", []) + op.get("parameters", [])
            if p["in"] == "path"]


def resolve(ref: str):
    assert ref.startswith("#/"), ref
    node = DOCUMENT
    for part in ref[2:].split("/"):
        assert part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def test_every_route_is_documented_and_every_operation_routed(routes):
    docs = documented()
    router_ops = {k for k in routes if k[0] != "HEAD"}
    doc_ops = {k for k in docs if k[0] != "HEAD"}
    assert router_ops - doc_ops == set(), "routes missing from the document"
    assert doc_ops - router_ops == set(), "documented operations no route serves"
    heads = {path for method, path in routes if method == "HEAD"}
    for path in heads:  # every HEAD route is aiohttp's twin of a GET route
        assert ("GET", path) in routes and ("GET", path) in docs, path
    assert {path for method, path in docs if method == "HEAD"} == DOCUMENTED_HEAD
    assert DOCUMENTED_HEAD <= heads


def test_path_parameters_match_the_routes(routes):
    docs = documented()
    for (method, path), route in routes.items():
        template = route.resource.canonical
        in_route = re.findall(r"\{(\w+)(?::[^}]*)?\}", template)
        key = (method, path) if (method, path) in docs else ("GET", path)
        op, item = docs[key]
        params = path_params(op, item)
        assert sorted(p["name"] for p in params) == sorted(in_route), (method, path)
        assert all(p["required"] is True for p in params), (method, path)
    for (method, path), (op, item) in docs.items():
        names = [p["name"] for p in path_params(op, item)]
        assert sorted(names) == sorted(re.findall(r"\{(\w+)\}", path)), (method, path)
        assert len(names) == len(set(names)), (method, path)


def test_access_rules_match_the_handlers(routes):
    docs = documented()
    public = set()
    for (method, path), route in routes.items():
        if method == "HEAD" and (method, path) not in docs:
            continue
        op, _ = docs[(method, path)]
        requirement = route_requirement(route.handler)
        assert requirement is not ..., f"{method} {path} declares no access rule"
        if requirement is None:
            assert op["security"] == [], f"{method} {path} is public but documented not"
            assert "x-required-role" not in op
            public.add(path)
        else:
            role, scope = requirement
            assert op["security"] == [{"bearer": [scope] if scope else []}], (method, path)
            assert op["x-required-role"] == role, (method, path)
            for status in ("401", "403"):
                assert status in op["responses"], (method, path, status)
    assert public == PUBLIC
    assert DOCUMENT["security"] == [{"bearer": []}]  # the default: a token


def test_query_parameters_are_the_handlers():
    docs = documented()

    def query(method, path):
        op, item = docs[(method, path)]
        return {p["name"] for p in item.get("parameters", []) + op.get("parameters", [])
                if p["in"] == "query"}

    assert query("GET", "/api/v1/search") == search.PARAMS  # and attr.<key>, described
    assert "attr.<key>" in docs[("GET", "/api/v1/search")][0]["description"]
    assert query("GET", "/api/v1/audit") == audit_routes.PARAMS
    assert query("GET", "/api/v1/files") == {"limit", "cursor", "order"}
    assert query("GET", "/api/v1/jobs") == {"kind", "state", "limit"}
    assert query("GET", "/api/v1/accounts") == {"include_deleted"}


def test_request_bodies_have_the_media_types_the_handlers_read():
    docs = documented()
    media = {k: next(iter(op["requestBody"]["content"]))
             for k, (op, _) in docs.items() if "requestBody" in op}
    assert media.pop(("POST", "/api/v1/files")) == "multipart/form-data"
    assert media.pop(("PATCH", "/api/v1/files/{file_id}")) == "application/merge-patch+json"
    assert media.pop(("POST", "/api/v1/auth/token")) == "application/x-www-form-urlencoded"
    for path in ("/cluster/v1/swim", "/cluster/v1/join", "/cluster/v1/changes",
                 "/cluster/v1/have", "/cluster/v1/digest", "/cluster/v1/bundle"):
        assert media.pop(("POST", path)) == "application/msgpack"
    assert media.pop(("PUT", "/cluster/v1/objects/{file_id}")) == "application/octet-stream"
    assert media.pop(("PUT", "/api/v1/uploads/{upload_id}")) == "application/octet-stream"
    assert set(media.values()) == {"application/json"}
    upload = resolve(docs[("POST", "/api/v1/files")][0]["requestBody"]["content"]
                     ["multipart/form-data"]["schema"]["$ref"])
    assert set(upload["properties"]) == {"file", "description", "custom_attributes",
                                         "retention_policy", "ttl_days", "sha256"}
    assert upload["required"] == ["file"]
    token = resolve(docs[("POST", "/api/v1/auth/token")][0]["requestBody"]["content"]
                    ["application/x-www-form-urlencoded"]["schema"]["$ref"])
    assert {"grant_type", "client_id", "client_secret", "scope"} == set(token["properties"])


def test_the_document_holds_together():
    assert DOCUMENT["openapi"] == "3.1.0"
    assert DOCUMENT["info"]["title"] and DOCUMENT["info"]["version"]
    text = json.dumps(DOCUMENT)
    for ref in set(re.findall(r'"\$ref": "([^"]+)"', text)):
        resolve(ref)
    ids = [op["operationId"] for op, _ in documented().values()]
    assert all(ids) and len(ids) == len(set(ids))
    problem = resolve("#/components/schemas/Problem")
    assert set(problem["required"]) == {"type", "title", "status", "detail", "code"}
    for name, response in DOCUMENT["components"]["responses"].items():
        assert list(response["content"]) == ["application/problem+json"], name
        assert response["content"]["application/problem+json"]["schema"] == \
            {"$ref": "#/components/schemas/Problem"}
    for (method, path), (op, item) in documented().items():
        responses = op["responses"]
        assert "default" in responses, (method, path)
        assert any(re.fullmatch(r"[23]\d\d", s) for s in responses), (method, path)
        for status, response in responses.items():
            assert status == "default" or re.fullmatch(r"[1-5]\d\d", status), status
            if "$ref" in response:
                resolve(response["$ref"])
            elif status.startswith(("4", "5")) and "content" in response \
                    and path.startswith("/api/"):
                assert "application/problem+json" in response["content"], (method, path)
        for p in item.get("parameters", []) + op.get("parameters", []):
            assert p["in"] in ("path", "query", "header") and p["name"] and "schema" in p
    scheme = DOCUMENT["components"]["securitySchemes"]["bearer"]
    assert scheme["type"] == "oauth2"
    flow = scheme["flows"]["clientCredentials"]
    assert flow["tokenUrl"] == "/api/v1/auth/token"
    from artstored.auth.roles import SCOPES
    assert set(flow["scopes"]) == set(SCOPES)
    for op, _ in documented().values():
        for requirement in op["security"]:
            assert set(requirement) <= {"bearer"}
            assert set(requirement.get("bearer", [])) <= set(SCOPES)


def test_a_daemon_serves_it_without_a_token(shared_daemon):
    anonymous = Api(shared_daemon.port)
    r = anonymous.get(PATH)
    assert r.status == 200, r.body[:300]
    assert r.headers["content-type"].split(";")[0].strip() == "application/json"
    assert r.json() == json.loads(json.dumps(DOCUMENT))
    assert anonymous.request("HEAD", PATH).status == 200
    # A broken token does not matter on a public route.
    assert anonymous.with_token("garbage").get(PATH).status == 200
    # And what it says about a protected route holds: no token, 401 as a problem document.
    r = anonymous.get("/api/v1/files")
    assert r.status == 401 and r.problem["code"] == "token_missing"
