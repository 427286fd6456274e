"""ClaraRAG refuses what would silently do something else: '#' in document ids, a k past the generator's context,
texts that are not texts."""

from __future__ import annotations

import pytest

from clara_plugins.errors import InputError
from clara_plugins.rag import ClaraRAG


@pytest.fixture
def rag(tiny_model, tmp_path) -> ClaraRAG:
    return ClaraRAG.from_pretrained(tiny_model, store=tmp_path / "db")


def test_document_id_with_hash_is_refused_and_nothing_is_written(rag, passages):
    long_text = " ".join(passages[:3])
    with pytest.raises(InputError, match=r"'report#1'.*'#'"):
        rag.index([long_text, passages[5]], ids=["report", "report#1"], show_progress=False)
    assert rag.store.count() == 0
    with pytest.raises(InputError, match="'#'"):
        rag.index({"text": passages[5], "id": "a#b"}, show_progress=False)


def test_delete_of_a_chunk_id_removes_that_chunk_only(rag, passages, tiny_model):
    long_text = " ".join(passages[:3])
    assert len(tiny_model.chunk(long_text)) >= 3
    rag.index([long_text, passages[5]], ids=["report", "report-1"], show_progress=False)
    all_ids = set(rag.store.get_records([f"report#{i}" for i in range(20)] + ["report-1#0"]))
    rag.delete(["report#1"])
    left = set(rag.store.get_records(sorted(all_ids)))
    assert all_ids - left == {"report#1"}
    rag.delete("report")  # a document id: every chunk of that document, nothing else
    assert set(rag.store.get_records(sorted(all_ids))) == {"report-1#0"}


@pytest.mark.parametrize("bad", [None, 42, 3.5, b"bytes"])
def test_index_of_a_non_text_is_an_input_error(rag, bad):
    with pytest.raises(InputError, match="texts must be"):
        rag.index(bad, show_progress=False)


def test_k_past_the_generator_context_is_refused(rag, passages, tiny_model):
    rag.index(passages[:4], show_progress=False)
    question = "Who wrote it?"
    limit = tiny_model.base_lm.config.max_position_embeddings
    fit = rag.max_docs(question)
    prompt = tiny_model.build_prompts([question], [fit])["input_ids"].shape[1]
    assert prompt + tiny_model.config.max_new_tokens <= limit
    over = tiny_model.build_prompts([question], [fit + 1])["input_ids"].shape[1]
    assert over + tiny_model.config.max_new_tokens > limit
    for k in (fit + 1, 10**9):
        with pytest.raises(InputError, match=rf"k={k} .*{limit}.*k <= {fit}"):
            rag.ask(question, k=k)
        with pytest.raises(InputError, match=rf"k={k}"):
            rag.stream(question, k=k)
    hits = rag.search(question, k=1)
    with pytest.raises(InputError, match=rf"k={fit + 1}"):
        rag.answer_from_hits(question, hits * (fit + 1))
    assert rag.ask(question, k=2, max_new_tokens=2).sources  # a k that fits still answers


def test_default_k_past_the_context_is_lowered_with_a_warning(rag, passages, tiny_model, monkeypatch, caplog):
    rag.index(passages[:4], show_progress=False)
    fit = rag.max_docs("Who?", max_new_tokens=2)
    monkeypatch.setattr(tiny_model.config, "generation_top_k", fit + 5)
    with caplog.at_level("WARNING"):
        ans = rag.ask("Who?", max_new_tokens=2)
    assert len(ans.sources) == min(fit, rag.store.count()) and "default k" in caplog.text
