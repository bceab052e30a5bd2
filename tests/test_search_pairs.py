"""Two-word phrases looked up as word pairs (index.pairs) find exactly the documents the
phrase query finds: a real Tantivy index of generated records, every phrase checked both
ways."""

import random
import uuid

import pytest

from artstored.index import documents as D
from artstored.index.pairs import rewrite_phrases
from artstored.index.schema import DEFAULT_FIELDS, FIELD_BOOSTS, build_schema, open_index

WORDS = ("annual report invoice contract final draft годовой отчёт договор счёт signed "
         "scanned copy board minutes отчёты reports").split()


def _record(rng: random.Random, i: int) -> dict:
    words = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))   # noqa: E731
    return {"file_id": str(uuid.UUID(int=(0x0190 << 112) | (0x7 << 76) | i)),
            "original_filename": words(rng.randint(1, 3)).replace(" ", "_") + ".pdf",
            "description": words(rng.randint(0, 12)) + (" " + "x" * 120 + " " + words(2)
                                                        if i % 7 == 0 else ""),
            "custom_attributes": {"dept": words(2), "n": i} if i % 3 else {},
            "content_type": rng.choice(["application/pdf", "text/plain; charset=utf-8"]),
            "created_at": "2026-01-02T03:04:05.000000Z", "file_size": i,
            "created_by_id": "cl_t", "retention_policy": "permanent"}


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    rng = random.Random(7)
    idx = open_index(str(tmp_path_factory.mktemp("pairs")), build_schema())
    writer = idx.writer(heap_size=32 << 20, num_threads=1)
    for i in range(3000):
        writer.add_document(D.file_document(_record(rng, i)))
    writer.commit()
    writer.wait_merging_threads()
    idx.reload()
    return idx


def _ids(index, text: str) -> set[str]:
    query = index.parse_query(text, DEFAULT_FIELDS, field_boosts=FIELD_BOOSTS)
    searcher = index.searcher()
    result = searcher.search(query, 5000, count=True)
    assert result.count == len(result.hits)
    return {searcher.doc(addr)["file_id"][0] for _, addr in result.hits}


PHRASES = ['"annual report"', '"годовой отчёт"', '"годовые отчёты"', '"Annual Reports"',
           '"report annual"', '"x annual"', '"application pdf"', '"text plain"',
           '"final_draft"', '"signed-copy"', 'board AND "scanned copy"', 'report -"draft final"',
           '"board minutes" OR "договор счёт"', '+"copy board" +report']


@pytest.mark.parametrize("text", PHRASES)
def test_a_rewritten_phrase_finds_what_the_phrase_finds(index, text):
    rewritten = rewrite_phrases(text)
    assert "pairs:" in rewritten, rewritten
    assert _ids(index, rewritten) == _ids(index, text)


def test_phrases_that_are_not_two_adjacent_words_stay_phrases(index):
    for text in ['"annual"', '"annual report final"', 'description:"annual report"',
                 '"annual report"~2', '"annual rep"*', '"annual ' + "x" * 120 + ' report"',
                 'annual report', 'x\\"annual report"']:
        assert rewrite_phrases(text) == text
    # Every pair in the corpus matches: the pair check is not vacuous.
    assert len(_ids(index, rewrite_phrases('"annual report"'))) > 50
