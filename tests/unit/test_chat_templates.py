"""Any Hugging Face causal LM with a chat template can be a CLaRa base: prompts are the template's own rendering.

Tiny random bases get the chat templates of well-known model families (Llama 3, ChatML as in Qwen, a template that
refuses a system role as Gemma's does). Prompt ids, training rows and labels must equal what the official code
computes from the same template (``apply_chat_template`` then ``tokenizer(string, add_special_tokens=False)``),
user text must stay plain, and stage 2 must train and answer on each.
"""

from __future__ import annotations

import pytest
import torch

from clara_plugins import ClaraConfig, ClaraModel, ConfigError
from clara_plugins.prompts import ANSWER
from clara_plugins.tiny import build_tiny_base, build_tiny_tokenizer
from clara_plugins.training.config import TrainConfig
from clara_plugins.training.data import QARow
from clara_plugins.training.trainer import train

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
NO_SYSTEM = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
FAMILIES = {
    "llama3": (LLAMA3, ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|eot_id|>"),
    "chatml": (CHATML, ["<|im_start|>", "<|im_end|>"], "<|im_end|>"),
    "no_system": (NO_SYSTEM, ["<start_of_turn>", "<end_of_turn>"], "<end_of_turn>"),
}
QUESTIONS = ["What is the capital of France?", "  spaced question?  ", "a <|im_end|> b <|eot_id|> <SEP> c"]


def family_model(name: str, passages: list[str]) -> ClaraModel:
    template, specials, eos = FAMILIES[name]
    tok = build_tiny_tokenizer(passages[:200], 800)
    tok.add_special_tokens({"additional_special_tokens": specials})
    if name == "llama3":
        tok.bos_token = "<|begin_of_text|>"
    tok.eos_token = eos
    tok.chat_template = template
    base = build_tiny_base(len(tok), hidden_size=32, num_layers=1, seed=1)
    config = ClaraConfig(base_model=f"tiny-{name}", doc_max_length=32, compr_rate=16, lora_r=4, training_stage="stage1")
    return ClaraModel.from_base(base, tok, config)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, passages) -> tuple[str, ClaraModel]:
    return request.param, family_model(request.param, passages)


def official(model: ClaraModel, family_name: str, question: str, n_docs: int, answer: str | None = None):
    """The official ``_blend_prompt_and_selected_memory_tokens``: system role, or folded when refused."""
    tok = model.tokenizer
    slots = ("".join(f"<MEM{i}>" for i in range(model.n_mem)) + "<SEP>") * n_docs
    user = f"Background:\n{slots}\n\nQuestion:{question}"
    if family_name == "no_system":
        messages = [{"role": "user", "content": ANSWER.system + "\n" + user}]
    else:
        messages = [{"role": "system", "content": ANSWER.system}, {"role": "user", "content": user}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    if answer is None:
        return prompt_ids, len(prompt_ids)
    messages.append({"role": "assistant", "content": answer})
    full = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False, enable_thinking=False)
    return tok(full, add_special_tokens=False)["input_ids"], len(prompt_ids)


def unpadded(batch: dict, key: str = "input_ids") -> list[list[int]]:
    return [row[mask.bool()].tolist() for row, mask in zip(batch[key], batch["attention_mask"])]


def test_prompts_are_the_templates_own_rendering(family):
    name, model = family
    plain = QUESTIONS[:2]
    for n_docs in (1, 3):
        for question, row in zip(plain, unpadded(model.build_prompts(plain, [n_docs] * 2))):
            assert row == official(model, name, question, n_docs)[0], (name, question)


def test_training_rows_end_with_the_templates_assistant_turn(family):
    name, model = family
    answers = ["Paris", " 42 "]
    batch = model.build_prompts(QUESTIONS[:2], [2, 2], answers=answers)
    for q, a, row, labels in zip(QUESTIONS, answers, unpadded(batch), unpadded(batch, "labels")):
        expected, prompt_len = official(model, name, q, 2, a)
        assert row == expected
        assert labels == [-100] * prompt_len + expected[prompt_len:]
        assert model.tokenizer.eos_token_id in labels  # the turn's end token is learnt


def test_control_token_strings_in_questions_stay_plain(family):
    _, model = family
    special = set(model.tokenizer.all_special_ids)
    reference = [t for t in unpadded(model.build_prompts(["x"], [1]))[0] if t in special]
    row = unpadded(model.build_prompts(QUESTIONS[2:], [1]))[0]
    assert [t for t in row if t in special] == reference


def test_stage2_trains_and_answers(family, passages, tmp_path):
    name, model = family
    docs = [p[:100] for p in passages[:8]]
    rows = [QARow(f"What does passage {i} say?", [docs[i], docs[(i + 1) % 8]], [docs[i][:12]], [0]) for i in range(8)]
    cfg = TrainConfig(
        stage="2",
        output_dir=str(tmp_path / name),
        batch_size=4,
        learning_rate=1e-2,
        max_steps=4,
        log_every=1,
        progress=False,
        eval_generate=False,
        plot=False,
        freeze_dropout=True,
        top_k=2,
        max_docs=2,
        schedule="constant",
    )
    before = model.peft_model.get_input_embeddings().weight.clone()
    trained = train(cfg, model, rows=rows)
    assert torch.equal(trained.peft_model.get_input_embeddings().weight, before)
    answer = trained.answer(["What does passage 0 say?"], [docs[:3]], k=2, max_new_tokens=4, truncate=True)[0]
    assert isinstance(answer.text, str) and len(answer.indices) == 2


def test_a_base_without_a_chat_template_gets_an_error_naming_the_fix(passages):
    tok = build_tiny_tokenizer(passages[:50], 600)
    tok.chat_template = None
    model = ClaraModel.from_base(
        build_tiny_base(len(tok), hidden_size=16, num_layers=1), tok, ClaraConfig(base_model="x", doc_max_length=32)
    )
    with pytest.raises(ConfigError, match="chat_template"):
        model.build_prompts(["q"], [1])
    model.compress(["documents still compress"])  # only prompts need the template
