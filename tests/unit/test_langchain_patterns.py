"""LangChain's documented RAG patterns with ClaraChatModel, asserting which chunks the generator read.

Every test spies on ``ClaraRAG.answer_from_hits`` / ``stream_from_hits`` (the real ones still run): the question
and the chunks handed to the generator must be the user's question and exactly the retriever's chunks.
"""

from __future__ import annotations

import pytest
from langchain_classic.chains import create_retrieval_chain
from langchain_classic.chains.combine_documents import create_stuff_documents_chain
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_text_splitters import RecursiveCharacterTextSplitter

from clara_plugins.adapters import PromptError
from clara_plugins.adapters._stuffed import RAG_PROMPT_HUB, RAG_TUTORIAL_SYSTEM
from clara_plugins.adapters.langchain import ClaraContextPacker
from clara_plugins.errors import InputError
from clara_plugins.retrieval import mmr_order
from tests.unit.test_langchain import CORPUS, QUESTION, BM25Retriever, build_rag

MAX_NEW = 4
# LangChain hub "rlm/rag-prompt" (one human message) and the system prompt of LangChain's RAG tutorial
RAG_PROMPT = ChatPromptTemplate.from_messages([("human", RAG_PROMPT_HUB)])
TUTORIAL_SYSTEM = RAG_TUTORIAL_SYSTEM


@pytest.fixture(scope="module")
def rag(tiny_model):
    return build_rag(tiny_model)


@pytest.fixture
def read(rag, monkeypatch):
    """``(question, [chunk ids], [chunk texts])`` of every generation during the test."""
    seen: list[tuple[str, list[str], list[str]]] = []
    for name in ("answer_from_hits", "stream_from_hits"):
        real = getattr(rag, name)

        def spy(question, hits, *args, _real=real, **kwargs):
            hits = list(hits)
            seen.append((question, [h.id for h in hits], [h.text for h in hits]))
            return _real(question, hits, *args, **kwargs)

        monkeypatch.setattr(rag, name, spy)
    return seen


def format_docs(docs: list[Document]) -> str:
    return "\n\n".join(d.page_content for d in docs)  # the tutorials' helper


def sources(message) -> list[str]:
    return [s["id"] for s in message.response_metadata["clara_sources"]]


# ---- LCEL with the rag-prompt template ---------------------------------------------------------------------------


def lcel_rag_prompt_chain(rag):
    retriever = rag.as_langchain_retriever(k=3)
    chat = rag.as_langchain_chat_model(max_tokens=MAX_NEW)
    return retriever, {"context": retriever | format_docs, "question": RunnablePassthrough()} | RAG_PROMPT | chat


def test_lcel_rag_prompt_reads_exactly_the_retrieved_chunks(rag, read):
    retriever, chain = lcel_rag_prompt_chain(rag)
    expected = [d.id for d in retriever.invoke(QUESTION)]
    message = chain.invoke(QUESTION)
    assert sources(message) == expected
    assert read == [(QUESTION, expected, [rag.store.get_records([i])[i].text for i in expected])]


@pytest.mark.slow
async def test_lcel_rag_prompt_async_and_streaming(rag, read):
    retriever, chain = lcel_rag_prompt_chain(rag)
    expected = [d.id for d in retriever.invoke(QUESTION)]
    assert sources(await chain.ainvoke(QUESTION)) == expected
    chunks = list(chain.stream(QUESTION))
    assert sources(chunks[-1]) == expected
    async_chunks = [c async for c in chain.astream(QUESTION)]
    assert sources(async_chunks[-1]) == expected
    assert [(q, ids) for q, ids, _ in read] == [(QUESTION, expected)] * 3


def test_rag_prompt_with_foreign_documents_reads_their_chunks(rag, read):
    """Documents from another retriever: stored texts are found by content, a whole page is cut as indexing cuts."""
    docs = BM25Retriever(texts=CORPUS, k=3).invoke("French Revolution capital France")
    chat = rag.as_langchain_chat_model(max_tokens=MAX_NEW)
    (RAG_PROMPT | chat).invoke({"context": format_docs(docs), "question": QUESTION})
    question, _, texts = read[-1]
    assert question == QUESTION
    assert " ".join(texts).split() == " ".join(d.page_content for d in docs).split()
    assert set(rag.store.get_records(read[-1][1])) == set(read[-1][1])  # every piece found in the store by content


# ---- create_retrieval_chain (langchain_classic), the RAG tutorial's system prompt -------------------------------


def retrieval_chain(rag, k=2):
    prompt = ChatPromptTemplate.from_messages([("system", TUTORIAL_SYSTEM), ("human", "{input}")])
    stuff = create_stuff_documents_chain(rag.as_langchain_chat_model(max_tokens=MAX_NEW), prompt)
    return create_retrieval_chain(rag.as_langchain_retriever(k=k), stuff)


def test_create_retrieval_chain_reads_exactly_the_context_documents(rag, read):
    result = retrieval_chain(rag).invoke({"input": QUESTION})
    expected = [d.id for d in result["context"]]
    assert len(expected) == 2 and isinstance(result["answer"], str)
    assert [(q, ids) for q, ids, _ in read] == [(QUESTION, expected)]


@pytest.mark.slow
async def test_create_retrieval_chain_async_and_streaming(rag, read):
    chain = retrieval_chain(rag)
    result = await chain.ainvoke({"input": QUESTION})
    streamed = list(chain.stream({"input": QUESTION}))
    context = next(part["context"] for part in streamed if "context" in part)
    assert "".join(part.get("answer", "") for part in streamed) is not None
    expected = [d.id for d in result["context"]]
    assert [d.id for d in context] == expected
    assert [(q, ids) for q, ids, _ in read] == [(QUESTION, expected)] * 2


def test_retrieval_qa_stuff_chain_reads_exactly_the_source_documents(rag, read):
    from langchain_classic.chains import RetrievalQA

    qa = RetrievalQA.from_chain_type(
        llm=rag.as_langchain_chat_model(max_tokens=MAX_NEW),
        retriever=rag.as_langchain_retriever(k=3),
        return_source_documents=True,
    )
    result = qa.invoke({"query": QUESTION})
    assert [(q, ids) for q, ids, _ in read] == [(QUESTION, [d.id for d in result["source_documents"]])]


# ---- ContextualCompressionRetriever over BM25, then the packer ---------------------------------------------------


def test_compression_retriever_then_packer_reads_the_reranked_documents(rag, read):
    reranking = ContextualCompressionRetriever(
        base_compressor=rag.as_langchain_compressor(top_n=2), base_retriever=BM25Retriever(texts=CORPUS, k=5)
    )
    chat = rag.as_langchain_chat_model(max_tokens=MAX_NEW)
    chain = {"context": reranking, "question": RunnablePassthrough()} | ClaraContextPacker() | chat
    message = chain.invoke(QUESTION)
    docs = reranking.invoke(QUESTION)
    question, ids, texts = read[-1]
    assert question == QUESTION
    assert " ".join(texts).split() == " ".join(d.page_content for d in docs).split()  # a long page: its chunks
    assert sources(message) == ids
    assert set(rag.store.get_records(ids)) == set(ids)  # BM25 documents carry no store id: found by content


# ---- what is refused ---------------------------------------------------------------------------------------------


def test_unknown_template_with_pasted_chunks_is_refused_without_a_search(rag, read, monkeypatch):
    searched = []
    monkeypatch.setattr(rag, "search", lambda *a, **k: searched.append(a) or [])
    chat = rag.as_langchain_chat_model(max_tokens=MAX_NEW)
    prompt = ChatPromptTemplate.from_messages([("human", "Docs:\n{context}\nQ: {question}")])
    with pytest.raises(PromptError, match="ClaraContextPacker"):
        (prompt | chat).invoke({"context": "\n".join(CORPUS[:2]), "question": QUESTION})
    with pytest.raises(PromptError, match="more than the query reasoner reads"):
        chat.invoke("Please answer. " * 40 + QUESTION)
    assert searched == [] and read == []


def test_plain_question_still_retrieves(rag, read):
    message = rag.as_langchain_chat_model(max_tokens=MAX_NEW, k=2).invoke(QUESTION)
    assert sources(message) == [h.id for h in rag.search(QUESTION, k=2)]


# ---- retriever arguments -----------------------------------------------------------------------------------------


def test_retriever_search_kwargs_are_honoured(rag):
    assert len(rag.as_langchain_retriever(search_kwargs={"k": 1}).invoke(QUESTION)) == 1
    scored = rag.search(QUESTION, k=4)
    strict = rag.as_langchain_retriever(
        search_type="similarity_score_threshold", search_kwargs={"score_threshold": 0.99}
    ).invoke(QUESTION)
    assert [d.id for d in strict] == [h.id for h in scored if h.score >= 0.99]
    middle = scored[1].score
    kept = rag.as_langchain_retriever(
        search_type="similarity_score_threshold", search_kwargs={"score_threshold": middle}
    ).invoke(QUESTION)
    assert [d.id for d in kept] == [h.id for h in scored[:2]]
    only = rag.as_langchain_retriever(search_kwargs={"k": 5, "filter": {"source": "src2"}}).invoke(QUESTION)
    assert {d.metadata["source"] for d in only} == {"src2"}


def test_retriever_mmr_uses_clara_memories(rag):
    import torch

    docs = rag.as_langchain_retriever(search_type="mmr", search_kwargs={"k": 3, "fetch_k": 6, "lambda_mult": 0.2})
    hits = rag.search(QUESTION, k=6)
    mems = torch.nn.functional.normalize(rag.memories_for(hits).flatten(1), dim=-1)
    order = mmr_order(torch.tensor([h.score for h in hits]), mems @ mems.T, 3, 0.2)
    assert [d.id for d in docs.invoke(QUESTION)] == [hits[i].id for i in order]


def test_retriever_refuses_unknown_arguments_naming_them(rag):
    with pytest.raises(Exception, match="search_type='nearest'"):
        rag.as_langchain_retriever(search_type="nearest")
    with pytest.raises(Exception, match=r"\['kk'\]"):
        rag.as_langchain_retriever(search_kwargs={"kk": 1})
    with pytest.raises(Exception, match=r"\['fetch_k'\] not supported with search_type='similarity'"):
        rag.as_langchain_retriever(search_kwargs={"fetch_k": 10})
    with pytest.raises(Exception, match="needs a numeric score_threshold"):
        rag.as_langchain_retriever(search_type="similarity_score_threshold")
    with pytest.raises(InputError, match=r"\['lambda'\]"):
        rag.as_langchain_retriever().invoke(QUESTION, **{"lambda": 0.5})


# ---- documents from loaders and splitters ------------------------------------------------------------------------


def test_index_takes_langchain_documents_keeping_ids_and_metadata(tiny_model):
    rag = build_rag(tiny_model)
    page = Document(page_content=" ".join(CORPUS), id="page-1", metadata={"source": "notes.txt"})
    pieces = RecursiveCharacterTextSplitter(chunk_size=120, chunk_overlap=0).split_documents([page])
    for i, piece in enumerate(pieces):
        piece.id = f"page-1-{i}"
    result = rag.index(pieces, show_progress=False)
    assert result.docs_added == len(pieces) > 1
    chunks = rag.store.records_by_doc([p.id for p in pieces])
    assert {c.doc_id for c in chunks} == {p.id for p in pieces}
    assert all(c.metadata == {"source": "notes.txt"} for c in chunks)
    unnamed = rag.index([Document(page_content="A document without an id.")], show_progress=False)
    assert unnamed.docs_added == 1
