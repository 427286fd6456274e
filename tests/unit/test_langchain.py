"""LangChain retriever and document compressor over a real ClaraRAG (tiny model, in-memory Chroma)."""

from __future__ import annotations

import uuid

import chromadb
import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ValidationError
from rank_bm25 import BM25Okapi

from clara_plugins import ClaraModel, ClaraRAG, ClaraStore
from clara_plugins.adapters.langchain import ClaraDocumentCompressor, ClaraRetriever
from clara_plugins.errors import InputError

CORPUS = [
    "Paris is the capital and most populous city of France.",
    "Berlin is the capital of Germany and its largest city.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The Moon is Earth's only natural satellite.",
    "Mount Everest is the highest mountain above sea level.",
    "The French Revolution was a period of political and societal change in France that began with the Estates "
    "General of 1789 and ended with the coup of 18 Brumaire in November 1799 and the formation of the French "
    "Consulate. Many of its ideas are considered fundamental principles of liberal democracy.",
]
QUESTION = "What is the capital of France?"


def build_rag(model: ClaraModel) -> ClaraRAG:
    store = ClaraStore(client=chromadb.EphemeralClient(), collection=f"lc-{uuid.uuid4().hex[:10]}")
    rag = ClaraRAG(model, store)
    ids = [f"d{i}" for i in range(len(CORPUS))]
    rag.index(CORPUS, ids=ids, metadatas=[{"source": f"src{i}"} for i in range(len(CORPUS))], show_progress=False)
    return rag


@pytest.fixture(scope="module")
def rag(tiny_model):
    return build_rag(tiny_model)


@pytest.fixture
def compressed(rag, monkeypatch):
    """Every list of texts the model compresses during the test (the real compress still runs)."""
    calls: list[list[str]] = []
    real = rag.model.compress

    def spy(texts, *args, **kwargs):
        calls.append(list(texts))
        return real(texts, *args, **kwargs)

    monkeypatch.setattr(rag.model, "compress", spy)
    return calls


def clara_ranking(model: ClaraModel, question: str, texts: list[str]) -> tuple[list[int], list[float]]:
    """CLaRa's ranking computed directly from the model, independently of the store and the adapters."""
    scores, idx = ClaraModel.rank(model.encode_query([question]), model.compress(texts), k=len(texts))
    return idx[0].tolist(), scores[0].tolist()


# ---- retriever -------------------------------------------------------------------------------------------------


def test_retriever_documents_carry_text_id_score_and_provenance(rag):
    docs = ClaraRetriever(rag=rag, k=3).invoke(QUESTION)
    hits = rag.search(QUESTION, k=3)
    assert [d.id for d in docs] == [h.id for h in hits]
    for doc, hit in zip(docs, hits):
        assert doc.page_content == hit.text
        assert doc.metadata["clara_id"] == doc.id
        assert doc.metadata["score"] == pytest.approx(hit.score)
        source = int(doc.metadata["doc_id"][1:])
        assert doc.metadata["source"] == f"src{source}"  # the user metadata of the source document
        assert CORPUS[source][doc.metadata["start"] : doc.metadata["end"]] == doc.page_content
    scores = [d.metadata["score"] for d in docs]
    assert scores == sorted(scores, reverse=True)


def test_retriever_k_as_field_and_per_call(rag):
    retriever = rag.as_langchain_retriever(k=2)
    assert isinstance(retriever, ClaraRetriever)
    two = retriever.invoke(QUESTION)
    five = retriever.invoke(QUESTION, k=5)
    assert len(two) == 2
    assert len(five) == 5
    assert [d.id for d in five[:2]] == [d.id for d in two]


def test_retriever_metadata_filter_as_field_and_per_call(rag):
    only_3 = ClaraRetriever(rag=rag, k=3, where={"source": "src3"}).invoke(QUESTION)
    assert [d.metadata["doc_id"] for d in only_3] == ["d3"]  # d3 has a single chunk
    per_call = ClaraRetriever(rag=rag, k=3).invoke(QUESTION, where={"source": {"$in": ["src1", "src2"]}})
    assert sorted(d.metadata["doc_id"] for d in per_call) == ["d1", "d2"]


async def test_retriever_async_matches_sync(rag):
    retriever = ClaraRetriever(rag=rag, k=3)
    assert [d.id for d in await retriever.ainvoke(QUESTION)] == [d.id for d in retriever.invoke(QUESTION)]
    assert len(await retriever.ainvoke(QUESTION, k=1)) == 1


def test_retriever_rejects_bad_arguments(rag):
    with pytest.raises(ValidationError, match="k must be a positive integer"):
        ClaraRetriever(rag=rag, k=0)
    with pytest.raises(ValidationError, match="rag must be a clara_plugins.ClaraRAG"):
        ClaraRetriever(rag="not a rag")
    retriever = ClaraRetriever(rag=rag)
    with pytest.raises(InputError, match="k must be a positive integer"):
        retriever.invoke(QUESTION, k=-1)
    with pytest.raises(InputError, match=r"search_kwargs \[.top_k.\] not supported"):
        retriever.invoke(QUESTION, top_k=2)


# ---- document compressor ---------------------------------------------------------------------------------------


def test_compressor_ranks_like_clara_and_reuses_stored_memories(rag, compressed):
    texts = CORPUS[:6]  # stored chunks, passed as plain Documents without ids (as another retriever returns them)
    docs = [Document(page_content=t, metadata={"n": i}) for i, t in enumerate(texts)]
    out = ClaraDocumentCompressor(rag=rag, top_n=3).compress_documents(docs, QUESTION)
    assert compressed == []  # every text was found in the store by content: nothing compressed again
    order, scores = clara_ranking(rag.model, QUESTION, texts)
    assert [d.metadata["n"] for d in out] == order[:3]
    assert [d.metadata["relevance_score"] for d in out] == pytest.approx(scores[:3], abs=1e-4)
    assert all(d.page_content == texts[d.metadata["n"]] for d in out)


def test_compressor_compresses_only_unknown_documents(rag, compressed):
    new = "Rome is the capital of Italy."
    docs = [Document(page_content=t) for t in [*CORPUS[:3], new]]
    out = rag.as_langchain_compressor(top_n=4).compress_documents(docs, QUESTION)
    assert compressed == [[new]]
    order, _ = clara_ranking(rag.model, QUESTION, [*CORPUS[:3], new])
    assert [d.page_content for d in out] == [docs[i].page_content for i in order]


def test_compressor_reuses_memory_by_clara_id(rag, compressed):
    # the memory of a Document naming a stored chunk is the stored one, whatever its text says
    stored = ClaraRetriever(rag=rag, k=len(CORPUS)).invoke(QUESTION)
    renamed = [
        Document(page_content=f"edited copy {i}", metadata={"clara_id": d.id, "n": i}) for i, d in enumerate(stored)
    ]
    out = ClaraDocumentCompressor(rag=rag, top_n=len(stored)).compress_documents(renamed, QUESTION)
    assert compressed == []
    assert [d.metadata["n"] for d in out] == list(range(len(stored)))  # same order as the retriever's
    assert [d.metadata["relevance_score"] for d in out] == pytest.approx([d.metadata["score"] for d in stored])


def test_compressor_splits_long_foreign_documents(rag, compressed):
    long_text = " ".join(f"Lyon had {n} bridges over the Rhone river in year {1900 + n}." for n in range(8))
    assert len(rag.model.chunk(long_text)) > 1
    docs = [Document(page_content=long_text), Document(page_content=CORPUS[0])]
    out = ClaraDocumentCompressor(rag=rag, top_n=2).compress_documents(docs, QUESTION)
    assert sorted(d.page_content for d in out) == sorted(d.page_content for d in docs)
    assert len(compressed) == 1
    assert "".join(compressed[0]).replace(" ", "") == long_text.replace(" ", "")  # its chunks, compressed once


class BM25Retriever(BaseRetriever):
    """A keyword retriever over a list of texts (a stand-in for any non-CLaRa retriever)."""

    texts: list[str]
    k: int = 4

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        bm25 = BM25Okapi([t.lower().split() for t in self.texts])
        scores = bm25.get_scores(query.lower().split())
        best = sorted(range(len(self.texts)), key=lambda i: -scores[i])[: self.k]
        return [Document(page_content=self.texts[i], metadata={"bm25": float(scores[i])}) for i in best]


def test_compressor_inside_contextual_compression_retriever(rag):
    base = BM25Retriever(texts=CORPUS, k=5)
    compressor = ClaraDocumentCompressor(rag=rag, top_n=2)
    pipeline = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base)
    out = pipeline.invoke(QUESTION)
    expected = compressor.compress_documents(base.invoke(QUESTION), QUESTION)
    assert [d.page_content for d in out] == [d.page_content for d in expected]
    assert all("bm25" in d.metadata and "relevance_score" in d.metadata for d in out)


async def test_compressor_async_and_empty_input(rag):
    compressor = ClaraDocumentCompressor(rag=rag, top_n=2)
    docs = [Document(page_content=t) for t in CORPUS[:4]]
    sync = compressor.compress_documents(docs, QUESTION)
    assert [d.page_content for d in await compressor.acompress_documents(docs, QUESTION)] == [
        d.page_content for d in sync
    ]
    assert compressor.compress_documents([], QUESTION) == []
    with pytest.raises(ValidationError, match="top_n must be a positive integer"):
        ClaraDocumentCompressor(rag=rag, top_n=0)
