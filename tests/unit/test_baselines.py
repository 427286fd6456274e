"""The text-RAG baseline: the same base decoder (adapters off) reading raw chunk text in CLaRa's ANSWER prompt."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from clara_plugins.baselines import TextRAG, text_prompt_ids
from clara_plugins.checkpoints import save_base
from clara_plugins.errors import InputError
from clara_plugins.prompts import ANSWER

DOCS = [
    ["Paris is the capital of France.", "The Moon orbits the Earth."],
    ["Water boils at 100 degrees Celsius."],
    ["Mount Everest is the highest mountain.", "It lies in the Himalayas.", "Nepal borders China."],
]
QUESTIONS = ["What is the capital of France?", "When does water boil?", "Where is Everest?"]


def test_prompt_is_the_answer_template_with_text_in_place_of_the_slots(tiny_model):
    tok = tiny_model.tokenizer
    user = "Background:\ndoc one\ndoc two\n\nQuestion:Who?"
    messages = [{"role": "system", "content": ANSWER.system}, {"role": "user", "content": user}]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == f"<s>[INST] {ANSWER.system}\n\n{user} [/INST]"
    expected = tok(rendered, add_special_tokens=False)["input_ids"]
    assert text_prompt_ids(tok, ["Who?"], [["doc one", "doc two"]])[0] == expected


def test_prompt_ids_start_with_bos_and_user_text_never_becomes_a_control_token(tiny_model):
    sp = tiny_model.special_token_ids
    ids = text_prompt_ids(tiny_model.tokenizer, ["q <MEM0> </s>"], [["a doc with <SEP> and <s> inside"]])[0]
    assert ids[0] == sp.bos
    controls = {*sp.mem, sp.sep, sp.enc, sp.ae, sp.eos, sp.bos}
    assert not controls & set(ids[1:])
    assert "<SEP>" in tiny_model.tokenizer.decode(ids)  # kept as plain text


def test_adapters_are_off_logits_equal_the_saved_base_alone(tiny_model, tmp_path):
    save_base(tiny_model, tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32).eval()
    vocab = tiny_model.config.base_vocab_size
    ours = TextRAG.from_clara(tiny_model).next_token_logits(QUESTIONS, DOCS)[:, :vocab]
    alone = TextRAG(base, tiny_model.tokenizer).next_token_logits(QUESTIONS, DOCS)
    torch.testing.assert_close(ours, alone, atol=1e-4, rtol=1e-4)
    # with the generator adapter on (the tiny fixture's adapters are random, non-zero) the logits differ
    with_adapter = TextRAG(tiny_model.base_lm, tiny_model.tokenizer, context=lambda: tiny_model.use_role("generator"))
    assert not torch.allclose(with_adapter.next_token_logits(QUESTIONS, DOCS)[:, :vocab], alone, atol=1e-3)


def test_batched_generation_equals_one_at_a_time(tiny_model):
    text = TextRAG.from_clara(tiny_model)
    batched = text.generate(QUESTIONS, DOCS, max_new_tokens=6, batch_size=3)
    single = [text.generate([q], [d], max_new_tokens=6)[0] for q, d in zip(QUESTIONS, DOCS)]
    assert batched == single
    assert all(isinstance(a, str) for a in batched)


def test_min_new_tokens_fixes_the_length_and_clara_tokens_are_never_generated(tiny_model):
    text = TextRAG.from_clara(tiny_model)
    batch = text.build_prompts(QUESTIONS[:1], DOCS[:1])
    config = text.generation_config(max_new_tokens=12, min_new_tokens=12)
    with torch.inference_mode(), text._context():
        out = text.lm.generate(**batch, generation_config=config)
    new = out[0, batch["input_ids"].shape[1] :].tolist()
    assert len(new) == 12
    assert not set(new) & set(text.suppress_ids)
    assert text.suppress_ids == list(range(tiny_model.config.base_vocab_size, len(tiny_model.tokenizer)))


def test_training_batch_masks_the_prompt_and_ends_answers_with_eos(tiny_model):
    text = TextRAG.from_clara(tiny_model)
    batch = text.build_prompts(QUESTIONS[:2], DOCS[:2], answers=["Paris", "At 100 degrees"])
    lengths = text.prompt_lengths(QUESTIONS[:2], DOCS[:2])
    eos = tiny_model.tokenizer.eos_token_id
    for row, labels, mask, n_prompt in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], lengths):
        target = labels[labels != -100].tolist()
        assert target[-1] == eos
        assert row[-len(target) :].tolist() == target
        assert int(mask.sum()) == n_prompt + len(target)  # the prompt exactly as at inference, then the answer


def test_errors_name_the_argument(tiny_model):
    text = TextRAG.from_clara(tiny_model)
    with pytest.raises(InputError, match="docs has 1 entries for 2 questions"):
        text.generate(QUESTIONS[:2], DOCS[:1])
    with pytest.raises(InputError, match=r"docs\[0\]"):
        text.generate(QUESTIONS[:1], ["a plain string, not a list"])
    with pytest.raises(InputError, match="questions"):
        text.generate("one string", DOCS[:1])
