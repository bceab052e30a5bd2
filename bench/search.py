"""Search at scale: bulk index rate, index bytes per record, and query latency (p50/p99)
of a fixed query mix straight through the index module and through the HTTP API.

The catalog is filled through the engine with generated records (realistic names, Russian
and English descriptions, 5-10 custom attributes each); search never reads content files,
so none are written. Goals at 1,000,000 records: module p99 ≤ 5 ms, API p99 ≤ 20 ms,
API ÷ module ≤ 3, bulk ≥ 20,000 records/s, ≤ 400 bytes of index per record.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import time
import urllib.parse
import uuid
from datetime import datetime, timedelta, timezone

from .common import Server, free_port

EN_WORDS = ("invoice contract report annual quarterly budget payment delivery shipment "
            "order account statement audit tax policy insurance claim lease agreement "
            "proposal memo minutes meeting board review draft final signed scanned copy "
            "customer supplier vendor project plan schedule archive record letter").split()
RU_WORDS = ("договор счёт отчёт годовой квартальный бюджет платёж поставка заказ акт "
            "выписка аудит налог полис страховка претензия аренда соглашение предложение "
            "служебная записка протокол совещание правление проверка черновик подписанный "
            "копия клиент поставщик проект план график архив письмо документы приказ").split()
EN_SYLLABLES = ("ka", "lo", "mer", "tin", "pa", "ro", "sel", "van", "dor", "li", "ne", "tra",
                "gen", "bor", "mi", "sta", "cor", "ple", "nu", "ven")
RU_SYLLABLES = ("ка", "ло", "мер", "тин", "па", "ро", "сел", "ван", "дор", "ли", "не", "тра",
                "ген", "бор", "ми", "ста", "кор", "пле", "ну", "вен")
VOCABULARY_SIZE = 3000  # words per language, drawn with a Zipf law as in real text


def vocabulary(base: tuple, syllables: tuple, rng: random.Random) -> list[str]:
    words = list(base)
    seen = set(words)
    while len(words) < VOCABULARY_SIZE:
        word = "".join(rng.choice(syllables) for _ in range(rng.randint(2, 4)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


class Words:
    """A language's vocabulary and a Zipf sampler over it (rank r drawn ∝ 1/r)."""

    def __init__(self, base, syllables, rng):
        import itertools

        self.words = vocabulary(base, syllables, rng)
        self.cumulative = list(itertools.accumulate(1 / (r + 1) for r in range(len(self.words))))

    def draw(self, rng: random.Random) -> str:
        import bisect

        x = rng.random() * self.cumulative[-1]
        return self.words[bisect.bisect_left(self.cumulative, x)]


_VOCAB_RNG = random.Random(3)
EN = Words(EN_WORDS, EN_SYLLABLES, _VOCAB_RNG)
RU = Words(RU_WORDS, RU_SYLLABLES, _VOCAB_RNG)

DEPARTMENTS = ("finance", "sales", "legal", "hr", "it", "logistics", "procurement", "бухгалтерия")
REGIONS = ("north", "south", "east", "west", "москва", "казань", "новосибирск")
STATUSES = ("draft", "approved", "signed", "archived", "rejected")
TYPES = (("pdf", "application/pdf"), ("docx", "application/vnd.openxmlformats-officedocument."
         "wordprocessingml.document"), ("xlsx", "application/vnd.ms-excel"),
         ("txt", "text/plain"), ("jpg", "image/jpeg"))


SPAN_SECONDS = 5 * 365 * 86400  # records spread over five years


def make_attr(i: int, count: int, rng: random.Random, start: datetime, node_id: str) -> dict:
    from artstored.engine import attrs as A
    from artstored.engine import ids

    created = start + timedelta(seconds=SPAN_SECONDS * i / count + rng.random())
    file_id = ids.new_file_id(created.timestamp())
    lang = EN if rng.random() < 0.5 else RU
    words = lang.words[:60]
    ext, ctype = rng.choice(TYPES)
    name = "_".join(rng.sample(words, 2)) + f"_{created.year}_{i % 997}.{ext}"
    description = " ".join(lang.draw(rng) for _ in range(rng.randint(6, 18))).capitalize()
    custom = {"department": rng.choice(DEPARTMENTS), "year": created.year,
              "status": rng.choice(STATUSES), "region": rng.choice(REGIONS),
              "contract_no": f"C-{rng.randint(1000, 99999)}"}
    for extra in rng.sample(("priority", "project", "vendor", "owner", "cost_center"),
                            rng.randint(0, 5)):
        custom[extra] = rng.choice(words)
    return {
        "schema_version": "2.0", "file_id": file_id, "original_filename": name,
        "storage_filename": f"{name}_{file_id}", "file_size": rng.randint(1000, 50_000_000),
        "content_type": ctype, "created_at": A.format_time(created),
        "created_by_id": f"cl_{rng.randint(1, 50):016x}", "created_by_username": f"bot{rng.randint(1, 50)}",
        "description": description, "version": 1, "checksum_sha256": "0" * 64,
        "custom_attributes": custom, "xxh3_128": "0" * 32, "origin_node": node_id,
        "retention_policy": "permanent", "expires_at": None,
    }


def populate(data_dir: str, count: int, seed: int = 7) -> tuple[float, float]:
    """Fill the catalog with ``count`` generated records and build the index from it.
    Returns (seconds to fill the catalog, bulk index rate in records/s)."""
    from artstored.engine import catalog
    from artstored.engine import wal as W
    from artstored.engine.catalog import CatalogEntry
    from artstored.engine.store import Store, StoreConfig
    from artstored.index.follower import IndexFollower

    rng = random.Random(seed)
    start = datetime(2019, 1, 1, tzinfo=timezone.utc)
    store = Store(StoreConfig(data_dir=data_dir, map_size=1 << 36))
    try:
        disk = next(iter(store.disks)).disk_id
        started = time.perf_counter()
        batch = 20_000
        for lo in range(0, count, batch):
            with store.env.write() as txn:
                for i in range(lo, min(count, lo + batch)):
                    attr = make_attr(i, count, rng, start, store.node.node_id)
                    catalog.put(txn, store.env, CatalogEntry(attr=attr, disk=disk,
                                                             rel=f"gen/{attr['file_id']}"))
                W.append(txn, store.env, W.CATALOG_REBUILD, W.SYSTEM,
                         data={"generated": min(count, lo + batch)})
        fill_seconds = time.perf_counter() - started
        follower = IndexFollower(store, os.path.join(data_dir, "index"))
        report = follower.reindex()
        follower.stop()
    finally:
        store.close()
    return fill_seconds, report["files"] / report["seconds"]


def query_mix(rng: random.Random, n: int) -> list[dict]:
    """A fixed mix: single term, phrase, boolean with a filter, attribute term, date range,
    sorted by date (one sixth each), as /api/v1/search parameters. Terms are drawn from the
    500 most common words of each language: searches for words that occur."""
    out = []
    common = EN.words[:500] + RU.words[:500]
    for i in range(n):
        kind = i % 6
        if kind == 0:
            p = {"q": rng.choice(common)}
        elif kind == 1:
            lang = EN if rng.random() < 0.5 else RU
            p = {"q": f'"{lang.draw(rng)} {lang.draw(rng)}"'}
        elif kind == 2:
            p = {"q": f"{rng.choice(EN.words[:500])} AND NOT {rng.choice(EN.words[:50])}",
                 "content_type": rng.choice(TYPES)[1]}
        elif kind == 3:
            p = {"q": f"attr.department:{rng.choice(DEPARTMENTS)}"}
        elif kind == 4:
            y = rng.randint(2019, 2023)
            p = {"q": rng.choice(common), "created_from": f"{y}-03-01T00:00:00Z",
                 "created_to": f"{y}-06-01T00:00:00Z"}
        else:
            p = {"q": rng.choice(RU.words[:500]), "sort": "created_at"}
        p["limit"] = "20"
        out.append(p)
    return out


def _percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return samples[len(samples) // 2] * 1000, samples[min(len(samples) - 1,
                                                          int(len(samples) * 0.99))] * 1000


KINDS = ("term", "phrase", "boolean+filter", "attribute", "date range", "sorted by date")


def time_module(data_dir: str, mix: list[dict]) -> tuple[float, float, dict]:
    """p50, p99 in ms of SearchService.search over the mix, and per query kind (in this
    process, read-only: the index opened as the FUSE mount would)."""
    from artstored.api.search import parse_request
    from artstored.index.reader import open_reader
    from artstored.index.search import SearchService

    service = SearchService(open_reader(os.path.join(data_dir, "index")))
    for params in mix[:50]:
        service.search(parse_request(params))
    samples = []
    by_kind: dict[str, list[float]] = {}
    for i, params in enumerate(mix):
        req = parse_request(params)
        t = time.perf_counter()
        service.search(req)
        samples.append(time.perf_counter() - t)
        by_kind.setdefault(KINDS[i % 6], []).append(samples[-1])
    p50, p99 = _percentiles(samples)
    return p50, p99, {k: _percentiles(v) for k, v in by_kind.items()}


def time_api(server: Server, mix: list[dict]) -> tuple[float, float]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    headers = {"Authorization": f"Bearer {server.token}"}

    def one(params):
        conn.request("GET", "/api/v1/search?" + urllib.parse.urlencode(params), headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, body[:300]
        return body

    for params in mix[:50]:
        one(params)
    samples = []
    for params in mix:
        t = time.perf_counter()
        one(params)
        samples.append(time.perf_counter() - t)
    conn.close()
    return _percentiles(samples)


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def run(work: str, count: int, queries: int = 600) -> dict:
    data_dir = os.path.join(work, f"search-{count}-{uuid.uuid4().hex[:6]}")
    fill_seconds, rate = populate(data_dir, count)
    index_bytes = dir_bytes(os.path.join(data_dir, "index"))
    mix = query_mix(random.Random(11), queries)
    module_p50, module_p99, by_kind = time_module(data_dir, mix)
    server = Server.artstored(data_dir, free_port())
    try:
        api_p50, api_p99 = time_api(server, mix)
        rss = server.rss() / 2 ** 20
        rss_anon = server.rss("RssAnon") / 2 ** 20
    finally:
        server.stop()
    shutil.rmtree(data_dir, ignore_errors=True)
    return {"records": count, "catalog_fill_seconds": round(fill_seconds, 1),
            "bulk_index_per_s": rate, "index_bytes_per_record": index_bytes / count,
            "module_p50_ms": module_p50, "module_p99_ms": module_p99,
            "api_p50_ms": api_p50, "api_p99_ms": api_p99,
            "api_over_module_p99": api_p99 / module_p99 if module_p99 else None,
            "module_by_kind_ms": {k: {"p50": a, "p99": b} for k, (a, b) in by_kind.items()},
            "daemon_rss_MiB": rss, "daemon_rss_anon_MiB": rss_anon}


if __name__ == "__main__":
    import sys
    print(json.dumps(run(sys.argv[1], int(sys.argv[2])), indent=2))
