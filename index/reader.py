"""The index opened for reading only, by another process than the daemon (the FUSE mount,
benchmarks): it never creates or writes anything, and ``reload()`` picks up new commits."""

from __future__ import annotations

import os

import tantivy

from .schema import ANALYZER, analyzer, build_schema


class IndexReader:
    """What SearchService needs of a follower: ``schema``, ``index`` and ``searcher()``."""

    def __init__(self, path: str):
        self.schema = build_schema()
        self.index = tantivy.Index.open(path)
        self.index.register_tokenizer(ANALYZER, analyzer())
        self.index.reload()

    def searcher(self) -> tantivy.Searcher:
        return self.index.searcher()


def open_reader(path: str) -> IndexReader | None:
    """The index at ``path``, or None if there is none (yet)."""
    if not os.path.exists(os.path.join(path, "meta.json")):
        return None
    try:
        return IndexReader(path)
    except ValueError:
        return None
