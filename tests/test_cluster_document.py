"""The signed cluster document (replication.document) and the admin's Authority: what a
node accepts, what it refuses, and how each change makes a new signed version."""

import pytest
from nacl.signing import SigningKey

from artstored.cluster.authority import Authority
from artstored.engine.errors import NotFound
from artstored.engine.node import node_id_of
from artstored.replication import document as D


def node():
    key = SigningKey.generate()
    return node_id_of(bytes(key.verify_key)), key


def bootstrap(now=100.0):
    admin_id, admin_key = node()
    auth = Authority(admin_id, admin_key, None)
    first = auth.bootstrap(now, address="10.0.0.1:8470", name="admin", token_issuer="iss",
                           replication_factor=2)
    auth.adopt(first)
    return auth, first


def test_a_first_document_is_accepted_when_its_signer_is_its_admin():
    auth, first = bootstrap()
    doc = D.accept(None, first.blob)
    assert doc.version == 1 and doc.admins() == [auth.node_id]
    assert doc.roster[auth.node_id]["address"] == "10.0.0.1:8470"


def test_newer_documents_need_the_held_documents_admin():
    auth, first = bootstrap()
    joiner_id, joiner_key = node()
    auth.note_join_request(101.0, joiner_id, bytes(joiner_key.verify_key), "10.0.0.2:8470", "b")
    second = auth.admit(102.0, joiner_id)
    assert second.version == 2 and joiner_id in second.roster
    assert D.accept(first, second.blob).version == 2
    # The same body signed by the new member (on the roster, but not an admin): forged.
    forged = D.sign(D.evolve(second, 103.0), joiner_id, joiner_key)
    with pytest.raises(D.ForgedDocument):
        D.accept(second, forged.blob)
    # A stranger's self-consistent document claiming to be admin of itself: forged too.
    other_id, other_key = node()
    body = dict(D.evolve(second, 104.0), roster={other_id: {
        "key": bytes(other_key.verify_key), "address": "1.2.3.4:1", "role": "admin",
        "name": "x", "joined_at": 1.0}})
    with pytest.raises(D.ForgedDocument):
        D.accept(second, D.sign(body, other_id, other_key).blob)


def test_an_old_or_equal_version_is_stale():
    auth, first = bootstrap()
    second = auth.set_mode(101.0, auth.node_id, "ro", by_id="cl_1", by_name="alice")
    with pytest.raises(D.StaleDocument):
        D.accept(second, first.blob)
    with pytest.raises(D.StaleDocument):
        D.accept(second, second.blob)


def test_a_tampered_document_does_not_verify():
    auth, first = bootstrap()
    second = auth.set_mode(101.0, auth.node_id, "ro", by_id="cl_1", by_name="alice")
    tampered = second.blob.replace(b"ro", b"ar")
    assert tampered != second.blob
    with pytest.raises((D.ForgedDocument, D.MalformedDocument)):
        D.accept(first, tampered)


@pytest.mark.parametrize("blob", [b"", b"\x00" * 10, b"\x94\x01\xc4\x00\xa1x\xc4\x00", 17,
                                  b"\x91" * 100])
def test_garbage_is_malformed(blob):
    with pytest.raises(D.MalformedDocument):
        D.accept(None, blob)


def test_pinned_admin_key_decides_the_first_document():
    auth, first = bootstrap()
    assert D.accept(None, first.blob,
                    pinned={auth.node_id: bytes(auth.key.verify_key)}).version == 1
    other_id, other_key = node()
    with pytest.raises(D.ForgedDocument):
        D.accept(None, first.blob, pinned={other_id: bytes(other_key.verify_key)})


def test_admit_needs_a_request_and_is_idempotent():
    auth, first = bootstrap()
    stranger_id, _ = node()
    with pytest.raises(NotFound):
        auth.admit(101.0, stranger_id)
    joiner_id, joiner_key = node()
    auth.note_join_request(101.0, joiner_id, bytes(joiner_key.verify_key), "h:1", "b")
    doc = auth.admit(102.0, joiner_id)
    auth.adopt(doc)
    assert auth.admit(103.0, joiner_id) is None
    assert auth.joins == {}


def test_a_join_request_must_name_its_own_key():
    auth, _ = bootstrap()
    joiner_id, _ = node()
    _, other_key = node()
    with pytest.raises(Exception) as info:
        auth.note_join_request(1.0, joiner_id, bytes(other_key.verify_key), "h:1", "b")
    assert info.value.code == "join_request_invalid"
    assert auth.joins == {}


def test_remove_drops_the_member_and_its_mode_and_never_the_authority():
    auth, _ = bootstrap()
    joiner_id, joiner_key = node()
    auth.note_join_request(1.0, joiner_id, bytes(joiner_key.verify_key), "h:1", "b")
    auth.adopt(auth.admit(2.0, joiner_id))
    auth.adopt(auth.set_mode(3.0, joiner_id, "ro", by_id="cl_1", by_name="alice"))
    removed = auth.remove(4.0, joiner_id)
    assert joiner_id not in removed.roster and joiner_id not in removed.modes
    auth.adopt(removed)
    assert auth.remove(5.0, joiner_id) is None
    with pytest.raises(Exception) as info:
        auth.remove(6.0, auth.node_id)
    assert info.value.code == "cannot_remove_authority"


def test_refresh_makes_a_version_only_when_accounts_or_keys_change():
    auth, first = bootstrap()
    keys = {"kid1": {"x": b"k" * 32, "verify_until": None}}
    accounts = {"cl_1": {"status": "active", "generation": 1, "role": "user"}}
    doc = auth.refresh(200.0, token_keys=keys, accounts=accounts, revoked={})
    assert doc.version == 2
    auth.adopt(doc)
    assert auth.refresh(201.0, token_keys=keys, accounts=accounts, revoked={}) is None
    suspended = {"cl_1": {"status": "suspended", "generation": 2, "role": "user"}}
    doc3 = auth.refresh(202.0, token_keys=keys, accounts=suspended,
                        revoked={"jti-old": 100, "jti-live": 999})
    assert doc3.accounts["cl_1"]["status"] == "suspended"
    assert doc3.revoked == {"jti-live": 999}    # an expired revocation is dropped
    assert D.accept(doc, doc3.blob).version == 3
