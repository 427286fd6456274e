"""LlamaIndex's documented patterns with ClaraLLM, asserting which chunks the generator read.

``index.as_query_engine(llm=ClaraLLM(...))`` and ``index.as_chat_engine(llm=...)`` send LlamaIndex's own QA
prompts (``{context_str}`` + ``{query_str}``); ClaraLLM answers ``query_str`` from the chunks of ``context_str``.
The spy records what reached the generator: it must be the user's question and exactly the source nodes.
"""

from __future__ import annotations

import pytest
from llama_index.core import Document as LlamaDocument
from llama_index.core import SimpleDirectoryReader, VectorStoreIndex
from llama_index.core.chat_engine import CondensePlusContextChatEngine
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import QueryBundle
from llama_index.core.vector_stores import FilterOperator, MetadataFilter, MetadataFilters

from clara_plugins.adapters import PromptError
from clara_plugins.adapters.llama_index import ClaraChatEngine, ClaraLLM, filters_to_where
from clara_plugins.errors import InputError
from tests.unit.test_langchain import CORPUS, QUESTION, build_rag
from tests.unit.test_langchain_patterns import read  # noqa: F401  (the generator spy fixture)

MAX_NEW = 4


@pytest.fixture(scope="module")
def rag(tiny_model):
    return build_rag(tiny_model)


@pytest.fixture(scope="module")
def index():
    """A plain LlamaIndex index over the same texts, with metadata, and an offline stand-in embedding."""
    docs = [LlamaDocument(text=t, metadata={"n": i}) for i, t in enumerate(CORPUS)]
    return VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))


def words(texts) -> list[str]:
    return " ".join(texts).split()


def assert_read_sources(read, source_nodes, question=QUESTION):  # noqa: F811
    """The last generation read the source nodes' texts (a long node as its chunks), for ``question``."""
    asked, _, texts = read[-1]
    assert asked == question
    assert words(texts) == words(n.node.get_content() for n in source_nodes)


# ---- index.as_query_engine(llm=ClaraLLM) ------------------------------------------------------------------------


def test_query_engine_of_an_index_reads_exactly_the_source_nodes(rag, index, read):  # noqa: F811
    engine = index.as_query_engine(llm=ClaraLLM(rag=rag, max_new_tokens=MAX_NEW), similarity_top_k=3)
    response = engine.query(QUESTION)
    assert len(response.source_nodes) == 3 and len(read) == 1
    assert_read_sources(read, response.source_nodes)


@pytest.mark.slow
async def test_query_engine_of_an_index_async_and_streaming(rag, index, read):  # noqa: F811
    llm = ClaraLLM(rag=rag, max_new_tokens=MAX_NEW)
    response = await index.as_query_engine(llm=llm, similarity_top_k=2).aquery(QUESTION)
    assert_read_sources(read, response.source_nodes)
    streaming = index.as_query_engine(llm=llm, similarity_top_k=2, streaming=True).query(QUESTION)
    "".join(streaming.response_gen)
    assert_read_sources(read, streaming.source_nodes)
    astreaming = await index.as_query_engine(llm=llm, similarity_top_k=2, streaming=True).aquery(QUESTION)
    _ = [t async for t in astreaming.async_response_gen()]
    assert_read_sources(read, astreaming.source_nodes)


def test_query_engine_over_clara_retriever_with_text_synthesizer_reads_stored_ids(rag, read):  # noqa: F811
    from llama_index.core.query_engine import RetrieverQueryEngine

    retriever = rag.as_llama_index_retriever(similarity_top_k=3)
    engine = RetrieverQueryEngine.from_args(retriever, llm=ClaraLLM(rag=rag, max_new_tokens=MAX_NEW))
    response = engine.query(QUESTION)
    assert read[-1][:2] == (QUESTION, [n.node.node_id for n in response.source_nodes])


def test_refine_mode_is_refused(rag, index, read):  # noqa: F811
    engine = index.as_query_engine(
        llm=ClaraLLM(rag=rag, max_new_tokens=MAX_NEW), similarity_top_k=3, response_mode="refine"
    )
    with pytest.raises(PromptError, match="refine prompt"):
        engine.query(QUESTION)


# ---- chat engines ------------------------------------------------------------------------------------------------


def test_index_as_chat_engine_first_turn_and_the_condense_step(rag, index, read):  # noqa: F811
    engine = index.as_chat_engine(llm=ClaraLLM(rag=rag, max_new_tokens=MAX_NEW), similarity_top_k=2)
    response = engine.chat(QUESTION)
    assert_read_sources(read, response.source_nodes)
    with pytest.raises(PromptError, match="skip_condense=True"):
        engine.chat("And Germany?")  # a follow-up needs the condense step, which ClaraLLM cannot do
    skipping = index.as_chat_engine(
        llm=ClaraLLM(rag=rag, max_new_tokens=MAX_NEW), similarity_top_k=2, skip_condense=True
    )
    skipping.chat(QUESTION)
    follow_up = skipping.chat("What is the capital of Germany?")
    assert_read_sources(read, follow_up.source_nodes, "What is the capital of Germany?")


def test_context_chat_mode_reads_exactly_the_source_nodes(rag, index, read):  # noqa: F811
    engine = index.as_chat_engine(
        chat_mode="context", llm=ClaraLLM(rag=rag, max_new_tokens=MAX_NEW), similarity_top_k=2
    )
    assert_read_sources(read, engine.chat(QUESTION).source_nodes)
    follow_up = engine.chat("What is the capital of Germany?")  # no condense step in this mode
    assert_read_sources(read, follow_up.source_nodes, "What is the capital of Germany?")


def test_condense_plus_context_engine_over_clara_retriever(rag, read):  # noqa: F811
    engine = CondensePlusContextChatEngine.from_defaults(
        retriever=rag.as_llama_index_retriever(similarity_top_k=2),
        llm=ClaraLLM(rag=rag, max_new_tokens=MAX_NEW),
        skip_condense=True,
    )
    response = engine.chat(QUESTION)
    assert read[-1][:2] == (QUESTION, [n.node.node_id for n in response.source_nodes])
    streamed = engine.stream_chat(QUESTION)
    "".join(streamed.response_gen)
    assert read[-1][:2] == (QUESTION, [n.node.node_id for n in streamed.source_nodes])


async def test_clara_chat_engine_bridge(rag, read):  # noqa: F811
    engine = rag.as_llama_index_chat_engine(similarity_top_k=2, max_new_tokens=MAX_NEW)
    assert isinstance(engine, ClaraChatEngine)
    first = engine.chat(QUESTION)
    assert read[-1][:2] == (QUESTION, [n.node.node_id for n in first.source_nodes])
    assert [n.node.node_id for n in first.source_nodes] == [h.id for h in rag.search(QUESTION, k=2)]
    second = await engine.achat("What is the capital of Germany?")
    assert read[-1][:2] == ("What is the capital of Germany?", [n.node.node_id for n in second.source_nodes])
    streamed = engine.stream_chat(QUESTION)
    "".join(streamed.response_gen)
    assert read[-1][:2] == (QUESTION, [n.node.node_id for n in streamed.source_nodes])
    astreamed = await engine.astream_chat(QUESTION)
    _ = [t async for t in astreamed.async_response_gen()]
    assert read[-1][:2] == (QUESTION, [n.node.node_id for n in astreamed.source_nodes])
    assert len(engine.chat_history) == 8  # the engine's memory keeps the turns


# ---- keyword names and filters -----------------------------------------------------------------------------------


def test_similarity_top_k_and_metadata_filters_everywhere(rag, read):  # noqa: F811
    engine = rag.as_llama_index_query_engine(similarity_top_k=2, max_new_tokens=MAX_NEW)
    assert len(engine.query(QUESTION).source_nodes) == 2
    filters = MetadataFilters(
        filters=[MetadataFilter(key="source", value=["src1", "src3"], operator=FilterOperator.IN)]
    )
    nodes = rag.as_llama_index_retriever(similarity_top_k=5, filters=filters).retrieve(QUESTION)
    assert sorted(n.node.metadata["source"] for n in nodes) == ["src1", "src3"]
    either = MetadataFilters(
        filters=[MetadataFilter(key="source", value="src0"), MetadataFilter(key="source", value="src2")],
        condition="or",
    )
    assert filters_to_where(either) == {"$or": [{"source": {"$eq": "src0"}}, {"source": {"$eq": "src2"}}]}
    with pytest.raises(InputError, match="operator 'text_match'"):
        filters_to_where(MetadataFilters(filters=[MetadataFilter(key="s", value="x", operator="text_match")]))
    with pytest.raises(InputError, match="not both"):
        rag.as_llama_index_retriever(k=2, similarity_top_k=3)


def test_retriever_mmr_mode_uses_clara_memories(rag):
    import torch

    from clara_plugins.retrieval import mmr_order

    mmr = {"mmr_threshold": 0.2, "mmr_prefetch_k": 6}
    retriever = rag.as_llama_index_retriever(similarity_top_k=3, vector_store_query_mode="mmr", vector_store_kwargs=mmr)
    hits = rag.search(QUESTION, k=6)
    mems = torch.nn.functional.normalize(rag.memories_for(hits).flatten(1), dim=-1)
    order = mmr_order(torch.tensor([h.score for h in hits]), mems @ mems.T, 3, 0.2)
    assert [n.node.node_id for n in retriever.retrieve(QUESTION)] == [hits[i].id for i in order]
    with pytest.raises(InputError, match=r"vector_store_kwargs \['mmr_threshold'\] not supported"):
        rag.as_llama_index_retriever(vector_store_kwargs={"mmr_threshold": 0.5})
    with pytest.raises(InputError, match="vector_store_query_mode='sparse'"):
        rag.as_llama_index_retriever(vector_store_query_mode="sparse")
    engine = rag.as_llama_index_query_engine(similarity_top_k=3, vector_store_query_mode="mmr", vector_store_kwargs=mmr)
    assert [n.node.node_id for n in engine.retrieve(QueryBundle(QUESTION))] == [hits[i].id for i in order]
    with pytest.raises(TypeError, match="similarity_topk"):
        rag.as_llama_index_chat_engine(similarity_topk=3)


# ---- loaders' documents and nodes indexed directly ---------------------------------------------------------------


def test_index_takes_loader_documents_and_nodes(tiny_model, tmp_path):
    rag = build_rag(tiny_model)
    for i, text in enumerate(CORPUS[:3]):
        (tmp_path / f"f{i}.txt").write_text(text)
    docs = SimpleDirectoryReader(str(tmp_path)).load_data()
    assert rag.index(docs, show_progress=False).docs_added == 3
    chunks = rag.store.records_by_doc([d.doc_id for d in docs])
    assert sorted(c.metadata["file_name"] for c in chunks) == ["f0.txt", "f1.txt", "f2.txt"]
    nodes = SentenceSplitter(chunk_size=40, chunk_overlap=0).get_nodes_from_documents(
        [LlamaDocument(text=CORPUS[-1], id_="rev", metadata={"topic": "history"})]
    )
    assert rag.index(nodes, show_progress=False).docs_added == len(nodes) > 1
    stored = rag.store.records_by_doc([n.node_id for n in nodes])
    assert {c.doc_id for c in stored} == {n.node_id for n in nodes}
    assert all(c.metadata == {"topic": "history"} for c in stored)
