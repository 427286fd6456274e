"""A checkpoint whose base/ holds a pickle that needs code, or a truncated weights file, is a CheckpointError that
says so (and the pickle's code never runs)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from clara_plugins.errors import CheckpointError
from clara_plugins.model import ClaraModel

RAN: list[str] = []


class _Payload:
    def __reduce__(self):
        return (RAN.append, ("code ran",))


@pytest.fixture
def saved(tiny_model, tmp_path) -> Path:
    return tiny_model.save_pretrained(tmp_path / "ckpt", include_base=True)


def test_pickle_base_weights_are_refused_without_running_them(saved):
    base = saved / "base"
    for f in base.glob("*.safetensors"):
        f.unlink()
    with open(base / "pytorch_model.bin", "wb") as f:
        pickle.dump({"weight": _Payload()}, f)
    with pytest.raises(CheckpointError, match="refused the base model weights.*pickles load weights-only"):
        ClaraModel.from_pretrained(saved)
    assert RAN == []


@pytest.mark.parametrize("name", ["base/model.safetensors", "adapters.safetensors", "token_rows.safetensors"])
def test_truncated_weights_file_is_a_checkpoint_error(saved, name):
    path = saved / name
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(CheckpointError):
        ClaraModel.from_pretrained(saved)
