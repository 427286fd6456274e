"""Checkpoints written by the libraries the official code uses (transformers' peft integration, torch.save), not by
us: they load, every adapter for its role, and give the official model's memories, query vectors, top-k and greedy
tokens. See tests/official_writer.py for how the files are made."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from clara_plugins import CheckpointError, ClaraModel, InputError
from tests.official_writer import official_greedy, official_memories, write_as_official_code

DOCS = [
    "Paris is the capital and largest city of France.",
    "The Moon is Earth's only natural satellite.",
    "Water boils at 100 degrees Celsius at sea level.",
]
QUESTIONS = ["What is the capital of France?", "What orbits the Earth?"]
TOL = {"atol": 2e-5, "rtol": 1e-4}


@pytest.fixture(scope="module")
def official(tmp_path_factory, passages):
    return write_as_official_code(tmp_path_factory.mktemp("peft-written") / "compression-16", passages[:200])


@pytest.fixture(scope="module")
def loaded(official):
    return ClaraModel.from_pretrained(official.folder, device="cpu")


def test_peft_put_the_resized_matrices_in_every_adapter_dict(official):
    adapters = torch.load(official.folder / "adapters.pth", weights_only=True)
    assert list(adapters) == ["encoder_adapter", "decoder_adapter", "query_reasoner_adapter"]
    for state in adapters.values():
        assert {"model.embed_tokens.weight", "lm_head.weight"} <= set(state)
        assert any(".lora_A." in k for k in state)


def test_loads_every_adapter_and_matches_the_official_outputs(official, loaded, caplog):
    assert loaded.roles == ("compressor", "query_reasoner", "generator")
    memories = loaded.compress(DOCS)
    torch.testing.assert_close(memories, official_memories(official, DOCS, "encoder_adapter"), **TOL)
    queries = loaded.encode_query(QUESTIONS)
    ref_queries = official_memories(official, QUESTIONS, "query_reasoner_adapter").flatten(1)
    torch.testing.assert_close(queries, ref_queries, **TOL)
    ref_scores = torch.nn.functional.cosine_similarity(ref_queries[:, None], memories.flatten(1)[None], dim=-1)
    assert ClaraModel.rank(queries, memories, 2)[1].tolist() == ref_scores.topk(2).indices.tolist()
    ours = loaded.generate(QUESTIONS[:1], [memories[:2]], max_new_tokens=8)[0]
    ref = official_greedy(official, QUESTIONS[0], memories[:2], steps=8)
    assert ours == official.tokenizer.decode(ref, skip_special_tokens=True).strip()


def test_equal_copies_load_silently(official, caplog):
    with caplog.at_level(logging.WARNING, logger="clara_plugins"):
        ClaraModel.from_pretrained(official.folder, device="cpu")
    assert not [r for r in caplog.records if "differ" in r.getMessage()]


def _with_changed_copy(official, tmp_path, adapter: str) -> tuple:
    folder = shutil.copytree(official.folder, tmp_path / "ckpt")
    adapters = torch.load(folder / "adapters.pth", weights_only=True)
    changed = adapters[adapter]["model.embed_tokens.weight"].clone()
    changed[-5:] += 1.0  # the CLaRa token rows
    adapters[adapter]["model.embed_tokens.weight"] = changed
    torch.save(adapters, folder / "adapters.pth")
    return folder, changed


def test_a_differing_last_copy_wins_with_a_warning_naming_file_and_adapter(official, tmp_path, caplog):
    folder, changed = _with_changed_copy(official, tmp_path, "query_reasoner_adapter")  # last in the file
    with caplog.at_level(logging.WARNING, logger="clara_plugins"):
        model = ClaraModel.from_pretrained(folder, device="cpu")
    warnings = [r.getMessage() for r in caplog.records if "differ" in r.getMessage()]
    assert len(warnings) == 1 and "adapters.pth" in warnings[0] and "query_reasoner_adapter" in warnings[0]
    assert torch.equal(model.peft_model.get_input_embeddings().weight, changed)  # what the official loader ends with


def test_a_differing_earlier_copy_is_overwritten_by_the_later_ones(official, tmp_path, caplog):
    folder, _ = _with_changed_copy(official, tmp_path, "encoder_adapter")  # first: later copies overwrite it
    with caplog.at_level(logging.WARNING, logger="clara_plugins"):
        model = ClaraModel.from_pretrained(folder, device="cpu")
    assert any("encoder_adapter" in r.getMessage() for r in caplog.records)
    first_last = torch.load(folder / "decoder_first_last_layers.pth", weights_only=True)
    assert torch.equal(model.peft_model.get_input_embeddings().weight, first_last["model.embed_tokens.weight"])


def test_anything_else_unexpected_in_an_adapter_dict_is_still_an_error(official, tmp_path):
    folder = shutil.copytree(official.folder, tmp_path / "ckpt")
    adapters = torch.load(folder / "adapters.pth", weights_only=True)
    adapters["decoder_adapter"]["model.norm.weight"] = torch.ones(64)
    torch.save(adapters, folder / "adapters.pth")
    with pytest.raises(CheckpointError, match=r"decoder_adapter.*1 unexpected.*model.norm.weight"):
        ClaraModel.from_pretrained(folder, device="cpu")


def test_truncate_gives_the_official_memories_of_an_over_long_document(official, loaded):
    long_text = " ".join(DOCS * 12)
    with pytest.raises(InputError, match="doc_max_length=64"):
        loaded.compress([long_text])
    ours = loaded.compress([long_text, DOCS[0]], truncate=True)
    torch.testing.assert_close(ours, official_memories(official, [long_text, DOCS[0]], "encoder_adapter"), **TOL)
    answer = loaded.answer(QUESTIONS[:1], [[long_text, DOCS[1]]], k=1, truncate=True)[0]
    assert answer.indices in ([0], [1])
