"""Synthesis of stage-1 rows with real LangChain / LlamaIndex fake LLMs, and stage-3 candidate mining."""

from __future__ import annotations

import pytest
from langchain_core.language_models.fake import FakeListLLM
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from llama_index.core.llms.mock import MockLLM

from clara_plugins.errors import InputError
from clara_plugins.training.synthesis import (
    call_llm,
    mine_candidates,
    parse_qa_pairs,
    stage3_rows,
    synthesize_stage1,
)

DOCS = ["The Eiffel Tower is in Paris. It was finished in 1889.", "Mount Fuji is the highest mountain in Japan."]
QA_1 = "Question: Where is the Eiffel Tower?\nAnswer: Paris\nQuestion: When was it finished?\nAnswer: 1889\n"
QA_2 = "Here you go.\nQuestion: What is the highest mountain in Japan?\nAnswer: Mount Fuji"


def test_langchain_llm_writes_qa_and_paraphrase_rows() -> None:
    llm = FakeListLLM(responses=[QA_1, "Paris hosts the Eiffel Tower, completed 1889.", QA_2, "Fuji tops Japan."])
    rows = synthesize_stage1(DOCS, llm, n_questions=5, progress=False)
    assert [r.data_type for r in rows] == ["qa", "paraphrase", "qa", "paraphrase"]
    assert rows[0].questions == ["Where is the Eiffel Tower?", "When was it finished?"]
    assert rows[0].answers == ["Paris", "1889"] and rows[0].docs == [DOCS[0]]
    assert rows[2].answers == ["Mount Fuji"]
    assert rows[3].answers == ["Fuji tops Japan."] and rows[3].docs == [DOCS[1]]


def test_langchain_chat_model_and_unparsable_output(caplog) -> None:
    chat = FakeListChatModel(responses=["no pairs here", QA_2])
    rows = synthesize_stage1(DOCS, chat, n_questions=1, paraphrase=False, progress=False)
    assert len(rows) == 1 and rows[0].docs == [DOCS[1]]  # the first document's output had no pair
    assert "no 'Question: ... Answer: ...' pair" in caplog.text


def test_llama_index_mock_llm_is_called_with_the_prompt() -> None:
    # MockLLM echoes the prompt, whose format example is itself one parsable pair
    rows = synthesize_stage1(DOCS[:1], MockLLM(), n_questions=3, paraphrase=True, progress=False)
    assert rows[0].questions == ["<question>"] and rows[0].answers == ["<short answer>"]
    assert DOCS[0] in rows[1].answers[0]  # the paraphrase prompt (echoed) contains the document


def test_callables_and_bad_llms() -> None:
    assert call_llm(lambda p: p.upper(), "abc") == "ABC"
    with pytest.raises(InputError, match="llm must be"):
        call_llm(object(), "x")
    assert parse_qa_pairs("Question: a?\nAnswer: b\nnoise\nQuestion: c?\n") == [("a?", "b")]


def test_bm25_mining_keeps_gold_and_shuffles() -> None:
    corpus = [f"document {i} about topic {i % 5} words" for i in range(30)] + ["the eiffel tower stands in paris"]
    lists = mine_candidates(["eiffel tower", "topic 3"], corpus, 6, gold=[[30], [12]], seed=1)
    assert all(len(c) == 6 and len(set(c)) == 6 for c in lists)
    assert 30 in lists[0] and 12 in lists[1]
    assert mine_candidates(["eiffel tower"], corpus, 3)[0][0] == 30  # without gold: BM25 order, best first
    rows = stage3_rows(["eiffel tower"], [["Paris"]], corpus, 4, gold=[[30]])
    assert rows[0].docs[rows[0].pos_index[0]] == corpus[30]
    with pytest.raises(InputError, match="n must be"):
        mine_candidates(["x"], corpus, 100)


def test_model_mining(tiny_model) -> None:
    corpus = [f"passage number {i} on a subject" for i in range(12)]
    lists = mine_candidates(["which passage?", "another"], corpus, 5, model=tiny_model)
    assert [len(c) for c in lists] == [5, 5] and all(0 <= d < 12 for c in lists for d in c)
