"""How a prompt with the context pasted in is taken apart (``adapters._stuffed``), framework by framework."""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from llama_index.core.prompts.default_prompts import DEFAULT_TEXT_QA_PROMPT

from clara_plugins.adapters import PromptError, add_prompt_template
from clara_plugins.adapters._stuffed import RAG_TUTORIAL_SYSTEM, TEMPLATES, parse, split_context
from clara_plugins.adapters.llama_index import ClaraLLM
from tests.unit.test_langchain import CORPUS, QUESTION, build_rag
from tests.unit.test_langchain_patterns import read  # noqa: F401  (the generator spy fixture)

NOTE = "First line of a note about rivers.\n\nSecond line of the same note."  # one chunk holding a blank line


@pytest.fixture(scope="module")
def rag(tiny_model):
    rag = build_rag(tiny_model)
    rag.index([NOTE], ids=["note"], show_progress=False)
    return rag


def test_every_builtin_template_gives_back_its_slots():
    for template in TEMPLATES:
        filled = template.replace("{context}", "A.\n\nB.").replace("{question}", "Who?  ")
        found = parse(filled.replace("  ", " "))
        assert found is not None and found.context == "A.\n\nB."
        assert found.question == ("Who?" if "{question}" in template else None)
    assert parse("Who wrote Hamlet?") is None


def test_split_context_finds_stored_chunks_and_keeps_the_rest(rag):
    stored = rag.search(QUESTION, k=2)
    context = "\n\n".join([stored[0].text, NOTE, "A foreign paragraph.", stored[1].text])
    items = split_context(rag, context)
    assert [(t, (m or {}).get("clara_id")) for t, m in items] == [
        (stored[0].text, stored[0].id),
        (NOTE, "note#0"),  # a stored chunk spanning a blank line is found as one
        ("A foreign paragraph.", None),
        (stored[1].text, stored[1].id),
    ]
    headed = "n: 1\n\n" + stored[0].text + "\n\nn: 2\nlang: en\n\nA foreign paragraph."  # LlamaIndex's headers
    assert [(t, (m or {}).get("clara_id")) for t, m in split_context(rag, headed, headers=True)] == [
        (stored[0].text, stored[0].id),
        ("A foreign paragraph.", None),
    ]


def test_split_context_finds_chunks_whose_edge_whitespace_was_stripped(rag):
    chunks = rag.store.records_by_doc([f"d{len(CORPUS) - 1}"])  # the long text: its chunks end with a space
    assert any(c.text != c.text.strip() for c in chunks)
    repacked = "\n\n".join(c.text.strip() for c in chunks)  # as LlamaIndex's compact mode repacks node texts
    assert [(m or {}).get("clara_id") for _, m in split_context(rag, repacked)] == [c.id for c in chunks]


def test_split_context_finds_chunks_up_to_any_edge_whitespace(rag):
    text = "A note on lakes that ends with three spaces and a newline.   \n"
    rag.index([text], ids=["lakes"], show_progress=False)
    assert rag.store.records_by_doc(["lakes"])[0].text == text
    context = "\n\n".join(["Some foreign paragraph.", text.strip(), CORPUS[0]])
    assert [(m or {}).get("clara_id") for _, m in split_context(rag, context)] == [None, "lakes#0", "d0#0"]


def test_llm_complete_with_the_text_qa_prompt_string(rag, read):  # noqa: F811
    hits = rag.search(QUESTION, k=3)
    prompt = DEFAULT_TEXT_QA_PROMPT.format(context_str="\n\n".join(h.text for h in hits), query_str=QUESTION)
    response = ClaraLLM(rag=rag, max_new_tokens=3).complete(prompt)
    assert read[-1][:2] == (QUESTION, [h.id for h in hits])
    assert [h.id for h in response.raw["sources"]] == [h.id for h in hits]


def test_custom_template_once_registered(rag, read):  # noqa: F811
    chat = rag.as_langchain_chat_model(max_tokens=3)
    hits = rag.search(QUESTION, k=2)
    template = "Answer from these notes:\n{context}\n\nThe question: {question}"
    message = HumanMessage(template.format(context="\n\n".join(h.text for h in hits), question=QUESTION))
    with pytest.raises(PromptError, match="add_prompt_template"):
        chat.invoke([message])  # unknown: its lines are stored chunks, refused instead of searched with
    add_prompt_template(template)
    try:
        answer = chat.invoke([message])
    finally:
        TEMPLATES.remove(template)
    assert [s["id"] for s in answer.response_metadata["clara_sources"]] == [h.id for h in hits]
    assert read[-1][:2] == (QUESTION, [h.id for h in hits])


def test_template_without_question_slot_in_the_question_message_is_refused(rag, read):  # noqa: F811
    chat = rag.as_langchain_chat_model(max_tokens=3)
    system_style = RAG_TUTORIAL_SYSTEM.format(context=CORPUS[0])
    with pytest.raises(PromptError, match="no question slot"):
        chat.invoke([HumanMessage(system_style)])
    chat.invoke([SystemMessage(system_style), HumanMessage(QUESTION)])  # where it belongs: fine
    assert read[-1][:2] == (QUESTION, ["d0#0"])
