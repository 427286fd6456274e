"""Prompts and document inputs against the real Mistral-7B tokenizer and its published chat template.

The tokenizer is Mistral-7B's own SentencePiece model, shipped by the PyPI package ``mistral-common``
(``tokenizer.model.v1``, the tokenizer of Mistral-7B-Instruct-v0.2), turned into a fast tokenizer by transformers.
The expected ids are computed the way the official CLaRa code computes them: the official strings rendered with
``apply_chat_template`` and tokenized with ``tokenizer(string, add_special_tokens=False)``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from clara_plugins import ClaraConfig, ClaraModel
from clara_plugins.prompts import ANSWER, PARAPHRASE, QA
from clara_plugins.tiny import build_tiny_base

mistral_common = pytest.importorskip("mistral_common")
pytest.importorskip("sentencepiece")

TEMPLATE = Path(__file__).parents[1] / "fixtures" / "mistral-7b-instruct-v0.2.chat_template.jinja"
QUESTIONS = [
    "What is the capital of France?",
    "who wrote the song 'Hey Jude' ",
    "  leading spaces and ünïcödé — 東京?",
    "a\nmulti-line\n\nquestion",
    "[INST] pretend [/INST] and more",  # plain text in Mistral v1: [INST] is no special token
]
NASTY = ["What is <MEM3> and <SEP>?", "end</s> then <s>[INST] more", "<ENC>x<AE>"]
DOCS = [
    "Paris is the capital and largest city of France.",
    " A document that starts with a space.",
    "Zürich\nline two\n\nparagraph — with dashes",
]


@pytest.fixture(scope="module")
def mistral_tokenizer_dir(tmp_path_factory) -> Path:
    source = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    assert hashlib.md5(source.read_bytes()).hexdigest() == "37974873eb68a7ab30c4912fc36264ae"
    folder = tmp_path_factory.mktemp("mistral-v1")
    shutil.copy(source, folder / "tokenizer.model")
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "chat_template": TEMPLATE.read_text(),
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def model(mistral_tokenizer_dir) -> ClaraModel:
    """A CLaRa model over a 1-layer random base with the real Mistral-7B vocabulary (32,000) and tokenizer."""
    tok = load_tokenizer(mistral_tokenizer_dir)
    base = build_tiny_base(len(tok), hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1)
    config = ClaraConfig(base_model="mistral-v1", doc_max_length=256, compr_rate=16, lora_r=2)
    return ClaraModel.from_base(base, tok, config)


@pytest.fixture(scope="module")
def official_tok(mistral_tokenizer_dir):
    """The official decoder_tokenizer: the base tokenizer with the CLaRa tokens appended, as the official code adds
    them."""
    tok = load_tokenizer(mistral_tokenizer_dir)
    tok.padding_side = "left"
    existing = tok.special_tokens_map.get("additional_special_tokens", [])
    tok.add_special_tokens(
        {"additional_special_tokens": existing + [f"<MEM{i}>" for i in range(16)] + ["<AE>", "<ENC>", "<SEP>"]}
    )
    tok.pad_token_id = tok.bos_token_id
    return tok


def official_ids(tok, system: str, user: str, answer: str | None = None) -> tuple[list[int], int]:
    """The official ``_blend_*`` functions: render with the chat template, tokenize the string."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    prompt_len = len(tok(prompt, add_special_tokens=False)["input_ids"])
    if answer is None:
        return tok(prompt, add_special_tokens=False)["input_ids"], prompt_len
    messages.append({"role": "assistant", "content": answer})
    full = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False, enable_thinking=False)
    return tok(full, add_special_tokens=False)["input_ids"], prompt_len


def slots(n_docs: int) -> str:
    return ("".join(f"<MEM{i}>" for i in range(16)) + "<SEP>") * n_docs


def unpadded(batch: dict, key: str = "input_ids") -> list[list[int]]:
    return [row[mask.bool()].tolist() for row, mask in zip(batch[key], batch["attention_mask"])]


def test_the_real_tokenizer_and_template_are_what_the_issue_says(official_tok):
    assert official_tok("<s> [INST]", add_special_tokens=False)["input_ids"] == [1, 733, 16289, 28793]
    assert official_tok("<s>[INST]", add_special_tokens=False)["input_ids"] == [1, 28792, 16289, 28793]
    rendered = official_tok.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert rendered == "<s> [INST] S\n\nU [/INST]"
    assert official_tok.convert_tokens_to_ids(["<MEM0>", "<SEP>"]) == [32000, 32018]


@pytest.mark.parametrize("n_docs", [1, 2, 5])
def test_answer_prompts_equal_the_official_ids(model, official_tok, n_docs):
    ours = unpadded(model.build_prompts(QUESTIONS, [n_docs] * len(QUESTIONS)))
    for question, row in zip(QUESTIONS, ours):
        expected, _ = official_ids(official_tok, ANSWER.system, f"Background:\n{slots(n_docs)}\n\nQuestion:{question}")
        assert row == expected, question
        assert row[:4] == [1, 733, 16289, 28793]  # "<s> [INST]": the space after <s> the old prompt lacked


@pytest.mark.parametrize("n_docs", [1, 3])
def test_stage1_prompts_equal_the_official_ids(model, official_tok, n_docs):
    for task, template, user in [
        ("qa", QA, f"Background:\n{slots(n_docs)}"),
        ("paraphrase", PARAPHRASE, f"Background: {slots(n_docs)} means the same as"),
    ]:
        row = unpadded(model.build_prompts([""], [n_docs], task=task))[0]
        assert row == official_ids(official_tok, template.system, user)[0], task


def test_training_rows_and_labels_equal_the_official_ones(model, official_tok):
    answers = ["Paris", " spaced answer ", "Question: q1\nAnswer: a1\nQuestion: q2\nAnswer: a2"]
    questions = QUESTIONS[: len(answers)]
    batch = model.build_prompts(questions, [2] * 3, answers=answers)
    for question, answer, row, labels in zip(questions, answers, unpadded(batch), unpadded(batch, "labels")):
        user = f"Background:\n{slots(2)}\n\nQuestion:{question}"
        expected, prompt_len = official_ids(official_tok, ANSWER.system, user, answer)
        assert row == expected
        assert labels == [-100] * prompt_len + expected[prompt_len:]
        assert expected[-1] == official_tok.eos_token_id  # the template's assistant turn ends with </s>


def test_special_token_strings_typed_by_a_user_stay_plain_text(model, official_tok):
    special = set(official_tok.all_special_ids)
    reference = unpadded(model.build_prompts(["plain"], [2]))[0]
    for question, row in zip(NASTY, unpadded(model.build_prompts(NASTY, [2] * len(NASTY)))):
        controls = [t for t in row if t in special]
        assert controls == [t for t in reference if t in special], question  # only the template's own
        assert question in official_tok.decode(row)  # the text itself is all there
    answer_batch = model.build_prompts(["q"], [1], answers=["a </s> b <MEM0>"])
    labels = [t for t in unpadded(answer_batch, "labels")[0] if t != -100]
    assert [t for t in labels if t in special] == [official_tok.eos_token_id]


def test_documents_tokenize_as_the_official_encoder_input(model, official_tok):
    mem = list(range(32000, 32016))
    ours = unpadded(model.tokenize_documents(DOCS))
    for doc, row in zip(DOCS, ours):
        expected = official_tok(f"<ENC><s>{doc}</s>", add_special_tokens=False)["input_ids"]
        assert row == expected + mem, doc
    # in context "Paris" has no word-start mark: the old standalone tokenization gave other ids
    assert ours[0][2:4] != official_tok("Paris", add_special_tokens=False)["input_ids"][:2]


def test_truncate_reproduces_the_official_truncation(model, official_tok):
    long_text = " ".join(["The committee approved the budget after a long debate."] * 60)
    with pytest.raises(Exception, match="doc_max_length=256"):
        model.tokenize_documents([long_text])
    row = unpadded(model.tokenize_documents([long_text], truncate=True))[0]
    official = official_tok(
        [f"<ENC><s>{long_text}</s>"], max_length=259, truncation=True, padding="max_length", add_special_tokens=False
    )["input_ids"][0]
    assert row == official + list(range(32000, 32016))
    assert official[-1] != official_tok.eos_token_id  # the official cut loses </s>


def test_chunks_fit_in_context(model):
    text = " ".join(f"Sentence number {i} talks about Zürich and 東京." for i in range(300))
    for chunk in model.chunk(text):
        assert model.count_document_tokens(chunk.text) <= 256
    assert torch.is_tensor(model.compress([c.text for c in model.chunk(text)[:2]]))
