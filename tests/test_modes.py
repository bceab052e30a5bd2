"""The mode table of DESIGN §4, its transitions, and its persistence across restarts."""

import pytest

H = {"Content-Type": "application/merge-patch+json"}


def set_mode(api, mode, confirm=None):
    body = {"mode": mode}
    if confirm is not None:
        body["confirm"] = confirm
    return api.request("PUT", "/api/v1/element/mode", json_body=body)


def attempt_all(api, file_id):
    """Status of each operation of the table, on an existing file."""
    return {
        "upload": api.upload(b"new", "new.txt").status,
        "read_metadata": api.get(f"/api/v1/files/{file_id}").status,
        "list": api.get("/api/v1/files").status,
        "read_content": api.download(file_id).status,
        "update_metadata": api.request("PATCH", f"/api/v1/files/{file_id}",
                                       json_body={"description": "x"}, headers=H).status,
        "delete": api.request("DELETE", f"/api/v1/files/{file_id}").status,
    }


EXPECTED = {
    "rw": {"upload": 201, "read_metadata": 200, "list": 200, "read_content": 200,
           "update_metadata": 200, "delete": 409},
    "ro": {"upload": 409, "read_metadata": 200, "list": 200, "read_content": 200,
           "update_metadata": 409, "delete": 409},
    "ar": {"upload": 409, "read_metadata": 200, "list": 200, "read_content": 409,
           "update_metadata": 409, "delete": 409},
}


def test_rw_ro_ar_table_and_persistence(daemon):
    api = daemon.api()
    fid = api.upload_ok(b"keep", "keep.txt")["file_id"]
    for mode in ("rw", "ro", "ar"):
        if mode != "rw":
            r = set_mode(api, mode)
            assert r.status == 200 and r.json()["mode"] == mode
        assert attempt_all(api, fid) == EXPECTED[mode], mode
        refused = api.upload(b"n", "n.txt")
        if refused.status == 409:
            problem = refused.problem
            assert problem["code"] == "mode_not_allowed" and problem["mode"] == mode
        # Survives a restart, with who and when.
        daemon.restart()
        api = daemon.api()
        element = api.get("/api/v1/element").json()
        assert element["mode"] == mode
        if mode != "rw":
            assert element["mode_changed_by"] == daemon.admin_credentials()["client_id"]
            assert element["mode_changed_at"].endswith("Z")
    archived = api.download(fid)
    assert "archived" in archived.problem["detail"]


def test_refused_operations_change_nothing(daemon):
    api = daemon.api()
    fid = api.upload_ok(b"v", "v.txt", fields={"description": "before"})["file_id"]
    assert set_mode(api, "ro").status == 200
    before = api.get("/api/v1/files").json()
    assert api.request("PATCH", f"/api/v1/files/{fid}", json_body={"description": "after"},
                       headers=H).status == 409
    assert api.upload(b"w", "w.txt").status == 409
    assert api.get("/api/v1/files").json() == before


def test_transitions(daemon):
    api = daemon.api()
    # rw -> ar skips ro: refused
    r = set_mode(api, "ar")
    assert r.status == 409 and r.problem["code"] == "transition_not_allowed"
    # rw -> edit: never
    r = set_mode(api, "edit")
    assert r.status == 409 and r.problem["code"] == "transition_not_allowed"
    assert set_mode(api, "ro").status == 200
    # ro -> rw needs an explicit confirmation
    r = set_mode(api, "rw")
    assert r.status == 409 and r.problem["code"] == "confirmation_required"
    r = set_mode(api, "rw", confirm=True)
    assert r.status == 200 and r.json()["mode"] == "rw"
    assert set_mode(api, "ro").status == 200
    assert set_mode(api, "ar").status == 200
    # ar is final
    for target in ("ro", "rw", "edit"):
        r = set_mode(api, target, confirm=True)
        assert r.status == 409 and r.problem["code"] == "transition_not_allowed"
    # same mode: a no-op
    assert set_mode(api, "ar").status == 200
    # nonsense
    r = set_mode(api, "banana")
    assert r.status == 422 and r.problem["code"] == "invalid_mode"
    r = api.request("PUT", "/api/v1/element/mode", body=b"[", headers={
        "Content-Type": "application/json"})
    assert r.status == 400 and r.problem["code"] == "invalid_json"


def test_edit_element(make_daemon):
    d = make_daemon("edit", config={"element": {"initial_mode": "edit"}})
    api = d.api()
    attr = api.upload_ok(b"draft", "draft.txt")
    assert attr["retention_policy"] == "temporary"
    assert attr["expires_at"] is not None
    r = api.upload(b"p", "p.txt", fields={"retention_policy": "permanent"})
    assert r.status == 409 and r.problem["code"] == "mode_not_allowed"
    assert api.request("PATCH", f"/api/v1/files/{attr['file_id']}",
                       json_body={"description": "x"}, headers=H).status == 200
    assert api.request("DELETE", f"/api/v1/files/{attr['file_id']}").status == 204
    assert api.get(f"/api/v1/files/{attr['file_id']}").status == 404
    # edit is for life
    for target in ("rw", "ro", "ar"):
        r = set_mode(api, target, confirm=True)
        assert r.status == 409 and r.problem["code"] == "transition_not_allowed"
    d.restart()
    assert d.api().get("/api/v1/element").json()["mode"] == "edit"


def test_delete_needs_operator_role(make_daemon):
    d = make_daemon("edit2", config={"element": {"initial_mode": "edit"}})
    cid, secret = d.create_account("bot", "user")
    user = d.api(d.token_for(cid, secret))
    fid = user.upload_ok(b"x", "x.txt")["file_id"]
    r = user.request("DELETE", f"/api/v1/files/{fid}")
    assert r.status == 403 and r.problem["code"] == "insufficient_scope"
    assert d.api().request("DELETE", f"/api/v1/files/{fid}").status == 204
    assert d.api().request("DELETE", f"/api/v1/files/{fid}").status == 404


@pytest.mark.parametrize("ttl", [1, 30, 365])
def test_temporary_retention_sets_expiry(shared_daemon, ttl):
    from datetime import datetime, timedelta

    attr = shared_daemon.api().upload_ok(
        b"t", "t.txt", fields={"retention_policy": "temporary", "ttl_days": str(ttl)})
    created = datetime.fromisoformat(attr["created_at"].replace("Z", "+00:00"))
    expires = datetime.fromisoformat(attr["expires_at"].replace("Z", "+00:00"))
    assert expires - created == timedelta(days=ttl)
    assert attr["retention_policy"] == "temporary"


def test_permanent_is_the_rw_default(shared_daemon):
    attr = shared_daemon.api().upload_ok(b"p", "p.txt")
    assert attr["retention_policy"] == "permanent" and attr["expires_at"] is None
