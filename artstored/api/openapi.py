"""``GET /api/v1/openapi.json``: the OpenAPI 3.1 description of every route served here.

The document is written here by hand, next to nothing it could drift from unseen: a test
(tests/test_openapi.py) walks the router and the document together (every method and path in
both, the same path parameters, the same access rule), and the fuzz (tests/test_fuzz.py)
drives every operation it lists. Public (no token): the health probes, ``/metrics``, the
token endpoint, the JWKS, this document, and the two routes between cluster daemons
(signed envelopes instead of tokens). ``GET`` routes answer ``HEAD`` too (aiohttp adds
it); only the download documents ``HEAD``, where it is a feature.
"""

from __future__ import annotations

import json

from aiohttp import web

from .. import __version__
from ..auth import roles as R
from .app import public

PATH = "/api/v1/openapi.json"
PROBLEM = "application/problem+json"
JSON = "application/json"


# --- small builders -----------------------------------------------------------------------

def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: tuple = (), extra: bool = True, **props) -> dict:
    out = {"type": "object", "properties": props}
    if required:
        out["required"] = list(required)
    if not extra:
        out["additionalProperties"] = False
    return out


S, I, N, B = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
NULL_S = {"type": ["string", "null"]}
TIME = {"type": "string", "format": "date-time"}
STRINGS = {"type": "array", "items": S}


def page_of(item: dict) -> dict:
    return obj(("items", "next_cursor"), items={"type": "array", "items": item},
               next_cursor=NULL_S)


def body(schema: dict, media: str = JSON, required: bool = True) -> dict:
    return {"required": required, "content": {media: {"schema": schema}}}


def ok(description: str, schema: dict | None = None, media: str = JSON,
       headers: tuple = ()) -> dict:
    out = {"description": description}
    if schema is not None:
        out["content"] = {media: {"schema": schema}}
    if headers:
        out["headers"] = {h: {"$ref": f"#/components/headers/{h}"} for h in headers}
    return out


def param(where: str, name: str, description: str, schema: dict | None = None,
          required: bool = False) -> dict:
    return {"name": name, "in": where, "required": required or where == "path",
            "description": description, "schema": schema or S}


def path_param(name: str, description: str) -> dict:
    return param("path", name, description)


def q(name: str, description: str, schema: dict | None = None) -> dict:
    return param("query", name, description, schema)


def h(name: str, description: str) -> dict:
    return param("header", name, description)


def limit(default: int, high: int = 1000) -> dict:
    return q("limit", f"page size, ASCII digits 1-{high}",
             {"type": "integer", "minimum": 1, "maximum": high, "default": default})


ORDER = q("order", "newest (desc, the default) or oldest (asc) first",
          {"type": "string", "enum": ["desc", "asc"], "default": "desc"})
CURSOR = q("cursor", "the next_cursor of the previous page, as it was given")

# Problem statuses, and what each means wherever it is listed.
WHY = {
    400: "Malformed request (a parameter, the JSON, the multipart framing)",
    401: "No token, or one that is malformed, invalid, expired or revoked",
    403: "The token's role or scopes do not allow this",
    404: "No such resource",
    405: "Method not allowed on this path",
    409: "Conflicts with the current state (mode, a running job, an account's status)",
    410: "Deleted: a replica of a deleted file is not taken back",
    412: "A precondition (If-Match) failed",
    413: "The request body is larger than the limit",
    421: "This node is not the cluster's authority: send it to an admin (see authority)",
    415: "Request body sent with a Content-Encoding other than identity",
    416: "Range not satisfiable",
    417: "An Expect other than 100-continue",
    422: "Well-formed but invalid content",
    429: "Too many failed sign-in attempts: retry after Retry-After seconds",
    503: "Not ready (starting or stopping), or a disk is offline",
    507: "Storage full",
}


def op(summary: str, tag: str, auth: tuple | None, responses: dict, *, params: tuple = (),
       request: dict | None = None, errors: tuple = (), op_id: str = "",
       description: str = "") -> dict:
    """One operation. ``auth`` is None (public) or (least role, scope), as the handler's
    ``@requires`` says."""
    out = {"operationId": op_id, "summary": summary, "tags": [tag]}
    if description:
        out["description"] = description
    if params:
        out["parameters"] = list(params)
    if request is not None:
        out["requestBody"] = request
    statuses = set(errors) | {415, 417}
    if auth is None:
        out["security"] = []
    else:
        role, scope = auth
        out["security"] = [{"bearer": [scope] if scope else []}]
        out["x-required-role"] = role
        statuses |= {401, 403, 503}
    out["responses"] = dict(responses)
    for status in sorted(statuses):
        out["responses"].setdefault(str(status), {"$ref": f"#/components/responses/{status}"})
    out["responses"]["default"] = {"$ref": "#/components/responses/default"}
    return out


# --- shapes -------------------------------------------------------------------------------

SCHEMAS = {
    "Problem": obj(("type", "title", "status", "detail", "code"),
                   type={"type": "string", "description": "urn:artstore:problem:<code>"},
                   title=S, status=I, detail=S,
                   code={"type": "string", "description": "stable machine-readable code"}),
    "FileRecord": obj(
        ("file_id", "original_filename", "file_size", "created_at", "checksum_sha256",
         "version"),
        file_id=S, original_filename=S, storage_filename=S, file_size=I,
        content_type=NULL_S, created_at=TIME, created_by_id=S, created_by_username=S,
        description=S, version=I, checksum_sha256=S, custom_attributes={"type": "object"},
        retention_policy=NULL_S, expires_at={"type": ["string", "null"]},
        updated_at=TIME, updated_by_id=S, updated_by_username=S),
    "FilePage": page_of(ref("FileRecord")),
    "SearchPage": obj(("items", "next_cursor", "total_hits"), next_cursor=NULL_S,
                      total_hits=I, items={"type": "array", "items": {"allOf": [
                          ref("FileRecord"), obj(score={"type": ["number", "null"]},
                                                 snippets={"type": "object"})]}}),
    "Upload": obj(("file",), extra=False,
                  file={"type": "string", "contentMediaType": "application/octet-stream",
                        "description": "the content; the part needs a filename"},
                  description=S,
                  custom_attributes={"type": "string",
                                     "description": "a JSON object, as text"},
                  retention_policy=S,
                  ttl_days={"type": "string", "pattern": "^[0-9]+$",
                            "description": "whole days, 0-1000000"},
                  sha256={"type": "string", "pattern": "^[0-9a-fA-F]{64}$",
                          "description": "declared SHA-256 of the content, checked"}),
    "MergePatch": obj(extra=False, description={"type": ["string", "null"]},
                      custom_attributes={"type": ["object", "null"]}),
    "Account": obj(("client_id", "name", "role", "scopes", "status"),
                   client_id=S, name=S, role={"enum": list(R.ROLES)}, scopes=STRINGS,
                   status={"enum": ["active", "suspended", "deleted"]}, system=B,
                   created_at={}, created_by=S, token_generation=I),
    "AccountWithSecret": {"allOf": [ref("Account"), obj(
        ("client_secret",), client_secret={"type": "string",
                                           "description": "shown once, here only"})]},
    "AccountPage": page_of(ref("Account")),
    "AccountCreate": obj(("name",), name=S, role={"enum": list(R.ROLES), "default": R.USER},
                         scopes=STRINGS),
    "AccountUpdate": obj(extra=False, status={"enum": ["active", "suspended"]},
                         role={"enum": list(R.ROLES)}, scopes=STRINGS),
    "Grace": obj(grace_seconds=N),
    "UploadSession": obj(("upload_id", "size", "received"), upload_id=S, size=I, received=I,
                         original_filename=S, created_at=N, updated_at=N,
                         file_id={"type": "string",
                                  "description": "once complete: the file it made"}),
    "UploadSessionCreate": obj(("original_filename", "size"), extra=False,
                               original_filename=S, size=I, content_type=S, description=S,
                               custom_attributes={"type": "object"}, retention_policy=S,
                               ttl_days=I, sha256=S),
    "S3Key": obj(("access_key_id", "client_id", "status"), access_key_id=S, client_id=S,
                 status={"enum": ["active", "revoked"]}, created_at=N, created_by=S,
                 revoked_at=N, revoked_by=S),
    "S3KeyWithSecret": {"allOf": [ref("S3Key"), obj(
        ("secret_access_key",), secret_access_key={
            "type": "string", "description": "shown once, here only"})]},
    "S3KeyPage": obj(("items",), items={"type": "array", "items": ref("S3Key")}),
    "Element": obj(("node_id", "mode"), node_id=S, name=S,
                   mode={"enum": ["edit", "rw", "ro", "ar"]}, capacity={"type": "object"},
                   files=I, bytes_stored=I, max_upload_bytes=I),
    "ChangePage": obj(("items", "next_after"), next_after=I,
                      items={"type": "array", "items": obj(
                          ("seq", "kind", "file_id"), seq=I, file_id=S,
                          kind={"enum": ["file.create", "file.update", "file.delete"]},
                          attr={"type": "object"}, actor={"type": "object"})}),
    "Cluster": obj(("enabled", "node_id", "state", "members"), enabled=B, node_id=S,
                   state={"enum": ["single", "pending", "member"]},
                   members={"type": "array", "items": {"type": "object"}},
                   document={"type": ["object", "null"]},
                   join_requests={"type": "array", "items": {"type": "object"}}),
    "ModeChange": obj(("mode",), mode={"enum": ["edit", "rw", "ro", "ar"]},
                      confirm={"type": "boolean", "default": False}),
    "Job": obj(("job_id", "kind", "state"), job_id=S, kind=S,
               state={"enum": ["queued", "running", "interrupted", "succeeded", "failed",
                               "cancelled"]},
               started_by=S, params={"type": "object"}, progress={"type": "object"},
               created_at=N, started_at={"type": ["number", "null"]},
               finished_at={"type": ["number", "null"]}, report={}, error={}),
    "JobPage": page_of(ref("Job")),
    "JobParams": obj(extra=False, deep=B, rate_mb_per_s=N, concurrency=I,
                     name={"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"},
                     query=S, file_ids=STRINGS, organization=S),
    "Fixity": obj(("file_id", "digests", "signature"), file_id=S, file_size=I,
                  digests=obj(sha256=S, xxh3_128=NULL_S),
                  signature=obj(algorithm=NULL_S, key_id=NULL_S, value=NULL_S, valid=B),
                  public_key={"type": "object"}, origin_node=NULL_S,
                  last_verification={"type": ["object", "null"]}),
    "TokenRequest": obj(("grant_type",), grant_type={"enum": ["client_credentials"]},
                        client_id=S, client_secret=S,
                        scope={"type": "string", "description": "space-separated subset"}),
    "Token": obj(("access_token", "token_type", "expires_in", "scope"), access_token=S,
                 token_type={"enum": ["Bearer"]}, expires_in=I, scope=S),
    "Jwks": obj(("keys",), keys={"type": "array", "items": obj(
        ("kty", "crv", "x", "kid"), kty=S, crv=S, x=S, kid=S, alg=S, use=S)}),
    "KeyPage": page_of(obj(("kid",), kid=S, active=B)),
    "KeysRotated": obj(("active", "items"), active=S,
                       items={"type": "array", "items": {"type": "object"}}),
    "Revocation": {"oneOf": [obj(("token",), token=S),
                             obj(("jti", "client_id"), jti=S, client_id=S)]},
    "Revoked": obj(("revoked", "client_id"), revoked=S, client_id=S),
    "AuditPage": page_of({"type": "object"}),
    "AuditVerify": obj(("records", "ok"), records=I, head={}, ok=B,
                       broken_seq={"type": ["integer", "null"]}),
    "Status": obj(("status",), status=S, mode=S, error=S),
}

HEADERS = {
    "ETag": {"description": "entity tag", "schema": S},
    "Location": {"description": "where the new resource is", "schema": S},
    "Content-Range": {"description": "bytes first-last/size", "schema": S},
    "Retry-After": {"description": "seconds", "schema": I},
}

FILE_ID = path_param("file_id", "a file's id, as returned by the upload")
CLIENT_ID = path_param("client_id", "an account's client id")
UPLOAD_ID = path_param("upload_id", "an upload session's id, as returned when it was made")
PROBLEM_ONLY = ("default",)


def _files() -> dict:
    tag, read, write = "files", (R.USER, R.FILES_READ), (R.USER, R.FILES_WRITE)
    record = ok("The file's record", ref("FileRecord"), headers=("ETag",))
    return {
        "/api/v1/files": {
            "post": op("Upload a file", tag, write, {
                "201": ok("Stored (durable when answered)", ref("FileRecord"),
                          headers=("ETag", "Location"))},
                request=body(ref("Upload"), "multipart/form-data"), op_id="uploadFile",
                params=(q("ack", "in a cluster: local, quorum or all (default: the "
                                 "replication.ack setting); the answer lists the nodes "
                                 "holding the file in replicas",
                          {"enum": ["local", "quorum", "all"]}),),
                errors=(400, 409, 413, 422, 503, 507)),
            "get": op("List files", tag, read, {"200": ok("A page", ref("FilePage"))},
                      params=(limit(100), CURSOR, ORDER), errors=(400, 409),
                      op_id="listFiles"),
        },
        "/api/v1/uploads": {"post": op(
            "Start a resumable upload session for one file (its fields checked now)", tag,
            write, {"201": ok("The session", ref("UploadSession"), headers=("Location",))},
            request=body(ref("UploadSessionCreate")), errors=(400, 409, 413, 422, 503),
            op_id="createUploadSession")},
        "/api/v1/uploads/{upload_id}": {
            "parameters": [UPLOAD_ID],
            "get": op("A session's state: resume from received", tag, write,
                      {"200": ok("The session", ref("UploadSession"))}, errors=(404,),
                      op_id="getUploadSession"),
            "put": op("Append bytes at an offset (the received count); a transfer cut short "
                      "keeps what reached the disk", tag, write,
                      {"200": ok("The session", ref("UploadSession"))},
                      params=(q("offset", "where these bytes start: the received count",
                                {"type": "integer", "minimum": 0}),),
                      request=body({"type": "string", "format": "binary"},
                                   "application/octet-stream"),
                      errors=(400, 404, 409, 413, 503, 507), op_id="appendUploadSession"),
            "delete": op("Abort the session (its bytes are removed)", tag, write,
                         {"204": ok("Aborted")}, errors=(404,), op_id="abortUploadSession")},
        "/api/v1/uploads/{upload_id}/complete": {
            "parameters": [UPLOAD_ID],
            "post": op("Make the file of every received byte", tag, write, {
                "201": ok("Stored (durable when answered)", ref("FileRecord"),
                          headers=("ETag", "Location"))},
                params=(q("ack", "as for an upload", {"enum": ["local", "quorum", "all"]}),),
                errors=(400, 404, 409, 422, 503, 507), op_id="completeUploadSession")},
        "/api/v1/changes": {"get": op(
            "File events in commit order after a sequence (long-poll, or Server-Sent Events "
            "with Accept: text/event-stream)", tag, read,
            {"200": ok("Events", ref("ChangePage"))},
            params=(q("after", "WAL sequence to start after (or the Last-Event-ID header)",
                      {"type": "integer", "minimum": 0}),
                    limit(100), q("wait", "seconds to wait for an event, 0-60",
                                  {"type": "integer", "minimum": 0, "maximum": 60})),
            errors=(400,), op_id="changes")},
        "/api/v1/files/{file_id}": {
            "parameters": [FILE_ID],
            "get": op("A file's record", tag, read, {
                "200": record, "304": ok("Not modified (If-None-Match)", headers=("ETag",))},
                params=(h("If-None-Match", "the record's ETag"),), errors=(404, 409),
                op_id="getFile"),
            "patch": op("Change description / custom attributes (JSON merge patch)", tag,
                        write, {"200": record},
                        params=(h("If-Match", 'the record\'s ETag, such as "v3"'),),
                        request=body(ref("MergePatch"), "application/merge-patch+json"),
                        errors=(400, 404, 409, 412, 413, 422, 503), op_id="patchFile",
                        description="application/json is accepted as well."),
            "delete": op("Delete a file", tag, (R.OPERATOR, R.FILES_WRITE),
                         {"204": ok("Deleted")}, errors=(404, 409, 503), op_id="deleteFile"),
        },
        "/api/v1/files/{file_id}/download": {
            "parameters": [FILE_ID, h("Range", "one range: bytes=a-b, a- or -n"),
                           h("If-Range", "the content's ETag"),
                           h("If-None-Match", "content ETags, or *"),
                           h("If-Match", "content ETags, or *")],
            **{method: op(summary, tag, read, {
                "200": ok("The content", {"type": "string",
                                          "contentMediaType": "application/octet-stream"},
                          "application/octet-stream", headers=("ETag",)),
                "206": ok("The requested range", {"type": "string"},
                          "application/octet-stream", headers=("ETag", "Content-Range")),
                "304": ok("Not modified", headers=("ETag",))},
                errors=(404, 409, 412, 416), op_id=op_id)
               for method, summary, op_id in (("get", "Download the content", "download"),
                                              ("head", "The download's headers only",
                                               "downloadHead"))},
        },
        "/api/v1/files/{file_id}/fixity": {"get": op(
            "What can be proven about a file: digests, signature, last check", tag, read,
            {"200": ok("The fixity report", ref("Fixity"))}, params=(FILE_ID,),
            errors=(404, 409), op_id="getFixity")},
        "/api/v1/search": {"get": op(
            "Full-text search with filters", "search", read,
            {"200": ok("A page of hits", ref("SearchPage"))}, op_id="search",
            description="Also `attr.<key>=<value>`: exact match on a custom attribute "
                        "(key: letters, digits, _ or -, at most 64). Any other parameter "
                        "is refused (400 invalid_parameter).",
            params=(q("q", "query in Tantivy syntax"),
                    q("created_from", "ISO 8601, inclusive", TIME),
                    q("created_to", "ISO 8601, exclusive", TIME),
                    q("content_type", "exact media type"),
                    q("created_by", "creator's client id"),
                    q("size_min", "bytes", {"type": "integer", "minimum": 0}),
                    q("size_max", "bytes", {"type": "integer", "minimum": 0}),
                    q("scope", "local (default) or cluster: every live member asked, hits "
                      "merged by file id, one page", {"enum": ["local", "cluster"]}),
                    q("sort", "relevance (default with q) or created_at",
                      {"enum": ["relevance", "created_at"]}),
                    ORDER, limit(20), CURSOR),
            errors=(400, 409))},
    }


def _element() -> dict:
    tag = "element"
    job = ok("The job", ref("Job"))
    job_id = path_param("job_id", "as in the Location of the start")
    return {
        "/api/v1/element": {"get": op(
            "Mode, capacity and counters", tag, (R.USER, R.STORAGE_READ),
            {"200": ok("This element", ref("Element"))}, op_id="getElement")},
        "/api/v1/element/mode": {"put": op(
            "Change the mode (rw → ro → ar; ro → rw with confirm)", tag,
            (R.ADMIN, R.ADMIN_WRITE), {"200": ok("The element after", ref("Element"))},
            request=body(ref("ModeChange")), errors=(400, 409, 413, 422), op_id="putMode")},
        "/api/v1/element/{kind}": {"post": op(
            "Start a background job", "jobs", (R.OPERATOR, R.STORAGE_WRITE),
            {"202": ok("Queued", ref("Job"), headers=("Location",))},
            params=(path_param("kind", "gc, rebuild, reindex, verify, scrub or export"),),
            request=body(ref("JobParams"), required=False), op_id="startJob",
            errors=(400, 404, 409, 413, 422),
            description="verify takes deep; scrub takes rate_mb_per_s and concurrency; "
                        "export takes name (required), query or file_ids, and "
                        "organization; the others take nothing.")},
        "/api/v1/jobs": {"get": op(
            "Background jobs, newest first", "jobs", (R.OPERATOR, R.STORAGE_READ),
            {"200": ok("Jobs", ref("JobPage"))}, errors=(400,), op_id="listJobs",
            params=(q("kind", "one kind only"),
                    q("state", "a state, or active (queued, running) or finished"),
                    limit(100)))},
        "/api/v1/jobs/{job_id}": {
            "parameters": [job_id],
            "get": op("A background job", "jobs", (R.OPERATOR, R.STORAGE_READ), {"200": job},
                      errors=(404,), op_id="getJob"),
            "delete": op("Cancel a queued or running job", "jobs",
                         (R.OPERATOR, R.STORAGE_WRITE), {"200": job}, errors=(404, 409),
                         op_id="cancelJob")},
    }


def _cluster() -> dict:
    tag, write = "cluster", (R.ADMIN, R.ADMIN_WRITE)
    node = path_param("node_id", "n- and 16 hex digits, as in GET /api/v1/cluster")
    envelope = body({"type": "string", "contentMediaType": "application/msgpack"},
                    "application/msgpack")
    return {
        "/api/v1/cluster": {"get": op(
            "Members, their states and incarnations, the document each holds, join "
            "requests", tag, (R.USER, R.STORAGE_READ), {"200": ok("The cluster", ref("Cluster"))},
            op_id="getCluster")},
        "/api/v1/cluster/members/{node_id}": {
            "parameters": [node],
            "put": op("Put a node that asked to join on the roster (admin node)", tag, write,
                      {"200": ok("The cluster after", ref("Cluster"))},
                      errors=(404, 421, 422), op_id="admitMember"),
            "delete": op("Take a node off the roster (admin node)", tag, write,
                         {"200": ok("The cluster after", ref("Cluster"))},
                         errors=(404, 409, 421, 422), op_id="removeMember")},
        "/api/v1/cluster/members/{node_id}/mode": {
            "parameters": [node],
            "put": op("Set a member's mode; it applies and records it (admin node)", tag,
                      write, {"200": ok("The cluster after", ref("Cluster"))},
                      request=body(ref("ModeChange")), errors=(400, 404, 413, 421, 422),
                      op_id="setMemberMode")},
        "/cluster/v1/swim": {"post": op(
            "One membership message between daemons (a signed envelope)", tag, None,
            {"204": ok("Taken")}, request=envelope, errors=(400, 401, 403, 404, 409, 413, 503),
            op_id="swimMessage")},
        "/cluster/v1/objects/{file_id}": {
            "parameters": [path_param("file_id", "the file")],
            "put": op("A replica of a file another member stored (signed header)", tag, None,
                      {"201": ok("Durable here", {"type": "object"})},
                      request=body({"type": "string", "format": "binary"},
                                   "application/octet-stream"),
                      errors=(400, 401, 403, 404, 409, 410, 413, 422, 503, 507),
                      op_id="putReplica"),
            "get": op("A file's bytes and attr, for a member (signed header)", tag, None,
                      {"200": ok("The bytes", {"type": "string", "format": "binary"},
                                 "application/octet-stream")},
                      errors=(400, 401, 403, 404, 409, 503), op_id="getReplica")},
        "/cluster/v1/changes": {"post": op(
            "This node's WAL records after a sequence, long-polled (signed envelope)", tag,
            None, {"200": ok("Records", {"type": "object"}, "application/msgpack")},
            request=envelope, errors=(400, 401, 403, 404, 409, 413, 422, 503),
            op_id="changeFeed")},
        "/cluster/v1/bundle": {"post": op(
            "Many files' attrs and bytes in one answer, for a member that lacks them "
            "(signed envelope naming up to 256 file ids)", tag, None,
            {"200": ok("A signed manifest, then each file's bytes",
                       {"type": "string", "format": "binary"},
                       "application/x-artstore-bundle")},
            request=envelope, errors=(400, 401, 403, 404, 409, 413, 503),
            op_id="fetchBundle")},
        "/cluster/v1/have": {"post": op(
            "Which of the named files this node lacks (signed envelope; anti-entropy)", tag,
            None, {"200": ok("The missing ones", {"type": "object"}, "application/msgpack")},
            request=envelope, errors=(400, 401, 403, 404, 409, 413, 503), op_id="have")},
        "/cluster/v1/digest": {"post": op(
            "Anti-entropy digests of the files this node and the asking member both own "
            "(signed envelope)", tag, None,
            {"200": ok("Digests, or a listing of buckets", {"type": "object"},
                       "application/msgpack")},
            request=envelope, errors=(400, 401, 403, 404, 409, 413, 503), op_id="digest")},
        "/api/v1/cluster/repair": {"post": op(
            "Start an anti-entropy pass now (all files held here, or file_ids first)", tag,
            (R.OPERATOR, R.STORAGE_WRITE), {"202": ok("Queued", {"type": "object"})},
            request=body({"type": "object", "properties": {"file_ids": STRINGS}},
                         required=False), errors=(400, 404, 413, 422),
            op_id="repairNow")},
        "/cluster/v1/join": {"post": op(
            "A node asks to join (a self-signed envelope); answers the cluster document",
            tag, None, {"200": ok("The document this node holds", S, "application/msgpack")},
            request=envelope, errors=(400, 401, 404, 409, 413, 422, 503),
            op_id="joinRequest")},
    }


def _accounts() -> dict:
    tag, read, write = "accounts", (R.ADMIN, R.ADMIN_READ), (R.ADMIN, R.ADMIN_WRITE)
    account = ok("The account", ref("Account"))
    with_secret = ok("The account and its new secret", ref("AccountWithSecret"))
    errors = (400, 404, 409, 413, 422)
    return {
        "/api/v1/accounts": {
            "post": op("Create a service account", tag, write,
                       {"201": dict(with_secret, headers={
                           "Location": {"$ref": "#/components/headers/Location"}})},
                       request=body(ref("AccountCreate")), errors=errors,
                       op_id="createAccount"),
            "get": op("List accounts", tag, read, {"200": ok("All", ref("AccountPage"))},
                      params=(q("include_deleted", "1, true or yes to include them"),),
                      op_id="listAccounts"),
        },
        "/api/v1/accounts/{client_id}": {
            "parameters": [CLIENT_ID],
            "get": op("An account", tag, read, {"200": account}, errors=(404,),
                      op_id="getAccount"),
            "patch": op("Suspend/reactivate, or change role and scopes", tag, write,
                        {"200": account}, request=body(ref("AccountUpdate")), errors=errors,
                        op_id="updateAccount"),
            "delete": op("Delete (softly) an account", tag, write, {"200": account},
                         errors=(404, 409), op_id="deleteAccount"),
        },
        "/api/v1/accounts/{client_id}/rotate-secret": {
            "parameters": [CLIENT_ID],
            "post": op("A new secret (the old one valid for grace_seconds)", tag, write,
                       {"200": with_secret}, request=body(ref("Grace"), required=False),
                       errors=errors, op_id="rotateSecret")},
        "/api/v1/accounts/{client_id}/revoke-tokens": {
            "parameters": [CLIENT_ID],
            "post": op("Revoke every token of the account", tag, write, {"200": account},
                       errors=(404, 409), op_id="revokeTokens")},
        "/api/v1/accounts/{client_id}/s3-keys": {
            "parameters": [CLIENT_ID],
            "post": op("A new S3 access key of the account (its secret shown once)", tag,
                       write, {"201": ok("The key and its secret", ref("S3KeyWithSecret"))},
                       errors=(404, 409), op_id="createS3Key"),
            "get": op("The account's S3 access keys (never a secret)", tag, read,
                      {"200": ok("Keys", ref("S3KeyPage"))}, errors=(404,),
                      op_id="listS3Keys")},
        "/api/v1/accounts/{client_id}/s3-keys/{access_key_id}": {
            "parameters": [CLIENT_ID, {"name": "access_key_id", "in": "path",
                                       "required": True, "schema": S}],
            "delete": op("Revoke an S3 access key for good", tag, write,
                         {"200": ok("The revoked key", ref("S3Key"))}, errors=(404,),
                         op_id="revokeS3Key")},
    }


def _auth_audit_health() -> dict:
    tag = "auth"
    status = ok("Status", ref("Status"))
    probe = {"200": status, "503": status}
    return {
        "/api/v1/auth/token": {"post": op(
            "Issue an access token (OAuth 2.0 client credentials)", tag, None,
            {"200": ok("A bearer token", ref("Token"))},
            request=body(ref("TokenRequest"), "application/x-www-form-urlencoded"),
            errors=(400, 401, 429, 503), op_id="issueToken",
            description="Credentials in the form, or in Authorization: Basic (RFC 6749 "
                        "§2.3.1), not both. Errors also carry OAuth's error members.")},
        "/api/v1/auth/jwks": {"get": op(
            "Public keys that verify tokens", tag, None, {"200": ok("JWKS", ref("Jwks"))},
            errors=(503,), op_id="jwks")},
        "/api/v1/auth/keys": {"get": op(
            "Signing keys and their dates", tag, (R.ADMIN, R.ADMIN_READ),
            {"200": ok("Keys", ref("KeyPage"))}, op_id="listKeys")},
        "/api/v1/auth/keys/rotate": {"post": op(
            "A new signing key", tag, (R.ADMIN, R.ADMIN_WRITE),
            {"200": ok("Keys after", ref("KeysRotated"))},
            request=body(ref("Grace"), required=False), errors=(400, 413, 422),
            op_id="rotateKeys")},
        "/api/v1/auth/revoke": {"post": op(
            "Revoke one token", tag, (R.ADMIN, R.ADMIN_WRITE),
            {"200": ok("Revoked", ref("Revoked"))}, request=body(ref("Revocation")),
            errors=(400, 401, 413, 422), op_id="revokeToken")},
        "/api/v1/audit": {"get": op(
            "The audit trail", "audit", (R.ADMIN, R.ADMIN_READ),
            {"200": ok("A page of events", ref("AuditPage"))}, op_id="audit",
            params=(q("actor", "client id or name"),
                    q("kind", "exact, or a prefix ending in a dot (file.)"),
                    q("file_id", "events of one file"), q("from", "ISO 8601", TIME),
                    q("to", "ISO 8601", TIME), ORDER, limit(100), CURSOR),
            errors=(400,))},
        "/api/v1/audit/verify": {"get": op(
            "Check the audit trail's hash chain", "audit", (R.ADMIN, R.ADMIN_READ),
            {"200": ok("The verdict", ref("AuditVerify"))}, op_id="auditVerify")},
        "/health/live": {"get": op("The process answers", "health", None,
                                   {"200": status}, op_id="live")},
        "/health/startup": {"get": op("Recovery has finished", "health", None, probe,
                                      op_id="startup")},
        "/health/ready": {"get": op("Serving", "health", None, probe, op_id="ready")},
        "/metrics": {"get": op("Prometheus metrics", "health", None, {
            "200": ok("Text exposition format", S, "text/plain")}, op_id="metrics")},
        PATH: {"get": op("This document", "health", None, {
            "200": ok("OpenAPI 3.1", {"type": "object"})}, op_id="openapi")},
    }


def build_document() -> dict:
    problems = {str(s): ok(why, ref("Problem"), PROBLEM) for s, why in WHY.items()}
    problems["429"]["headers"] = problems["503"]["headers"] = {
        "Retry-After": {"$ref": "#/components/headers/Retry-After"}}
    problems["416"]["headers"] = {"Content-Range": {"$ref": "#/components/headers/"
                                                            "Content-Range"}}
    problems["default"] = ok("Any other error, as a problem document (RFC 9457)",
                             ref("Problem"), PROBLEM)
    return {
        "openapi": "3.1.0",
        "info": {"title": "ArtStore", "version": __version__,
                 "description": "An archival storage element. Errors are "
                                "application/problem+json with type, title, status, detail "
                                "and a stable code."},
        "security": [{"bearer": []}],
        "tags": [{"name": t} for t in ("files", "search", "element", "jobs", "accounts",
                                       "auth", "audit", "cluster", "health")],
        "paths": {**_files(), **_element(), **_accounts(), **_cluster(),
                  **_auth_audit_health()},
        "components": {
            "schemas": SCHEMAS,
            "headers": HEADERS,
            "responses": problems,
            "securitySchemes": {"bearer": {
                "type": "oauth2",
                "description": "A Bearer JWT (EdDSA) from the token endpoint, sent as "
                               "Authorization: Bearer <token>.",
                "flows": {"clientCredentials": {
                    "tokenUrl": "/api/v1/auth/token",
                    "scopes": {s: f"{s.split(':')[1]} access to {s.split(':')[0]}"
                               for s in R.SCOPES}}}}},
        },
    }


DOCUMENT = build_document()
_BODY = json.dumps(DOCUMENT, ensure_ascii=False, indent=1).encode("utf-8")


@public
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=_BODY, content_type="application/json", charset="utf-8",
                        headers={"Cache-Control": "max-age=300"})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get(PATH, openapi)
