"""ClaraChatModel and ClaraContextPacker: the generator reads memories (stored or compressed), never pasted text."""

from __future__ import annotations

import pytest
import torch
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableParallel, RunnablePassthrough
from pydantic import ValidationError

from clara_plugins.adapters.langchain import (
    CONTEXT_KEY,
    ClaraChatModel,
    ClaraContextPacker,
    ClaraRetriever,
    context_message,
)
from clara_plugins.errors import InputError
from tests.unit.test_langchain import QUESTION, build_rag

MAX_TOKENS = 12


@pytest.fixture(scope="module")
def rag(tiny_model):
    return build_rag(tiny_model)


@pytest.fixture(scope="module")
def chat(rag):
    return ClaraChatModel(rag=rag, max_tokens=MAX_TOKENS)


@pytest.fixture
def calls(rag, monkeypatch):
    """What reaches the model during the test: texts compressed and (questions, memories) generated from."""
    seen = {"compress": [], "generate": [], "stream": []}
    model = rag.model
    real_compress, real_generate, real_stream = model.compress, model.generate, model.stream

    def compress(texts, *args, **kwargs):
        seen["compress"].append(list(texts))
        return real_compress(texts, *args, **kwargs)

    def generate(questions, memories, *args, **kwargs):
        seen["generate"].append((list(questions), [m.clone() for m in memories]))
        return real_generate(questions, memories, *args, **kwargs)

    def stream(question, memories, *args, **kwargs):
        seen["stream"].append((question, memories.clone()))
        return real_stream(question, memories, *args, **kwargs)

    monkeypatch.setattr(model, "compress", compress)
    monkeypatch.setattr(model, "generate", generate)
    monkeypatch.setattr(model, "stream", stream)
    return seen


def stored_memories(rag, ids: list[str]) -> torch.Tensor:
    flat = torch.from_numpy(rag.store.get_memories(ids))
    return flat.view(len(ids), rag.model.n_mem, rag.model.hidden_size)


def direct_answer(rag, question: str, memories: torch.Tensor) -> str:
    return rag.model.generate([question], [memories], max_new_tokens=MAX_TOKENS)[0]


def test_chain_answers_from_the_retrieved_documents_stored_memories(rag, chat, calls):
    retriever = ClaraRetriever(rag=rag, k=3)
    chain = {"context": retriever, "question": RunnablePassthrough()} | ClaraContextPacker() | chat | StrOutputParser()
    answer = chain.invoke(QUESTION)
    ids = [d.id for d in retriever.invoke(QUESTION)]
    assert calls["compress"] == []  # the stored memories were used, nothing was compressed
    [(questions, memories)] = calls["generate"]
    assert questions == [QUESTION]  # the documents' text never reaches the prompt
    assert torch.equal(memories[0], stored_memories(rag, ids))
    assert answer == direct_answer(rag, QUESTION, stored_memories(rag, ids))
    assert answer


def test_sources_next_to_the_answer(rag, chat):
    retriever = ClaraRetriever(rag=rag, k=2)
    answer = ClaraContextPacker() | chat
    result = RunnableParallel(context=retriever, question=RunnablePassthrough()).assign(answer=answer).invoke(QUESTION)
    ids = [d.id for d in result["context"]]
    assert [s["id"] for s in result["answer"].response_metadata["clara_sources"]] == ids


def test_plain_text_context_is_compressed_on_the_fly(rag, chat, calls):
    text = "Rome is the capital of Italy and was founded in 753 BC."
    chain = ClaraContextPacker() | chat | StrOutputParser()
    answer = chain.invoke({"context": text, "question": QUESTION})
    assert calls["compress"] == [[text]]
    [(questions, _)] = calls["generate"]
    assert questions == [QUESTION]
    assert answer == direct_answer(rag, QUESTION, rag.model.compress([text]))


def test_system_message_text_is_context_not_prompt(rag, chat, calls):
    text = "Madrid is the capital of Spain."
    prompt = ChatPromptTemplate.from_messages([("system", "{context}"), ("human", "{question}")])
    answer = (prompt | chat).invoke({"context": text, "question": QUESTION})
    assert calls["compress"] == [[text]]
    assert calls["generate"][0][0] == [QUESTION]
    assert answer.content == direct_answer(rag, QUESTION, rag.model.compress([text]))


def test_documents_from_other_sources_mix_with_stored_ones(rag, chat, calls):
    stored = ClaraRetriever(rag=rag, k=1).invoke(QUESTION)
    foreign = Document(page_content="Lisbon is the capital of Portugal.", id="some-other-store-id")
    chat.invoke([context_message(QUESTION, [*stored, foreign])])
    assert calls["compress"] == [[foreign.page_content]]
    [(_, [memories])] = calls["generate"]
    assert memories.shape[0] == 2
    assert torch.equal(memories[0], stored_memories(rag, [stored[0].id])[0])  # in the order given


def test_without_context_it_retrieves_from_the_store(rag, chat, calls):
    message = chat.invoke(QUESTION)
    hits = rag.search(QUESTION)  # the model's generation_top_k
    assert [s["id"] for s in message.response_metadata["clara_sources"]] == [h.id for h in hits]
    assert calls["compress"] == []
    assert message.content == direct_answer(rag, QUESTION, stored_memories(rag, [h.id for h in hits]))
    assert len(chat.invoke(QUESTION, k=2).response_metadata["clara_sources"]) == 2
    with pytest.raises(InputError, match="retrieve=False"):
        ClaraChatModel(rag=rag, retrieve=False).invoke(QUESTION)


def test_question_is_the_last_human_message(rag, chat, calls):
    chat.invoke([HumanMessage("first question"), AIMessage("an answer"), HumanMessage(QUESTION)])
    assert calls["generate"][0][0] == [QUESTION]


def test_stream_gives_the_invoke_answer(rag, chat, calls):
    messages = [context_message(QUESTION, ClaraRetriever(rag=rag, k=2).invoke(QUESTION))]
    chunks = list(chat.stream(messages))
    full = chat.invoke(messages)
    assert len(chunks) > 2
    assert "".join(c.content for c in chunks).strip() == full.content
    assert chunks[-1].chunk_position == "last"
    assert [c.usage_metadata is not None for c in chunks].count(True) == 1
    assert len(calls["stream"]) == 1
    assert calls["stream"][0][0] == QUESTION


class TokenCollector(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs) -> None:
        self.tokens.append(token)


def test_streaming_reports_tokens_to_callbacks(rag, chat):
    collector = TokenCollector()
    streaming = ClaraChatModel(rag=rag, max_tokens=MAX_TOKENS, streaming=True)
    message = streaming.invoke(QUESTION, config={"callbacks": [collector]})
    assert collector.tokens == [c.content for c in chat.stream(QUESTION)]  # each piece once, as streamed
    assert "".join(collector.tokens) == message.content
    assert message.content.strip() == chat.invoke(QUESTION).content


async def test_async_and_batch_match_invoke(rag, chat):
    questions = [QUESTION, "Which city is the Eiffel Tower in?"]
    expected = [chat.invoke(q).content for q in questions]
    assert [m.content for m in chat.batch(questions)] == expected
    assert [m.content for m in await chat.abatch(questions)] == expected
    assert (await chat.ainvoke(questions[0])).content == expected[0]
    pieces = [c.content async for c in chat.astream(questions[1])]
    assert "".join(pieces).strip() == expected[1]


def test_stop_sequences_cut_the_answer(rag, chat):
    full = chat.invoke(QUESTION).content
    stop = full[4:7]
    cut = full[: full.index(stop)]
    assert chat.invoke(QUESTION, stop=[stop]).content == cut
    assert "".join(c.content for c in chat.stream(QUESTION, stop=[stop])) == cut
    assert ClaraChatModel(rag=rag, max_tokens=MAX_TOKENS, stop=[stop]).invoke(QUESTION).content == cut


def test_max_tokens_and_usage(rag, chat):
    short = chat.invoke(QUESTION, max_tokens=3)
    long = chat.invoke(QUESTION)
    assert len(short.content) < len(long.content)
    assert long.content.startswith(short.content)
    one = chat.invoke([context_message(QUESTION, "Oslo is the capital of Norway.")])
    two = chat.invoke([context_message(QUESTION, ["Oslo is the capital of Norway.", "Bern is in Switzerland."])])
    # each document adds n_mem memory positions and one separator to the prompt
    assert two.usage_metadata["input_tokens"] - one.usage_metadata["input_tokens"] == rag.model.n_mem + 1
    usage = one.usage_metadata
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    # counted by re-tokenizing the answer (generate returns text only)
    assert usage["output_tokens"] == len(rag.model.tokenizer(one.content, add_special_tokens=False)["input_ids"])


def test_unsupported_options_are_refused(rag, chat):
    with pytest.raises(ValidationError, match="temperature must be None or 0"):
        ClaraChatModel(rag=rag, temperature=0.7)
    with pytest.raises(InputError, match="cannot switch models"):
        chat.invoke(QUESTION, model="gpt-4")
    with pytest.raises(InputError, match="unsupported keyword arguments"):
        chat.invoke(QUESTION, tools=[{"name": "x"}])
    with pytest.raises(InputError, match="'text' string"):
        chat.invoke([HumanMessage(QUESTION, additional_kwargs={CONTEXT_KEY: [{"id": "x"}]})])


def test_packer_input_errors():
    with pytest.raises(InputError, match="'question'"):
        ClaraContextPacker().invoke({"context": []})
    with pytest.raises(InputError, match="Documents or strings"):
        context_message(QUESTION, [42])
    packed = ClaraContextPacker(question_key="q", context_key="docs").invoke({"q": "hi", "docs": ["a", "b"]})
    [message] = packed.to_messages()
    assert message.content == "hi"
    assert [d["text"] for d in message.additional_kwargs[CONTEXT_KEY]] == ["a", "b"]


def test_bridge_passes_options(rag):
    chat = rag.as_langchain_chat_model(max_tokens=5, k=2, model="clara-tiny")
    assert isinstance(chat, ClaraChatModel)
    assert (chat.max_tokens, chat.k, chat.model_name) == (5, 2, "clara-tiny")
    assert chat.invoke(QUESTION).response_metadata["model_name"] == "clara-tiny"
    assert ClaraChatModel(rag=rag).model_name == rag.model.source  # default: where the model came from
