"""The notification feed, ``GET /api/v1/changes``, against a real daemon: file events in
commit order, resumable by sequence number, as JSON long-poll and as Server-Sent Events."""

from __future__ import annotations

import json
import threading

from harness import Api


def _patch(api: Api, file_id: str, description: str) -> None:
    r = api.request("PATCH", f"/api/v1/files/{file_id}", json_body={"description": description},
                    headers={"Content-Type": "application/merge-patch+json"})
    assert r.status == 200, r.body


def test_events_in_order_and_resumable(daemon):
    api = daemon.api()
    start = api.get("/api/v1/changes?wait=0").json()["next_after"]
    a = api.upload_ok(b"first", "a.txt")
    b = api.upload_ok(b"second", "b.txt")
    _patch(api, a["file_id"], "described")
    page = api.get(f"/api/v1/changes?after={start}").json()
    kinds = [(i["kind"], i["file_id"]) for i in page["items"]]
    assert kinds == [("file.create", a["file_id"]), ("file.create", b["file_id"]),
                     ("file.update", a["file_id"])]
    seqs = [i["seq"] for i in page["items"]]
    assert seqs == sorted(seqs) and page["next_after"] == seqs[-1]
    assert page["items"][2]["attr"]["description"] == "described"
    assert page["items"][0]["actor"]["id"] == daemon.admin_credentials()["client_id"]
    # Resuming from any event gives exactly what came after it.
    again = api.get(f"/api/v1/changes?after={seqs[0]}&limit=1").json()
    assert [i["seq"] for i in again["items"]] == [seqs[1]]
    assert api.get(f"/api/v1/changes?after={seqs[-1]}").json()["items"] == []


def test_a_long_poll_answers_with_the_next_event(daemon):
    api = daemon.api()
    after = api.get("/api/v1/changes").json()["next_after"]
    answer: dict = {}

    def poll():
        answer["page"] = api.get(f"/api/v1/changes?after={after}&wait=30").json()

    t = threading.Thread(target=poll)
    t.start()
    attr = api.upload_ok(b"wake up", "w.txt")
    t.join(60)
    assert not t.is_alive()
    assert [i["file_id"] for i in answer["page"]["items"]] == [attr["file_id"]]


def test_server_sent_events_resume_from_last_event_id(daemon):
    api = daemon.api()
    after = api.get("/api/v1/changes").json()["next_after"]
    uploaded = [api.upload_ok(f"sse {i}".encode(), f"s{i}.txt")["file_id"] for i in range(3)]
    events = _read_events(daemon, {"Last-Event-ID": str(after)}, 3)
    assert [e["data"]["file_id"] for e in events] == uploaded
    assert all(e["event"] == "file.create" for e in events)
    assert [int(e["id"]) for e in events] == [e["data"]["seq"] for e in events]
    resumed = _read_events(daemon, {"Last-Event-ID": events[0]["id"]}, 2)
    assert [e["data"]["file_id"] for e in resumed] == uploaded[1:]


def _read_events(daemon, headers: dict, count: int) -> list[dict]:
    conn = Api(daemon.port).connection(timeout=30)
    try:
        conn.request("GET", "/api/v1/changes", headers={
            "Accept": "text/event-stream", "Authorization": f"Bearer {daemon.admin_token()}",
            **headers})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"
        events, current = [], {}
        while len(events) < count:
            line = resp.fp.readline().decode().rstrip("\n")
            if line.startswith(":"):
                continue
            if not line:
                if current:
                    current["data"] = json.loads(current["data"])
                    events.append(current)
                current = {}
                continue
            name, _, value = line.partition(": ")
            current[name] = value
        return events
    finally:
        conn.close()


def test_bad_parameters_and_no_token(daemon):
    api = daemon.api()
    for query, code in (("after=abc", "invalid_after"), ("after=-1", "invalid_after"),
                        ("limit=0", "invalid_limit"), ("wait=999", "invalid_wait")):
        r = api.get(f"/api/v1/changes?{query}")
        assert r.status == 400 and r.problem["code"] == code, (query, r.body)
    assert Api(daemon.port).get("/api/v1/changes").status == 401
