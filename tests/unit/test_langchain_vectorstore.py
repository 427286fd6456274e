"""``ClaraVectorStore`` against langchain-tests' ``VectorStoreIntegrationTests`` (every case, none overridden), plus
what the suite leaves out: no embedding object, MMR over CLaRa memories, cosine thresholds, long documents."""

from __future__ import annotations

import uuid
from collections.abc import Generator

import chromadb
import pytest
import torch
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_tests.integration_tests import VectorStoreIntegrationTests

from clara_plugins import ClaraRAG, ClaraStore
from clara_plugins.adapters.langchain import ClaraVectorStore
from clara_plugins.errors import InputError
from clara_plugins.retrieval import mmr_order
from tests.unit.test_langchain import CORPUS, QUESTION


def empty_store(model) -> ClaraVectorStore:
    store = ClaraStore(client=chromadb.EphemeralClient(), collection=f"vs-{uuid.uuid4().hex[:10]}")
    return ClaraVectorStore(rag=ClaraRAG(model, store))


class TestClaraVectorStoreStandard(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, tiny_model) -> Generator[ClaraVectorStore, None, None]:  # type: ignore[override]
        yield empty_store(tiny_model)


@pytest.fixture
def filled(tiny_model) -> ClaraVectorStore:
    docs = [Document(page_content=t, id=f"d{i}", metadata={"n": i}) for i, t in enumerate(CORPUS)]
    return ClaraVectorStore.from_documents(docs, embedding=None, rag=empty_store(tiny_model).rag)


def test_embedding_is_none_and_an_embedding_object_is_refused(tiny_model, filled):
    assert filled.embeddings is None
    with pytest.raises(InputError, match="embedding must be None"):
        ClaraVectorStore.from_texts(["x"], DeterministicFakeEmbedding(size=4), rag=filled.rag)
    with pytest.raises(InputError, match="needs rag="):
        ClaraVectorStore.from_texts(["x"])


def test_scores_are_the_clara_cosine_and_filters_apply(filled):
    pairs = filled.similarity_search_with_score(QUESTION, k=3)
    hits = filled.rag.search(QUESTION, k=3)
    assert [(d.id, d.page_content) for d, _ in pairs] == [(h.doc_id, h.text) for h in hits]
    assert [s for _, s in pairs] == pytest.approx([h.score for h in hits])
    only = filled.similarity_search(QUESTION, k=5, filter={"n": {"$in": [1, 3]}})
    assert sorted(d.id for d in only) == ["d1", "d3"]
    threshold = pairs[1][1]
    kept = filled.similarity_search_with_relevance_scores(QUESTION, k=3, score_threshold=threshold)
    assert [d.id for d, _ in kept] == [d.id for d, _ in pairs[:2]]
    with pytest.raises(InputError, match="unsupported keyword arguments \\['fetch_k'\\]"):
        filled.similarity_search(QUESTION, k=2, fetch_k=3)


def test_mmr_is_computed_on_the_stored_memories(filled):
    docs = filled.max_marginal_relevance_search(QUESTION, k=3, fetch_k=6, lambda_mult=0.3)
    hits = filled.rag.search(QUESTION, k=6)
    mems = torch.nn.functional.normalize(filled.rag.memories_for(hits).flatten(1), dim=-1)
    order = mmr_order(torch.tensor([h.score for h in hits]), mems @ mems.T, 3, 0.3)
    assert [d.page_content for d in docs] == [hits[i].text for i in order]
    assert [d.page_content for d in filled.max_marginal_relevance_search(QUESTION, k=3, lambda_mult=1.0)] == [
        h.text for h in hits[:3]
    ]  # lambda 1: pure relevance


def test_as_retriever_search_types(filled):
    top = filled.similarity_search(QUESTION, k=2)
    assert filled.as_retriever(search_kwargs={"k": 2}).invoke(QUESTION) == top
    mmr = filled.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 5}).invoke(QUESTION)
    assert mmr == filled.max_marginal_relevance_search(QUESTION, k=2, fetch_k=5)
    best = filled.similarity_search_with_score(QUESTION, k=1)[0][1]
    strict = filled.as_retriever(search_type="similarity_score_threshold", search_kwargs={"score_threshold": best})
    assert strict.invoke(QUESTION) == top[:1]
    with pytest.raises(InputError, match="unsupported keyword arguments \\['kk'\\]"):
        filled.as_retriever(search_kwargs={"kk": 2}).invoke(QUESTION)


def test_long_document_is_chunked_under_its_id(filled):
    long_id = f"d{len(CORPUS) - 1}"
    chunks = filled.get_by_ids([long_id])
    assert len(chunks) > 1 and {d.id for d in chunks} == {long_id}
    assert " ".join(d.page_content for d in chunks).split() == CORPUS[-1].split()
    assert filled.delete([long_id]) and filled.get_by_ids([long_id]) == []
    with pytest.raises(InputError, match="needs ids"):
        filled.delete()


async def test_async_round_trip(tiny_model):
    store = empty_store(tiny_model)
    ids = await store.aadd_documents([Document(page_content=t) for t in CORPUS[:3]], ids=["a", "b", "c"])
    assert ids == ["a", "b", "c"]
    found = await store.asimilarity_search(QUESTION, k=3)
    assert sorted(d.id for d in found) == ids
    assert [d.id for d in await store.amax_marginal_relevance_search(QUESTION, k=2, fetch_k=3)]
    await store.adelete(["a"])
    assert sorted(d.id for d in await store.aget_by_ids(ids)) == ["b", "c"]
