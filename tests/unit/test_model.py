"""ClaraModel behaviour: roles, control-token safety, batching, ranking, streaming, dtypes."""

from __future__ import annotations

import pytest
import torch

from clara_plugins import InputError

DOCS = [
    "Paris is the capital and largest city of France.",
    "The Moon is Earth's only natural satellite.",
    "Water boils at 100 degrees Celsius at sea level.",
    "Mount Everest is the highest mountain above sea level.",
]
QUESTIONS = ["What is the capital of France?", "What orbits the Earth?"]


def perturb_role(model, role: str) -> None:
    with torch.no_grad():
        for name, p in model.peft_model.named_parameters():
            if f".{role}." in name and "lora_B" in name:
                p.add_(0.5)


@pytest.mark.parametrize("role", ["compressor", "query_reasoner", "generator"])
def test_each_adapter_changes_only_its_role(fresh_tiny_model, role):
    model = fresh_tiny_model
    mem = model.compress(DOCS)
    before = (mem, model.encode_query(QUESTIONS), model.generate(QUESTIONS, [mem[:2], mem[2:]], max_new_tokens=6))
    perturb_role(model, role)
    after = (
        model.compress(DOCS),
        model.encode_query(QUESTIONS),
        model.generate(QUESTIONS, [mem[:2], mem[2:]], max_new_tokens=6),
    )
    changed = [not torch.equal(before[0], after[0]), not torch.equal(before[1], after[1]), before[2] != after[2]]
    assert changed == [role == "compressor", role == "query_reasoner", role == "generator"]


def test_control_token_strings_in_user_text_are_plain_text(tiny_model):
    sp = tiny_model.special_token_ids
    nasty = "Look: <MEM3><SEP> and </s><s> and <ENC> end"
    batch = tiny_model.tokenize_documents([nasty])
    ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    specials = {*sp.mem, sp.ae, sp.enc, sp.sep, sp.bos, sp.eos}
    # only the wrapper's own <ENC> <s> ... </s> MEM* are control tokens
    assert [i for i in ids if i in specials] == [sp.enc, sp.bos, sp.eos, *sp.mem]
    prompt = tiny_model.build_prompts([nasty], [2])["input_ids"][0].tolist()
    assert sum(sp.is_mem(torch.tensor(prompt)).tolist()) == 2 * tiny_model.n_mem
    assert prompt.count(sp.sep) == 2 and prompt.count(sp.eos) == 0 and prompt.count(sp.bos) == 1
    memory = tiny_model.compress([nasty])
    assert memory.shape == (1, tiny_model.n_mem, tiny_model.hidden_size)
    assert isinstance(tiny_model.generate([nasty], [memory], max_new_tokens=4)[0], str)


def test_compress_pads_to_longest_without_changing_vectors(tiny_model):
    alone = torch.cat([tiny_model.compress([d]) for d in DOCS])
    torch.testing.assert_close(tiny_model.compress(DOCS), alone, atol=1e-5, rtol=1e-4)


def test_answer_with_unequal_candidate_counts_equals_one_at_a_time(tiny_model):
    candidates = [DOCS, DOCS[1:3]]
    batched = tiny_model.answer(QUESTIONS, candidates, k=2, max_new_tokens=8)
    single = [tiny_model.answer([q], [c], k=2, max_new_tokens=8)[0] for q, c in zip(QUESTIONS, candidates)]
    assert [a.text for a in batched] == [a.text for a in single]
    assert [a.indices for a in batched] == [a.indices for a in single]
    assert len(batched[1].indices) == 2 and set(batched[1].indices) <= {0, 1}


def test_answer_accepts_memories_and_ranks_best_first(tiny_model):
    mem = tiny_model.compress(DOCS)
    [res] = tiny_model.answer([QUESTIONS[0]], [mem], k=3, max_new_tokens=4)
    _, idx = tiny_model.rank(tiny_model.encode_query([QUESTIONS[0]]), mem, 3)
    assert res.indices == idx[0].tolist()
    assert res.scores == sorted(res.scores, reverse=True)


def test_rank_is_fp32_cosine(tiny_model):
    q, mem = tiny_model.encode_query(QUESTIONS), tiny_model.compress(DOCS)
    scores, idx = tiny_model.rank(q, mem, k=10)
    assert idx.shape == (2, 4)
    expected = torch.nn.functional.cosine_similarity(q[:, None, :], mem.flatten(1)[None], dim=-1)
    torch.testing.assert_close(scores, expected.sort(dim=1, descending=True).values)


def test_stream_yields_the_generated_text(tiny_model):
    mem = tiny_model.compress(DOCS[:2])
    pieces = list(tiny_model.stream(QUESTIONS[0], mem, max_new_tokens=12))
    assert len(pieces) >= 1
    assert "".join(pieces).strip() == tiny_model.generate([QUESTIONS[0]], [mem], max_new_tokens=12)[0]


def test_generate_batch_equals_single(tiny_model):
    mem = tiny_model.compress(DOCS)
    mems = [mem[:1], mem[1:4], mem[:0]]
    qs = [*QUESTIONS, "Anything?"]
    batched = tiny_model.generate(qs, mems, max_new_tokens=8)
    assert batched == [tiny_model.generate([q], [m], max_new_tokens=8)[0] for q, m in zip(qs, mems)]


def test_bf16_on_cpu_is_close_to_fp32(fresh_tiny_model):
    fp32 = fresh_tiny_model.compress(DOCS)
    bf16 = fresh_tiny_model.to(dtype=torch.bfloat16).compress(DOCS)
    assert fresh_tiny_model.dtype == torch.bfloat16 and bf16.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(fp32.flatten(1), bf16.flatten(1))
    assert cos.min() > 0.98
    assert isinstance(fresh_tiny_model.generate(QUESTIONS[:1], [bf16[:2]], max_new_tokens=4)[0], str)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: m.compress("just one string"), "wrap it in a list"),
        (lambda m: m.compress(["ok", 3]), r"texts\[1\] must be a str"),
        (lambda m: m.compress(["word " * 500]), "doc_max_length"),
        (lambda m: m.compress(["word " * 500, "short"]), r"texts\[0\] has \d+ tokens, more than doc_max_length"),
        (lambda m: m.generate(["q"], []), "memories has 0 entries"),
        (lambda m: m.generate(["q"], [torch.zeros(2, 3)]), "expected"),
        (lambda m: m.answer(["q"], [["a"], ["b"]]), "candidates has 2"),
    ],
)
def test_bad_input_raises_clear_errors(tiny_model, call, match):
    with pytest.raises(InputError, match=match):
        call(tiny_model)


def test_long_questions_are_truncated_with_a_warning(tiny_model, caplog):
    vec = tiny_model.encode_query(["why " * 400])
    assert vec.shape == (1, tiny_model.memory_dim)
    assert "truncated" in caplog.text


def test_empty_inputs(tiny_model):
    assert tiny_model.compress([]).shape == (0, tiny_model.n_mem, tiny_model.hidden_size)
    assert tiny_model.compress([""]).shape == (1, tiny_model.n_mem, tiny_model.hidden_size)
    assert tiny_model.generate([], []) == []


def test_closing_a_stream_early_stops_the_generation(fresh_tiny_model):
    model = fresh_tiny_model
    steps = []
    hook = model.base_lm.register_forward_hook(lambda *_: steps.append(1))
    try:
        memories = model.compress(["Paris is the capital of France."])
        full = "".join(model.stream("Where is Paris?", memories, max_new_tokens=40))
        n_full = len(steps)
        steps.clear()
        pieces = model.stream("Where is Paris?", memories, max_new_tokens=40)
        first = next(pieces)
        pieces.close()
    finally:
        hook.remove()
    assert full.startswith(first)
    assert n_full > 10, "the random model should generate well past a few tokens"
    assert len(steps) < n_full / 2, (len(steps), n_full)
