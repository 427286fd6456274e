"""LlamaIndex retriever, node postprocessor, LLM, synthesizer and query engine over a real ClaraRAG."""

from __future__ import annotations

import pytest
import torch
from llama_index.core import Document as LlamaDocument
from llama_index.core import VectorStoreIndex
from llama_index.core.base.response.schema import AsyncStreamingResponse, Response, StreamingResponse
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import ChatMessage
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import MetadataMode, NodeRelationship, NodeWithScore, TextNode

from clara_plugins import ClaraModel
from clara_plugins.adapters._llama_index_llm import TEXT_WINDOW
from clara_plugins.adapters.llama_index import (
    ClaraLLM,
    ClaraNodePostprocessor,
    ClaraRetriever,
    ClaraSynthesizer,
    make_query_engine,
)
from clara_plugins.errors import InputError
from tests.unit.test_langchain import CORPUS, QUESTION, build_rag

MAX_NEW = 10


@pytest.fixture(scope="module")
def rag(tiny_model):
    return build_rag(tiny_model)


@pytest.fixture
def calls(rag, monkeypatch):
    """Texts compressed and questions generated from during the test (the real methods still run)."""
    seen = {"compress": [], "generate": [], "stream": []}
    model = rag.model
    real = {name: getattr(model, name) for name in seen}

    def spy(name):
        def record(*args, **kwargs):
            seen[name].append(args[0] if name != "compress" else list(args[0]))
            return real[name](*args, **kwargs)

        return record

    for name in seen:
        monkeypatch.setattr(model, name, spy(name))
    return seen


@pytest.fixture(scope="module")
def vector_index():
    """A plain LlamaIndex index over the same texts, with an offline stand-in embedding (no download)."""
    docs = [LlamaDocument(text=t, metadata={"n": i}) for i, t in enumerate(CORPUS[:6])]
    return VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))


def stored_memories(rag, ids):
    return torch.from_numpy(rag.store.get_memories(ids)).view(len(ids), rag.model.n_mem, rag.model.hidden_size)


def test_retriever_returns_text_nodes_with_ids_scores_and_provenance(rag):
    nodes = ClaraRetriever(rag, k=3).retrieve(QUESTION)
    hits = rag.search(QUESTION, k=3)
    assert [n.node.node_id for n in nodes] == [h.id for h in hits]
    assert [n.score for n in nodes] == pytest.approx([h.score for h in hits])
    for n, hit in zip(nodes, hits):
        assert isinstance(n, NodeWithScore)
        assert isinstance(n.node, TextNode)
        assert n.node.text == hit.text
        assert n.node.metadata["source"] == hit.metadata["source"]
        assert n.node.metadata["clara_id"] == hit.id
        assert n.node.relationships[NodeRelationship.SOURCE].node_id == hit.doc_id
        assert (n.node.start_char_idx, n.node.end_char_idx) == (hit.start, hit.end)
        # CLaRa's bookkeeping keys stay out of the text LlamaIndex embeds or shows to an LLM
        assert "clara_id" not in n.node.get_content(metadata_mode=MetadataMode.LLM)
        assert "source: " in n.node.get_content(metadata_mode=MetadataMode.EMBED)


async def test_retriever_async_and_top_k_alias(rag):
    retriever = rag.as_llama_index_retriever(similarity_top_k=2)
    assert isinstance(retriever, ClaraRetriever)
    nodes = await retriever.aretrieve(QUESTION)
    assert [n.node.node_id for n in nodes] == [n.node.node_id for n in retriever.retrieve(QUESTION)]
    assert len(nodes) == 2
    filtered = ClaraRetriever(rag, k=3, where={"source": "src4"}).retrieve(QUESTION)
    assert [n.node.metadata["doc_id"] for n in filtered] == ["d4"]
    with pytest.raises(InputError, match="k must be a positive integer"):
        ClaraRetriever(rag, k=0)


def test_postprocessor_reranks_an_existing_index_reusing_stored_memories(rag, vector_index, calls):
    candidates = vector_index.as_retriever(similarity_top_k=6).retrieve(QUESTION)
    out = ClaraNodePostprocessor(rag, top_n=3).postprocess_nodes(candidates, query_str=QUESTION)
    assert calls["compress"] == []  # the index's texts are stored chunks: found by content
    texts = [n.node.text for n in candidates]
    scores, idx = ClaraModel.rank(rag.model.encode_query([QUESTION]), rag.model.compress(texts), k=3)
    assert [n.node.node_id for n in out] == [candidates[i].node.node_id for i in idx[0].tolist()]
    assert [n.score for n in out] == pytest.approx(scores[0].tolist(), abs=1e-4)


def test_postprocessor_compresses_unknown_nodes_and_needs_a_query(rag, calls):
    nodes = [NodeWithScore(node=TextNode(text=t)) for t in [CORPUS[0], "Rome is the capital of Italy."]]
    out = rag.as_llama_index_postprocessor(top_n=5).postprocess_nodes(nodes, query_str=QUESTION)
    assert calls["compress"] == [["Rome is the capital of Italy."]]
    assert sorted(n.node.node_id for n in out) == sorted(n.node.node_id for n in nodes)
    with pytest.raises(InputError, match="needs the query"):
        ClaraNodePostprocessor(rag).postprocess_nodes(nodes)


def test_query_engine_answers_from_stored_memories_with_sources(rag, calls):
    response = make_query_engine(rag, k=2, max_new_tokens=MAX_NEW).query(QUESTION)
    ids = [h.id for h in rag.search(QUESTION, k=2)]
    assert isinstance(response, Response)
    assert [n.node.node_id for n in response.source_nodes] == ids
    assert calls["compress"] == []
    assert calls["generate"] == [[QUESTION]]  # the question alone: no node text in the prompt
    expected = rag.model.generate([QUESTION], [stored_memories(rag, ids)], max_new_tokens=MAX_NEW)[0]
    assert response.response == expected


async def test_query_engine_async_and_streaming(rag):
    plain = rag.as_llama_index_query_engine(k=2, max_new_tokens=MAX_NEW)
    expected = plain.query(QUESTION).response
    assert (await plain.aquery(QUESTION)).response == expected
    streaming = make_query_engine(rag, k=2, streaming=True, max_new_tokens=MAX_NEW)
    sync = streaming.query(QUESTION)
    assert isinstance(sync, StreamingResponse)
    assert "".join(sync.response_gen).strip() == expected
    assert len(sync.source_nodes) == 2
    result = await streaming.aquery(QUESTION)
    assert isinstance(result, AsyncStreamingResponse)
    assert "".join([piece async for piece in result.async_response_gen()]).strip() == expected
    assert [n.node.node_id for n in result.source_nodes] == [n.node.node_id for n in sync.source_nodes]


def test_postprocessor_and_synthesizer_on_a_vector_index(rag, vector_index, calls):
    engine = RetrieverQueryEngine(
        retriever=vector_index.as_retriever(similarity_top_k=6),
        node_postprocessors=[ClaraNodePostprocessor(rag, top_n=2)],
        response_synthesizer=ClaraSynthesizer(rag=rag),
    )
    response = engine.query(QUESTION)
    assert len(response.source_nodes) == 2
    assert calls["compress"] == []  # reranking and generation both reused the stored memories
    assert calls["generate"] == [[QUESTION]]
    assert response.response


def test_llm_complete_stream_and_chat(rag, calls):
    llm = ClaraLLM(rag=rag, max_new_tokens=MAX_NEW, k=2)
    assert llm.metadata.num_output == MAX_NEW
    assert llm.metadata.context_window == TEXT_WINDOW  # text is never read: all nodes go in one prompt
    assert not llm.metadata.is_chat_model
    text = "Rome is the capital of Italy."
    answer = llm.complete(QUESTION, nodes=[text])
    assert calls["compress"] == [[text]]
    assert answer.text == rag.model.generate([QUESTION], [rag.model.compress([text])], max_new_tokens=MAX_NEW)[0]
    streamed = list(llm.stream_complete(QUESTION, nodes=[text]))
    assert streamed[-1].text.strip() == answer.text
    assert "".join(r.delta for r in streamed) == streamed[-1].text
    chat = llm.chat([ChatMessage(role="system", content=text), ChatMessage(role="user", content=QUESTION)])
    assert chat.message.content == answer.text
    retrieved = llm.complete(QUESTION)  # no nodes: the k best chunks of the store
    assert [h.id for h in retrieved.raw["sources"]] == [h.id for h in rag.search(QUESTION, k=2)]


async def test_llm_async(rag):
    llm = ClaraLLM(rag=rag, max_new_tokens=MAX_NEW)
    sync = llm.complete(QUESTION, nodes=[CORPUS[0]]).text
    assert (await llm.acomplete(QUESTION, nodes=[CORPUS[0]])).text == sync
    pieces = [r.delta async for r in await llm.astream_complete(QUESTION, nodes=[CORPUS[0]])]
    assert "".join(pieces).strip() == sync


def test_synthesizer_called_with_text_chunks_compresses_them(rag, calls):
    # LlamaIndex code that calls get_response directly hands over text only: it is compressed, not pasted
    synthesizer = ClaraSynthesizer(rag=rag, max_new_tokens=MAX_NEW)
    text = "Vienna is the capital of Austria."
    answer = synthesizer.get_response(QUESTION, [text])
    assert calls["compress"] == [[text]]
    assert calls["generate"] == [[QUESTION]]
    assert answer == rag.model.generate([QUESTION], [rag.model.compress([text])], max_new_tokens=MAX_NEW)[0]


def test_synthesizer_refuses_a_text_llm(rag):
    with pytest.raises(InputError, match="must be a ClaraLLM"):
        ClaraSynthesizer(llm=MockEmbedding(embed_dim=2))
    with pytest.raises(InputError, match="needs llm"):
        ClaraSynthesizer()
    with pytest.raises(InputError, match="set it on the llm"):
        ClaraSynthesizer(llm=ClaraLLM(rag=rag), max_new_tokens=5)
    with pytest.raises(InputError, match="needs a user message"):
        ClaraLLM(rag=rag).chat([ChatMessage(role="system", content="context only")])
