"""The Tantivy schema of the search index, its analyzer, and its version.

The index is derived: it can always be rebuilt from the catalog, so a schema change needs no
migration, only ``SCHEMA_VERSION`` + 1 (an index of another version is rebuilt at start).

Fields, as the query syntax names them:

=============== ======================================================================
filename        the original filename, split into words (``annual_report_2024.pdf`` →
                annual, report, 2024, pdf) and stemmed
description     stemmed text
attr            ``custom_attributes`` as JSON, stemmed: ``attr.department:finance``
attr_text       every attribute value as text (so a plain word finds attribute values)
content_type    split into words: ``content_type:pdf``
creator         the creator's client id and name, exact
created_at      date: ``created_at:[2024-01-01T00:00:00Z TO 2025-01-01T00:00:00Z]``
size            bytes: ``size:[1000000 TO *]``
retention       ``permanent`` or ``temporary``
file_id         exact
pairs           adjacent analysed words of the default fields (``index.pairs``)
=============== ======================================================================

Text is analysed once for both languages: Snowball's Russian stemmer acts only on Cyrillic
words and the English one only on Latin ones, so chaining them stems each word in its own
language (``документы`` → ``документ``, ``invoices`` → ``invoic``), and ё folds to е.
Nothing but ``file_id`` is stored: results are read from the catalog, and snippets are cut
from the catalog's text, which keeps the index small.
"""

from __future__ import annotations

import tantivy

SCHEMA_VERSION = 4
ANALYZER = "artstore_text"

DEFAULT_FIELDS = ["filename", "description", "attr_text", "content_type"]
FIELD_BOOSTS = {"filename": 2.0}
QUERY_FIELDS = ("filename", "description", "attr", "attr_text", "content_type", "creator",
                "created_at", "size", "retention", "file_id")

KIND_FILE = "file"
KIND_STATE = "state"


def analyzer() -> tantivy.TextAnalyzer:
    return (tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
            .filter(tantivy.Filter.remove_long(100))
            .filter(tantivy.Filter.lowercase())
            .filter(tantivy.Filter.stemmer("russian"))
            .filter(tantivy.Filter.stemmer("english"))
            .build())


def build_schema() -> tantivy.Schema:
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("file_id", stored=True, tokenizer_name="raw")
    sb.add_text_field("kind", tokenizer_name="raw")
    sb.add_text_field("filename", tokenizer_name=ANALYZER)
    sb.add_text_field("description", tokenizer_name=ANALYZER)
    sb.add_json_field("attr", tokenizer_name=ANALYZER)
    sb.add_json_field("attr_exact", tokenizer_name="raw")
    sb.add_text_field("attr_text", tokenizer_name=ANALYZER)
    sb.add_text_field("content_type", tokenizer_name=ANALYZER)
    sb.add_text_field("content_type_exact", tokenizer_name="raw")
    sb.add_text_field("creator", tokenizer_name="raw")
    # Adjacent word pairs of the default fields, one term each: two-word phrases (pairs.py).
    sb.add_text_field("pairs", tokenizer_name="raw", index_option="freq")
    sb.add_text_field("retention", tokenizer_name="raw")
    sb.add_date_field("created_at", indexed=True)
    # Tantivy dates are indexed to the second: filters use microseconds.
    sb.add_integer_field("created_us", fast=True, indexed=True)
    sb.add_unsigned_field("size", fast=True, indexed=True)
    # Creation order as one integer (the UUIDv7's timestamp and sequence bits): sorts and
    # pages by created_at without ties.
    sb.add_integer_field("order_key", fast=True, indexed=True)
    # On the one state document: the WAL sequence this commit has applied.
    sb.add_unsigned_field("wal_seq", stored=True)
    return sb.build()


def open_index(path: str, schema: tantivy.Schema) -> tantivy.Index:
    index = tantivy.Index(schema, path=path)
    index.register_tokenizer(ANALYZER, analyzer())
    return index
