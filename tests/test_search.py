"""Search through a real daemon: freshness, languages, filters, sorts, cursors, crashes."""

import json
import os
import secrets
import shutil
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import Api, store_snapshot, wait_until

H = {"Content-Type": "application/merge-patch+json"}


def search(api: Api, **params) -> dict:
    r = api.get("/api/v1/search?" + urllib.parse.urlencode(params))
    assert r.status == 200, r.body[:400]
    return r.json()


def ids(doc: dict) -> list[str]:
    return [item["file_id"] for item in doc["items"]]


def wait_caught_up(api: Api) -> None:
    wait_until(lambda: api.get("/api/v1/element").json()["index_lag"]["records_behind"] == 0,
               30, "the index to catch up with the WAL")


@pytest.fixture(scope="module")
def corpus(shared_daemon):
    api = shared_daemon.api()
    cid, secret = shared_daemon.create_account("Мария", "user")
    maria = Api(shared_daemon.port, shared_daemon.token_for(cid, secret))
    files = {
        "report": api.upload_ok(b"a" * 100, "annual_report_2024.pdf", content_type="application/pdf",
                                fields={"description": "Годовые документы и invoices",
                                        "custom_attributes": {"department": "finance",
                                                              "year": 2024}}),
        "sales": maria.upload_ok(b"b" * 5000, "Отчёт о продажах.docx",
                                 fields={"description": "документ о продажах за ёлку",
                                         "custom_attributes": {"department": "sales"}}),
        "invoice": api.upload_ok(b"c" * 20000, "invoice-17.txt", content_type="text/plain",
                                 fields={"description": "Invoice for March deliveries",
                                         "custom_attributes": {"department": "Finance",
                                                               "vendor": "ООО Ромашка"}}),
    }
    wait_caught_up(api)
    return files, maria_id(cid)


def maria_id(cid):
    return cid


def test_russian_and_english_stemming(api, corpus):
    files, _ = corpus
    assert set(ids(search(api, q="документы"))) >= {files["report"]["file_id"],
                                                   files["sales"]["file_id"]}
    assert set(ids(search(api, q="документ"))) >= {files["report"]["file_id"],
                                                  files["sales"]["file_id"]}
    assert set(ids(search(api, q="invoices"))) >= {files["report"]["file_id"],
                                                   files["invoice"]["file_id"]}
    assert files["invoice"]["file_id"] in ids(search(api, q="invoice"))
    assert files["invoice"]["file_id"] in ids(search(api, q="delivery"))
    assert files["sales"]["file_id"] in ids(search(api, q="елка"))  # ё folds to е
    assert files["sales"]["file_id"] in ids(search(api, q="продажа"))


def test_filename_parts(api, corpus):
    files, _ = corpus
    report = files["report"]["file_id"]
    for q in ("2024", "report", "annual", "filename:annual_report_2024", "pdf"):
        assert report in ids(search(api, q=q)), q
    assert files["sales"]["file_id"] in ids(search(api, q="filename:отчёт"))


def test_custom_attributes(api, corpus):
    files, _ = corpus
    finance = {files["report"]["file_id"], files["invoice"]["file_id"]}
    assert set(ids(search(api, q="attr.department:finance"))) >= finance
    assert files["invoice"]["file_id"] in ids(search(api, q="attr.vendor:ромашка"))
    assert files["report"]["file_id"] in ids(search(api, q="attr.year:2024"))
    # Exact filters: case matters, numbers are numbers.
    exact = ids(search(api, **{"attr.department": "Finance"}))
    assert files["invoice"]["file_id"] in exact and files["report"]["file_id"] not in exact
    assert files["report"]["file_id"] in ids(search(api, **{"attr.year": "2024"}))
    assert files["report"]["file_id"] in ids(search(api, q="invoice AND attr.department:finance"))
    # AND NOT excludes (Tantivy alone would match nothing).
    not_sales = ids(search(api, q="документ AND NOT attr.department:sales"))
    assert files["report"]["file_id"] in not_sales and files["sales"]["file_id"] not in not_sales
    # A plain word finds attribute values too.
    assert files["invoice"]["file_id"] in ids(search(api, q="ромашка"))


def test_filters(api, corpus):
    files, maria = corpus
    report, sales, invoice = (files[k]["file_id"] for k in ("report", "sales", "invoice"))
    # The content_type filter narrows what the query finds, and nothing else: of the two
    # files the word finds, only the one of that type is left, and total_hits counts it.
    assert set(ids(search(api, q="invoices"))) == {report, invoice}
    pdf = search(api, q="invoices", content_type="application/pdf")
    assert ids(pdf) == [report] and pdf["total_hits"] == 1
    assert ids(search(api, q="invoices", content_type="text/plain")) == [invoice]
    assert ids(search(api, q="invoices", content_type="Application/PDF")) == [report]
    assert ids(search(api, q="invoices", content_type="application/msword")) == []
    assert ids(search(api, q="attr.department:finance", content_type="application/pdf")) \
        == [report]
    # An attribute's name is not a word of the file: only its values are searchable text.
    assert ids(search(api, q="department")) == []
    assert ids(search(api, q="department", content_type="application/pdf")) == []
    by_type = ids(search(api, content_type="text/plain", limit=1000))
    assert invoice in by_type and report not in by_type
    by_creator = ids(search(api, created_by=maria, limit=1000))
    assert by_creator == [sales]
    assert sales in ids(search(api, created_by="Мария", limit=1000))
    sized = ids(search(api, size_min=1000, size_max=10000, limit=1000))
    assert sales in sized and report not in sized and invoice not in sized
    created = files["sales"]["created_at"]
    after = ids(search(api, created_from=created, limit=1000))
    assert sales in after and invoice in after and report not in after
    before = ids(search(api, created_to=created, limit=1000))
    assert report in before and sales not in before
    combined = search(api, q="документ", created_from=created, **{"attr.department": "sales"})
    assert ids(combined) == [sales]


def test_sort_orders_and_snippets(api, corpus):
    files, _ = corpus
    desc = ids(search(api, q="документ OR invoice", sort="created_at", limit=1000))
    asc = ids(search(api, q="документ OR invoice", sort="created_at", order="asc", limit=1000))
    assert desc == list(reversed(asc))
    assert asc.index(files["report"]["file_id"]) < asc.index(files["sales"]["file_id"]) \
        < asc.index(files["invoice"]["file_id"])
    doc = search(api, q="invoices")
    scores = [i["score"] for i in doc["items"]]
    assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    hit = next(i for i in doc["items"] if i["file_id"] == files["report"]["file_id"])
    assert "<b>invoices</b>" in hit["snippets"]["description"]
    assert doc["total_hits"] >= 2


@pytest.mark.parametrize("params,code", [
    ({"q": "(invoice AND"}, "invalid_query"),
    ({"q": "size:[1 TO"}, "invalid_query"),
    ({"q": "department:finance"}, "unknown_field"),
    ({"q": "x", "limit": "100000"}, "invalid_limit"),
    ({"q": "x", "limit": "0"}, "invalid_limit"),
    ({"q": "x", "cursor": "garbage"}, "invalid_cursor"),
    ({"q": "x", "cursor": "rnotthere.20"}, "cursor_expired"),
    ({"q": "", "sort": "created_at", "cursor": "ka123"}, "invalid_cursor"),
    ({"q": "x", "sort": "size"}, "invalid_sort"),
    ({"q": "x", "created_from": "yesterday"}, "invalid_filter"),
    ({"q": "x", "size_min": "-5"}, "invalid_filter"),
    ({"q": "x", "attr.bad key": "v"}, "invalid_filter"),
    ({"q": "x", "colour": "red"}, "invalid_parameter"),
])
def test_bad_searches(api, params, code):
    r = api.get("/api/v1/search?" + urllib.parse.urlencode(params))
    assert r.status == 400, (params, r.body)
    problem = r.problem
    assert problem["code"] == code
    if code == "invalid_query":
        assert "position" in problem["detail"]


def test_freshness_within_a_second(make_daemon):
    d = make_daemon("fresh")
    api = d.api()
    latencies = []
    lock = threading.Lock()

    def one(i: int):
        word = "fresh" + secrets.token_hex(6)
        attr = api.upload_ok(b"x" * 1000, f"f{i}.txt", fields={"description": f"about {word}"})
        t201 = time.monotonic()
        while True:
            found = ids(search(api, q=word))
            if found == [attr["file_id"]]:
                with lock:
                    latencies.append(time.monotonic() - t201)
                return
            if time.monotonic() - t201 > 5:
                raise AssertionError(f"{word} not searchable after 5 s")
            time.sleep(0.01)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(200)))
    latencies.sort()
    print(f"\nsearchable after 201: p50 {latencies[100] * 1000:.0f} ms, "
          f"worst {latencies[-1] * 1000:.0f} ms over {len(latencies)} uploads")
    assert len(latencies) == 200
    assert latencies[-1] <= 1.0


def test_patch_and_delete_are_reflected(make_daemon):
    d = make_daemon("edit-search", config={"element": {"initial_mode": "edit"}})
    api = d.api()
    attr = api.upload_ok(b"x", "x.txt", fields={"description": "original wording"})
    fid = attr["file_id"]
    wait_until(lambda: ids(search(api, q="original")) == [fid], 1,
               "a new file to be searchable")
    assert api.request("PATCH", f"/api/v1/files/{fid}", json_body={"description": "revised"},
                       headers=H).status == 200
    t = time.monotonic()
    wait_until(lambda: ids(search(api, q="revised")) == [fid]
               and not ids(search(api, q="original")), 1, "a PATCH to show in search")
    patched_after = time.monotonic() - t
    assert api.request("DELETE", f"/api/v1/files/{fid}").status == 204
    t = time.monotonic()
    wait_until(lambda: ids(search(api, q="revised")) == [], 1,
               "a deleted file to leave search")
    print(f"\npatch visible after {patched_after * 1000:.0f} ms, "
          f"delete after {(time.monotonic() - t) * 1000:.0f} ms")


def _upload_many(api: Api, n: int, word: str, prefix: str, workers: int = 16) -> list[str]:
    def one(i):
        return api.upload_ok(b"%d" % i, f"{prefix}-{i}.txt",
                             fields={"description": f"{word} number {i}"})["file_id"]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(n)))


@pytest.mark.parametrize("sort,order", [("relevance", "desc"), ("created_at", "desc"),
                                        ("created_at", "asc")])
def test_cursor_walk_while_uploads_go_on(make_daemon, sort, order):
    d = make_daemon("walk")
    api = d.api()
    word = "walk" + secrets.token_hex(4)
    # 1,200 files in pages of 50: 24 pages, each while uploads go on.
    existing = set(_upload_many(api, 1200, word, "w"))
    wait_until(lambda: search(api, q=word, limit=1)["total_hits"] == 1200, 10,
               "all 1200 uploads to be searchable")
    stop = threading.Event()
    added: list[str] = []

    def keep_uploading():
        i = 0
        while not stop.is_set():
            added.append(api.upload_ok(b"n", f"new-{i}.txt",
                                       fields={"description": f"{word} late"})["file_id"])
            i += 1

    t = threading.Thread(target=keep_uploading)
    t.start()
    try:
        seen: list[str] = []
        cursor = None
        while True:
            params = {"q": word, "sort": sort, "order": order, "limit": 50}
            if cursor:
                params["cursor"] = cursor
            uploaded = len(added)
            page = search(api, **params)
            seen.extend(ids(page))
            cursor = page["next_cursor"]
            if not cursor:
                break
            # Every next page is asked for only after another upload has been acknowledged,
            # so the walk really does run while new hits arrive.
            wait_until(lambda: len(added) > uploaded or not t.is_alive(), 30,
                       "an upload between two pages")
            assert t.is_alive(), "the uploading thread died"
    finally:
        stop.set()
        t.join()
    assert len(seen) == len(set(seen)), "a hit came back twice"
    assert existing <= set(seen), f"{len(existing - set(seen))} hits skipped"
    assert set(seen) <= existing | set(added)
    assert added, "nothing was uploaded during the walk"


def _index_state_seq(data_dir: str) -> int:
    """The WAL sequence the index on disk has applied (read with Tantivy directly)."""
    import tantivy

    from artstored.index.reader import open_reader

    reader = open_reader(os.path.join(data_dir, "index"))
    searcher = reader.searcher()
    hits = searcher.search(tantivy.Query.term_query(reader.schema, "kind", "state"), 1).hits
    return int(searcher.doc(hits[0][1])["wal_seq"][0]) if hits else 0


def _all_hits(api: Api) -> list[str]:
    out, cursor = [], None
    while True:
        params = {"sort": "created_at", "limit": 1000}
        if cursor:
            params["cursor"] = cursor
        page = search(api, **params)
        out.extend(ids(page))
        cursor = page["next_cursor"]
        if not cursor:
            return out


def test_sigkill_while_the_index_is_behind(make_daemon):
    d = make_daemon("crash-index")
    api = d.api()
    behind = 0
    for attempt in range(5):
        _upload_many(api, 300, "burst", f"b{attempt}", workers=16)
        d.kill()
        behind = store_snapshot(d.data_dir)["wal_seq"] - _index_state_seq(d.data_dir)
        d.start()
        api = d.api()
        if behind > 0:
            break
    assert behind > 0, "could not catch the index behind the WAL"
    wait_caught_up(api)
    catalog = store_snapshot(d.data_dir)["catalog"]
    hits = _all_hits(api)
    assert len(hits) == len(set(hits)), "an entry is indexed twice"
    assert sorted(hits) == sorted(catalog)
    print(f"\nindex was {behind} WAL records behind at SIGKILL; "
          f"{len(hits)} files found exactly once after restart")

    # Deleting the index and restarting rebuilds it.
    d.stop()
    shutil.rmtree(os.path.join(d.data_dir, "index"))
    d.start()
    api = d.api()
    wait_until(lambda: not api.get("/api/v1/element").json()["index_lag"]["rebuilding"], 30,
               "the rebuild of the deleted index to finish")
    wait_caught_up(api)
    assert sorted(_all_hits(api)) == sorted(catalog)

    # So does the reindex job, and the offline command.
    r = api.request("POST", "/api/v1/element/reindex")
    assert r.status == 202
    job_url = r.headers["location"]
    job = wait_until(lambda: (j := api.get(job_url).json())["state"] not in ("queued", "running")
                     and j, 30, "the reindex job to end")
    assert job["state"] == "succeeded", job
    assert job["report"]["files"] == len(catalog)
    assert job["progress"]["done_files"] == len(catalog)
    d.stop()
    out = d.cli("reindex", "--data-dir", d.data_dir, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["files"] == len(catalog)
    d.start()
    assert sorted(_all_hits(d.api())) == sorted(catalog)


def test_cli_search(shared_daemon, corpus):
    files, _ = corpus
    creds = os.path.join(shared_daemon.data_dir, "initial-admin.json")
    r = shared_daemon.cli("search", "документы", "--json", "--credentials", creds)
    assert r.returncode == 0, r.stderr
    assert files["report"]["file_id"] in ids(json.loads(r.stdout))
    r = shared_daemon.cli("search", "(broken", "--credentials", creds)
    assert r.returncode == 1 and b"invalid_query" in r.stderr
