"""The whole build, top to bottom: split and demo assets, base (stage 0 or a saved one), CLaRa stages, check, save."""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass

import torch

from clara_plugins.tiny import build_tiny_base, build_tiny_tokenizer
from clara_plugins.tiny_build.config import BuildConfig
from clara_plugins.tiny_build.data import Split, TrainData, make_split, tokenizer_texts, training_data, write_assets
from clara_plugins.tiny_build.pretrain import Phase, load_stage0, run_stage0_phases, stage0_phases
from clara_plugins.tiny_build.recipe import quick_check, save, train_clara, wrap_clara

logger = logging.getLogger(__name__)
SIZE_BUDGET_MB = 25.0  # the bundled model folder must stay under this (the package's assets budget)


@dataclass
class BuildResult:
    """What a build produced."""

    size_mb: float  # size of the saved model folder
    minutes: float  # wall-clock time of the whole build
    check: dict[str, float]  # the held-out sanity check: {"clara_f1", "text_f1"}

    @property
    def within_budget(self) -> bool:
        """Whether the model fits the bundled assets' size budget (``SIZE_BUDGET_MB``)."""
        return self.size_mb <= SIZE_BUDGET_MB


def build(config: BuildConfig) -> BuildResult:
    """Run the build ``config`` describes: seeds everything, writes the demo assets, the stage outputs (in
    ``work_dir``) and the model (``out``)."""
    torch.set_num_threads(config.threads)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    config.work_dir.mkdir(parents=True, exist_ok=True)
    (config.work_dir / "args.json").write_text(json.dumps({k: str(v) for k, v in asdict(config).items()}, indent=2))
    split = make_split(config.data, config.seed, config.heldout_per_passage, config.heldout_passages)
    write_assets(split, config.assets_dir)
    lm, tokenizer, data, phases = prepare_base(config, split)
    run_stage0_phases(lm, tokenizer, data, phases, config)
    model = wrap_clara(lm, tokenizer, config)
    train_clara(model, data, config, config.work_dir)
    check = quick_check(model, split, config.check_questions)
    logger.info("held-out check (gold passage only): %s", check)
    size = save(model, config.out)
    result = BuildResult(size, (time.perf_counter() - started) / 60, check)
    logger.info("build finished in %.1f min; model %.1f MB at %s", result.minutes, size, config.out)
    return result


def prepare_base(config: BuildConfig, split: Split) -> tuple[torch.nn.Module, object, TrainData, list[Phase]]:
    """The base LM, its tokenizer, the training data and the stage-0 phases still to run: a fresh tokenizer and a
    randomly initialised base (every phase), or a saved base (``base_from``: phase 0b only)."""
    phases = stage0_phases(config)
    if config.base_from:  # resume after phase 0a with a saved base (work-dir/stage0a, or a build's tiny/base)
        lm, tokenizer = load_stage0(config.base_from)
        data = training_data(split, tokenizer, config.doc_max_length, config.n_candidates, config.seed)
        return lm, tokenizer, data, [p for p in phases if p.name == "0b"]
    tokenizer = build_tiny_tokenizer(tokenizer_texts(split), config.vocab)
    data = training_data(split, tokenizer, config.doc_max_length, config.n_candidates, config.seed)
    c = config
    lm = build_tiny_base(len(tokenizer), c.hidden, c.layers, c.heads, c.kv_heads, c.intermediate, c.seed, 0.02)
    logger.info("base: %.2fM parameters", sum(p.numel() for p in lm.parameters()) / 1e6)
    return lm, tokenizer, data, phases
