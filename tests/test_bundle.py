"""The receiving side of a bundle (``artstored.cluster.bundle``): what a node accepts of
another's manifest before it reads a single byte of the files, since each file's size in
the manifest says where the next one starts. (The serving side, with real daemons, is in
``test_replication.py``.)"""

from __future__ import annotations

import hashlib

import pytest
from nacl.signing import SigningKey

from artstored.cluster.bundle import _checked
from artstored.engine import attrs as A
from artstored.engine.node import NodeIdentity, b64url, verify_signature
from artstored.replication.envelope import MalformedEnvelope

PEER = "n-00000000000000bb"


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    return NodeIdentity(str(tmp_path_factory.mktemp("origin")), name="origin")


def _attr(origin: NodeIdentity, file_id: str, content: bytes) -> dict:
    attr = {"file_id": file_id, "file_size": len(content),
            "checksum_sha256": hashlib.sha256(content).hexdigest(),
            "created_at": "2026-11-27T12:00:00.000000Z", "origin_node": origin.node_id}
    attr["signature"] = origin.sign(A.fixity_payload(attr))
    return attr


def _verifier(origin: NodeIdentity):
    public = bytes(origin.key.verify_key)
    return lambda payload, signature: verify_signature(public, payload, signature)


def test_a_manifest_in_order_is_taken_and_its_lists_are_kept_to_what_was_asked(origin):
    a, b = _attr(origin, "f-a", b"alpha"), _attr(origin, "f-b", b"bravo!")
    manifest = {"files": [a, b], "later": ["f-c", "f-zz", "f-a"], "gone": ["f-d", "f-yy"],
                "unavailable": []}
    files, later, gone = _checked(manifest, ["f-a", "f-b", "f-c", "f-d"], PEER,
                                  _verifier(origin))
    assert files == [a, b]
    assert later == ["f-c"] and gone == ["f-d"]   # nothing not asked for, nothing sent


@pytest.mark.parametrize("case", ["not asked", "twice", "no size", "negative size",
                                  "size changed", "unsigned", "signed something else",
                                  "another key", "not a list"])
def test_a_manifest_that_could_misplace_bytes_is_refused_whole(origin, case):
    a = _attr(origin, "f-a", b"alpha")
    files, lists = [a], {"later": [], "gone": [], "unavailable": []}
    if case == "not asked":
        files = [_attr(origin, "f-x", b"x")]
    elif case == "twice":
        files = [a, a]
    elif case == "no size":
        files = [{k: v for k, v in a.items() if k != "file_size"}]
    elif case == "negative size":
        files = [{**a, "file_size": -1}]
    elif case == "size changed":          # would shift where every later file starts
        files = [{**a, "file_size": a["file_size"] + 1}]
    elif case == "unsigned":
        files = [{k: v for k, v in a.items() if k != "signature"}]
    elif case == "signed something else":
        files = [{**a, "signature": origin.sign(b"another payload")}]
    elif case == "another key":
        key = SigningKey.generate()
        files = [{**a, "signature": {**a["signature"],
                                     "value": b64url(key.sign(A.fixity_payload(a)).signature)}}]
    elif case == "not a list":
        lists["gone"] = "f-a"
    with pytest.raises(MalformedEnvelope):
        _checked({"files": files, **lists}, ["f-a"], PEER, _verifier(origin))
