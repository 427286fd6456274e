"""ClaraRAG with the real tiny model and a real embedded Chroma."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from clara_plugins.errors import InputError, ModelMismatchError, StoreError
from clara_plugins.rag import ClaraRAG, RAGAnswer, text_hash
from clara_plugins.store import ClaraStore, Hit


@pytest.fixture
def docs(passages) -> list[str]:
    return passages[:12]


@pytest.fixture
def rag(tiny_model, tmp_path) -> ClaraRAG:
    return ClaraRAG.from_pretrained(tiny_model, store=tmp_path / "db")


@pytest.fixture
def indexed(rag, docs) -> ClaraRAG:
    rag.index(docs, metadatas=[{"n": i} for i in range(len(docs))], show_progress=False)
    return rag


def _n_chunks(model, texts) -> int:
    return sum(len(model.chunk(t)) for t in texts)


def test_index_chunks_with_provenance(indexed, docs, tiny_model):
    assert indexed.store.count() == _n_chunks(tiny_model, docs)
    hits = indexed.search("Who was the editor of the magazine?", k=4)
    assert len(hits) == 4 and hits == sorted(hits, key=lambda h: -h.score)
    for hit in hits:
        source = docs[hit.metadata["n"]]
        assert source[hit.start : hit.end] == hit.text
        assert hit.doc_id == "doc-" + text_hash(source)[:20]


def test_index_is_idempotent(indexed, docs):
    before = indexed.store.count()
    res = indexed.index(docs, metadatas=[{"n": i} for i in range(len(docs))], show_progress=False)
    assert (res.docs_added, res.docs_skipped, res.chunks_added) == (0, len(docs), 0)
    res = indexed.index([docs[0], docs[0]], show_progress=False)  # same content, no ids: once, already stored
    assert res.docs_added == 0 and indexed.store.count() == before
    texts = indexed.store._collection().get(include=["documents"])["documents"]
    assert len(texts) == before


def test_same_id_new_text_replaces_its_chunks(rag, docs, tiny_model):
    rag.index([{"id": "a", "text": docs[0]}, {"id": "b", "text": docs[1]}], show_progress=False)
    rag.index([{"id": "a", "text": docs[2]}], show_progress=False)
    assert rag.store.count() == _n_chunks(tiny_model, [docs[1], docs[2]])
    assert rag.store.doc_status(["a"])["a"][0] == text_hash(docs[2])


def test_same_content_reuses_stored_memories(rag, docs, tiny_model, monkeypatch):
    rag.index([{"id": "a", "text": docs[0]}], show_progress=False)
    calls = []
    original = tiny_model.compress
    monkeypatch.setattr(tiny_model, "compress", lambda texts, **kw: calls.append(len(texts)) or original(texts, **kw))
    res = rag.index([{"id": "copy", "text": docs[0]}], show_progress=False)
    assert calls == [] and res.chunks_reused == res.chunks_added > 0
    np.testing.assert_array_equal(rag.store.get_memories(["copy#0"]), rag.store.get_memories(["a#0"]))


@pytest.mark.parametrize(
    ("texts", "kwargs", "pattern"),
    [
        (["ok", ""], {}, "text 1 is empty"),
        (["ok", "  \n "], {}, "text 1 is empty"),
        (["ok", 3], {}, "text 1 must be a str"),
        (["ok", "fine"], {"ids": ["x", "x"]}, "duplicate id 'x'"),
        (["ok", "fine"], {"metadatas": [{"a": 1}, {"a": {"b": 2}}]}, "metadata of text 1"),
        (["ok"], {"ids": ["x", "y"]}, "ids has 2 entries"),
    ],
)
def test_bad_input_stores_nothing(rag, docs, texts, kwargs, pattern):
    rag.index(docs[:1], show_progress=False)
    before = rag.store.count()
    with pytest.raises(InputError, match=pattern):
        rag.index(texts, show_progress=False, **kwargs)
    assert rag.store.count() == before


def test_search_matches_exact_ranking_over_all_memories(indexed, tiny_model):
    ids = indexed.store._collection().get(include=[])["ids"]
    mems = torch.from_numpy(indexed.store.get_memories(ids))
    for question in ["Who is the editor-in-chief?", "When was the album released?"]:
        q = tiny_model.encode_query([question])
        scores, idx = tiny_model.rank(q, mems, 5)
        hits = indexed.search(question, k=5)
        assert [h.id for h in hits] == [ids[i] for i in idx[0].tolist()]
        assert [h.score for h in hits] == pytest.approx(scores[0].tolist(), abs=1e-5)


def test_memories_for_uses_stored_vectors(indexed, tiny_model):
    hit = indexed.search("a question", k=1)[0]
    stored = indexed.memories_for([hit])
    assert stored.shape == (1, tiny_model.n_mem, tiny_model.hidden_size)
    torch.testing.assert_close(stored, tiny_model.compress([hit.text]), atol=1e-5, rtol=1e-4)


def test_rerank_compresses_only_unknown_texts(indexed, tiny_model, monkeypatch):
    hits = indexed.search("Who is the editor-in-chief?", k=3)
    calls = []
    original = tiny_model.compress
    monkeypatch.setattr(tiny_model, "compress", lambda texts, **kw: calls.append(list(texts)) or original(texts, **kw))
    stranger = "A completely new sentence about volcanoes."
    ranked = indexed.rerank("Who is the editor-in-chief?", [hits[2], stranger, hits[0].text], k=3)
    assert calls == [[stranger]]
    assert sorted(h.text for h in ranked) == sorted([hits[2].text, stranger, hits[0].text])
    assert next(h for h in ranked if h.text == hits[0].text).id == hits[0].id  # known by content
    assert ranked == sorted(ranked, key=lambda h: -h.score)


def test_ask_and_stream_answer_from_stored_memories(indexed):
    ans = indexed.ask("Who is the editor-in-chief?", k=2, max_new_tokens=6)
    assert isinstance(ans, RAGAnswer) and isinstance(ans.text, str) and len(ans.sources) == 2
    assert ans.text == indexed.answer_from_hits("Who is the editor-in-chief?", ans.sources, max_new_tokens=6).text
    streamed = "".join(indexed.stream("Who is the editor-in-chief?", k=2, max_new_tokens=6))
    assert streamed.strip() == ans.text


def test_ask_on_empty_store_and_bad_k(rag):
    with pytest.raises(StoreError, match="index documents first"):
        rag.ask("anything?")
    with pytest.raises(InputError, match="k must be a positive int"):
        rag.search("anything?", k=0)
    with pytest.raises(InputError, match="question is empty"):
        rag.search("  ")


def test_delete_documents_and_chunks(indexed, docs):
    doc_id = "doc-" + text_hash(docs[0])[:20]
    before = indexed.store.count()
    n0 = indexed.store.doc_status([doc_id])[doc_id][2]
    indexed.delete([doc_id, "doc-" + text_hash(docs[1])[:20] + "#0"])
    assert indexed.store.count() == before - n0 - 1
    with pytest.raises(InputError, match="ids"):
        indexed.delete([3])


def test_other_model_is_refused(indexed, fresh_tiny_model, tmp_path):
    with torch.no_grad():
        fresh_tiny_model.peft_model.get_input_embeddings().weight[-1].add_(0.01)  # a CLaRa token row
    fresh_tiny_model.invalidate_fingerprint()
    fresh_tiny_model.source = "other-model"
    assert fresh_tiny_model.fingerprint != indexed.model.fingerprint
    with pytest.raises(ModelMismatchError, match="other-model"):
        ClaraRAG(fresh_tiny_model, ClaraStore(path=tmp_path / "db"))


@pytest.mark.parametrize("layout", ["full", "pca"])
def test_searches_from_threads_while_indexing(tiny_model, tmp_path, passages, layout):
    rag = ClaraRAG(tiny_model, ClaraStore(path=tmp_path / "db", layout=layout, ann_dim=32))
    rag.index(passages[:4], show_progress=False)
    errors, results = [], []
    stop = threading.Event()

    def searcher() -> None:
        while not stop.is_set():
            try:
                results.append(len(rag.search("Who won the game?", k=3)))
            except Exception as err:  # collected and asserted below
                errors.append(err)
                return

    threads = [threading.Thread(target=searcher) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        rag.index(passages[4:16], batch_size=8, show_progress=False)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == [] and results and set(results) == {3}
    assert rag.store.count() == _n_chunks(rag.model, passages[:16])


def test_hit_is_a_plain_dataclass():
    hit = Hit(id="a#0", text="t", score=0.5)
    assert (hit.metadata, hit.doc_id, hit.start, hit.end) == ({}, "", 0, 0)
