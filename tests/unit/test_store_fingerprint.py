"""The store's model fingerprint covers the base transformer's weights: a model whose base layers differ (same
config, same adapters, same embeddings) is refused by a store built with the original."""

from __future__ import annotations

import copy

import pytest
import torch

from clara_plugins.errors import ModelMismatchError
from clara_plugins.rag import ClaraRAG
from clara_plugins.store import ClaraStore


def _perturb_base_layers(model) -> None:
    with torch.no_grad():
        for name, param in model.base_lm.named_parameters():
            if "layers." in name and "lora_" not in name and param.dim() == 2:
                param.add_(0.02 * torch.randn_like(param))
    model.invalidate_fingerprint()


def test_other_base_weights_are_refused(tiny_model, passages, tmp_path):
    rag = ClaraRAG(tiny_model, ClaraStore(path=tmp_path / "db"))
    rag.index(passages[:4], show_progress=False)
    other = copy.deepcopy(tiny_model)
    _perturb_base_layers(other)
    emb = other.peft_model.get_input_embeddings().weight
    assert torch.equal(emb, tiny_model.peft_model.get_input_embeddings().weight)  # embeddings untouched
    assert not torch.allclose(
        other.compress(["a short text", "another"]), tiny_model.compress(["a short text", "another"])
    )  # memories differ
    assert other.fingerprint != tiny_model.fingerprint
    with pytest.raises(ModelMismatchError, match="fingerprint"):
        ClaraRAG(other, ClaraStore(path=tmp_path / "db"))
    assert ClaraRAG(copy.deepcopy(tiny_model), ClaraStore(path=tmp_path / "db")).store.count() > 0  # same weights: ok


def test_store_bound_to_an_old_fingerprint_says_why(tiny_model, tmp_path):
    store = ClaraStore(path=tmp_path / "db")
    store.bind("0123456789abcdef", tiny_model.memory_dim, tiny_model.n_mem, tiny_model.hidden_size, "tiny")
    col = store.client.get_collection("clara")
    meta = {k: v for k, v in col.metadata.items() if k != "clara_fp_base"}
    col.modify(metadata=meta)
    with pytest.raises(ModelMismatchError, match="before fingerprints covered the base weights"):
        ClaraRAG(tiny_model, ClaraStore(path=tmp_path / "db"))
