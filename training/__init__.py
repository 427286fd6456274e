"""Training for CLaRa: stage 1 / 2 / 3 of the paper, the supervised retrieval baseline, data formats and metrics.

Installed as ``clara_plugins.training`` (the repo folder ``training/`` is remapped by setuptools; see
``docs/design.md``). Needs the ``train`` extra: ``pip install 'clara-plugins[train]'``.

Python use::

    from clara_plugins.training import TrainConfig, train

    model = train(TrainConfig(stage="1", model="tiny", train_file="pretrain_data.jsonl", max_steps=100))

Command line: ``clara train --stage 1 --config FILE`` or ``accelerate launch -m clara_plugins.training --config FILE``.
"""

from __future__ import annotations

if not __name__.startswith("clara_plugins."):
    msg = (
        f"the training package was imported as {__name__!r}; it is part of clara-plugins and must be imported as "
        "`import clara_plugins.training` (install the project, e.g. `pip install -e '.[train]'`)"
    )
    raise ImportError(msg)

import importlib
from typing import TYPE_CHECKING, Any

# public name -> submodule that defines it (loaded on first access, so importing the package stays cheap)
_LAZY = {
    "TrainConfig": "clara_plugins.training.config",
    "load_config": "clara_plugins.training.config",
    "train": "clara_plugins.training.trainer",
    "Trainer": "clara_plugins.training.trainer",
    "straight_through_topk": "clara_plugins.training.losses",
    "multi_positive_info_nce": "clara_plugins.training.losses",
    "BM25Retriever": "clara_plugins.training.bm25",
    "load_stage1": "clara_plugins.training.data",
    "load_stage2": "clara_plugins.training.data",
    "load_stage3": "clara_plugins.training.data",
    "load_beir": "clara_plugins.training.data",
    "evaluate": "clara_plugins.training.evaluate",
    "synthesize_stage1": "clara_plugins.training.synthesis",
    "mine_candidates": "clara_plugins.training.synthesis",
}

__all__ = [
    "BM25Retriever",
    "TrainConfig",
    "Trainer",
    "evaluate",
    "load_beir",
    "load_config",
    "load_stage1",
    "load_stage2",
    "load_stage3",
    "mine_candidates",
    "multi_positive_info_nce",
    "straight_through_topk",
    "synthesize_stage1",
    "train",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    msg = f"module 'clara_plugins.training' has no attribute {name!r}"
    raise AttributeError(msg)


if TYPE_CHECKING:  # pragma: no cover
    from clara_plugins.training.bm25 import BM25Retriever
    from clara_plugins.training.config import TrainConfig, load_config
    from clara_plugins.training.data import load_beir, load_stage1, load_stage2, load_stage3
    from clara_plugins.training.evaluate import evaluate
    from clara_plugins.training.losses import multi_positive_info_nce, straight_through_topk
    from clara_plugins.training.synthesis import mine_candidates, synthesize_stage1
    from clara_plugins.training.trainer import Trainer, train
