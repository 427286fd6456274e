"""Shared fixtures: a tiny CLaRa model built offline (session-scoped), official-layout checkpoints, data paths."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from clara_plugins.tiny import build_tiny_clara, write_tiny_official_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TINY_KWARGS = {"vocab_size": 1000, "hidden_size": 64, "num_layers": 2, "doc_max_length": 64, "compr_rate": 16}


def _load_passages(limit: int = 300) -> list[str]:
    path = SHARED_DATA / "clara_example" / "pretrain_data.jsonl"
    if path.exists():
        with path.open() as f:
            return [json.loads(line)["docs"][0] for _, line in zip(range(limit), f)]
    bundled = REPO / "clara_plugins" / "assets" / "demo_corpus.jsonl"
    return [json.loads(line)["text"] for line in bundled.read_text().splitlines()[:limit]]


@pytest.fixture(scope="session")
def passages() -> list[str]:
    """Real Wikipedia passages (from ../shared/data, or the bundled demo corpus)."""
    return _load_passages()


@pytest.fixture(scope="session")
def _tiny_model_session(passages):
    return build_tiny_clara(texts=passages, seed=0, **TINY_KWARGS)


@pytest.fixture(scope="session")
def tiny_model(_tiny_model_session):
    """A random tiny ClaraModel (CPU, fp32, hidden 64, n_mem 4, all three adapters). Do not mutate it."""
    return _tiny_model_session


@pytest.fixture
def fresh_tiny_model(_tiny_model_session):
    """A private deep copy of the tiny model, free to mutate (train, change weights)."""
    return copy.deepcopy(_tiny_model_session)


@pytest.fixture(scope="session")
def tiny_official(tmp_path_factory, passages):
    """``(folder, model)``: an official-layout checkpoint with all three adapters and the in-memory original."""
    folder = tmp_path_factory.mktemp("official") / "compression-16"
    model = write_tiny_official_checkpoint(folder, texts=passages, seed=3, **TINY_KWARGS)
    return folder, model


@pytest.fixture(scope="session")
def tiny_official_dir(tiny_official) -> Path:
    return tiny_official[0]
