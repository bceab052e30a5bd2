"""Two-word phrases as single terms.

A phrase of two common words (``"annual report"``) made Tantivy intersect two long posting
lists and check positions in every document holding both words: 25 ms p99 at 1,000,000
records. So every document also gets the adjacent word pairs of its default fields as
terms of one ``pairs`` field (``d:annual report``: field tag, then the two analysed words),
and an unqualified two-word phrase in a query is looked up there instead: one posting list.

The pairs are cut from the same token stream the phrase query would read (the index's own
analyzer, with its positions: words a removed over-long token separated are not a pair),
so a rewritten phrase matches exactly the documents the phrase query would match. Scores
come from the pair's frequency (BM25 on the pairs field, filename pairs boosted as filename
is) rather than from the phrase's. Phrases with a field, a slop (``~2``), a prefix (``*``)
or other than two words are left as they are.
"""

from __future__ import annotations

import re
import threading

from .schema import DEFAULT_FIELDS, FIELD_BOOSTS, analyzer

PAIRS_FIELD = "pairs"
TAGS = {"filename": "f", "description": "d", "attr_text": "a", "content_type": "c"}
assert set(TAGS) == set(DEFAULT_FIELDS)

_local = threading.local()      # one analyzer per thread (built on first use)


def _analyzer():
    found = getattr(_local, "analyzer", None)
    if found is None:
        found = _local.analyzer = analyzer()
    return found


def pairs_of(field: str, text: str) -> list[str]:
    """The ``pairs`` terms of ``text`` in default field ``field``."""
    tokens = _analyzer().pre_tokenize(text).tokens
    tag = TAGS[field]
    return [f"{tag}:{a.text} {b.text}" for a, b in zip(tokens, tokens[1:])
            if b.position == a.position + 1]


# A quoted phrase, what precedes it (a field name ends with ':') and what follows it (a
# slop '~' or a prefix '*' keeps it a phrase query).
_PHRASE = re.compile(r'(^|.)"((?:[^"\\]|\\.)*)"([~*]?)', re.DOTALL)


def rewrite_phrases(query: str) -> str:
    """``query`` with each unqualified two-word phrase as a lookup of its pair in every
    default field (see the module docstring); other text unchanged."""
    def replace(m: re.Match) -> str:
        before, inner, after = m.group(1), m.group(2), m.group(3)
        if before in (":", "\\") or after or "\\" in inner:
            return m.group(0)
        tokens = _analyzer().pre_tokenize(inner).tokens
        if len(tokens) != 2 or tokens[1].position != tokens[0].position + 1:
            return m.group(0)
        pair = f"{tokens[0].text} {tokens[1].text}"
        lookups = []
        for field, tag in TAGS.items():
            boost = FIELD_BOOSTS.get(field)
            lookups.append(f'{PAIRS_FIELD}:"{tag}:{pair}"' + (f"^{boost}" if boost else ""))
        return f"{before}({' OR '.join(lookups)})"
    return _PHRASE.sub(replace, query)
