"""Loading the official layout and our format: round trips, every adapter for its role, loud failures."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from clara_plugins import CheckpointError, ClaraModel
from clara_plugins.checkpoints import save_official
from clara_plugins.tiny import write_tiny_official_checkpoint
from tests.conftest import TINY_KWARGS

DOCS = ["Paris is the capital and largest city of France.", "The Moon is Earth's only natural satellite."]
QUESTIONS = ["What is the capital of France?", "What orbits the Earth?"]


def outputs(model: ClaraModel) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    mem = model.compress(DOCS)
    return mem, model.encode_query(QUESTIONS), model.generate(QUESTIONS, [mem, mem[:1]], max_new_tokens=8)


def assert_same_outputs(a: ClaraModel, b: ClaraModel) -> None:
    (ma, qa, ga), (mb, qb, gb) = outputs(a), outputs(b)
    torch.testing.assert_close(ma, mb)
    torch.testing.assert_close(qa, qb)
    assert ga == gb


def test_official_load_save_load_gives_identical_outputs(tiny_official, tmp_path):
    folder, original = tiny_official
    loaded = ClaraModel.from_pretrained(folder, device="cpu")
    assert loaded.roles == ("compressor", "query_reasoner", "generator")
    assert_same_outputs(original, loaded)
    ours = loaded.save_pretrained(tmp_path / "ours")
    assert not list(ours.glob("*.pth")), "our format is safetensors only"
    reloaded = ClaraModel.from_pretrained(ours, device="cpu")
    assert_same_outputs(loaded, reloaded)
    assert reloaded.fingerprint == loaded.fingerprint == original.fingerprint


def test_included_base_is_a_complete_transformers_folder(tiny_official, tmp_path):
    folder, original = tiny_official
    loaded = ClaraModel.from_pretrained(folder, device="cpu")
    loaded.base_lm.config.architectures = None  # as in a base that was itself loaded from a folder without it
    ours = loaded.save_pretrained(tmp_path / "ours", include_base=True)
    config = json.loads((ours / "base" / "config.json").read_text())
    assert config["architectures"] == ["MistralForCausalLM"]
    assert_same_outputs(original, ClaraModel.from_pretrained(ours, device="cpu"))


def test_saved_token_rows_hold_only_changed_rows(tiny_official, tmp_path):
    from safetensors.torch import load_file

    loaded = ClaraModel.from_pretrained(tiny_official[0], device="cpu")
    rows = load_file(str(loaded.save_pretrained(tmp_path / "ours") / "token_rows.safetensors"))
    n_new = len(loaded.tokenizer) - loaded.config.base_vocab_size
    assert rows["embed_tokens.rows"].tolist() == list(range(loaded.config.base_vocab_size, len(loaded.tokenizer)))
    assert rows["lm_head.values"].shape == (n_new, loaded.hidden_size)


def test_hub_subfolder_is_downloaded_and_loaded(tiny_official, tmp_path, monkeypatch):
    import huggingface_hub

    hub_repo = tmp_path / "hub" / "apple--CLaRa-tiny"
    shutil.copytree(tiny_official[0], hub_repo / "compression-16")
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):  # the Hub cannot be reached here
        calls.append((repo_id, allow_patterns))
        return str(hub_repo)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = ClaraModel.from_pretrained("apple/CLaRa-tiny", subfolder="compression-16", device="cpu")
    assert calls == [("apple/CLaRa-tiny", ["compression-16/*"])]
    assert_same_outputs(tiny_official[1], model)


def test_instruct_checkpoint_keeps_its_trained_generator(tmp_path, passages):
    # official defect 8.1: an Instruct checkpoint (no query reasoner) must keep its decoder_adapter
    original = write_tiny_official_checkpoint(
        tmp_path, roles=("compressor", "generator"), texts=passages, **TINY_KWARGS
    )
    loaded = ClaraModel.from_pretrained(tmp_path, device="cpu")
    assert loaded.roles == ("compressor", "generator")
    assert_same_outputs(original, loaded)
    # without a query reasoner, questions are encoded with the compressor
    torch.testing.assert_close(loaded.encode_query(QUESTIONS), loaded.compress(QUESTIONS).flatten(1))


@pytest.mark.parametrize("missing", ["adapters.pth", "decoder_first_last_layers.pth", "config.json"])
def test_missing_file_raises_naming_it(tiny_official_dir, tmp_path, missing):
    folder = shutil.copytree(tiny_official_dir, tmp_path / "ckpt", symlinks=True)
    (folder / missing).unlink()
    with pytest.raises(CheckpointError, match=missing.split(".")[0]):
        ClaraModel.from_pretrained(folder, device="cpu")


def test_corrupt_file_raises_naming_it(tiny_official_dir, tmp_path):
    folder = shutil.copytree(tiny_official_dir, tmp_path / "ckpt")
    (folder / "adapters.pth").write_bytes(b"\x80\x04 not a torch file")
    with pytest.raises(CheckpointError, match="adapters.pth"):
        ClaraModel.from_pretrained(folder, device="cpu")


def test_pickled_code_is_refused(tiny_official_dir, tmp_path):
    folder = shutil.copytree(tiny_official_dir, tmp_path / "ckpt")
    torch.save({"decoder_adapter": {"x": print}}, folder / "adapters.pth")  # not loadable with weights_only
    with pytest.raises(CheckpointError, match="weights-only"):
        ClaraModel.from_pretrained(folder, device="cpu")


def test_shape_mismatch_raises(tiny_official, tmp_path):
    folder = shutil.copytree(tiny_official[0], tmp_path / "ckpt")
    state = torch.load(folder / "decoder_first_last_layers.pth", weights_only=True)
    state["lm_head.weight"] = state["lm_head.weight"][:-1]
    torch.save(state, folder / "decoder_first_last_layers.pth")
    with pytest.raises(CheckpointError, match=r"decoder_first_last_layers.pth lm_head: shape"):
        ClaraModel.from_pretrained(folder, device="cpu")


def test_missing_lora_tensor_and_unknown_adapter_raise(tiny_official, tmp_path):
    folder = shutil.copytree(tiny_official[0], tmp_path / "ckpt")
    adapters = torch.load(folder / "adapters.pth", weights_only=True)
    adapters["decoder_adapter"].pop(next(iter(adapters["decoder_adapter"])))
    torch.save(adapters, folder / "adapters.pth")
    with pytest.raises(CheckpointError, match="decoder_adapter.*1 missing"):
        ClaraModel.from_pretrained(folder, device="cpu")
    adapters["mystery_adapter"] = adapters.pop("decoder_adapter")
    torch.save(adapters, folder / "adapters.pth")
    with pytest.raises(CheckpointError, match="mystery_adapter"):
        ClaraModel.from_pretrained(folder, device="cpu")


def test_private_base_path_needs_override(tiny_official_dir, tmp_path):
    folder = shutil.copytree(tiny_official_dir, tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config["decoder_model_name"] = "/private/apple/cluster/mistral-7b"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="base_model="):
        ClaraModel.from_pretrained(folder, device="cpu")
    model = ClaraModel.from_pretrained(folder, base_model=str(tiny_official_dir / "base"), device="cpu")
    assert model.config.base_model == str(tiny_official_dir / "base")


def test_official_writer_round_trips(tiny_official, tmp_path):
    loaded = ClaraModel.from_pretrained(tiny_official[0], device="cpu")
    again = ClaraModel.from_pretrained(
        save_official(loaded, tmp_path / "again"), base_model=str(tiny_official[0] / "base"), device="cpu"
    )
    assert_same_outputs(loaded, again)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="neither"):
        ClaraModel.from_pretrained(tmp_path, device="cpu")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        ClaraModel.from_pretrained("./does/not/exist", device="cpu")


def test_convert_cli(tiny_official, tmp_path):
    from clara_plugins.cli import main

    assert main(["convert", str(tiny_official[0]), str(tmp_path / "out")]) == 0
    converted = ClaraModel.from_pretrained(tmp_path / "out", device="cpu", dtype="fp32")
    # converted in bf16 by default: same model up to bf16 rounding of the weights
    mem = converted.compress(DOCS)
    ref = tiny_official[1].compress(DOCS)
    assert torch.nn.functional.cosine_similarity(mem.flatten(1), ref.flatten(1)).min() > 0.99
