"""The build's configuration: one dataclass whose defaults are the recipe of the shipped tiny model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from clara_plugins.errors import ConfigError


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class BuildConfig:
    """Everything one build reads. The step counts, learning rates and sizes default to the shipped recipe."""

    # where things are
    data: Path  # the official stage-1 JSONL: passages (``docs``) with their QA pairs (``question``, ``answers``)
    out: Path  # the model folder written at the end (replaced if it exists)
    assets_dir: Path  # demo_corpus.jsonl and demo_questions.jsonl are written here
    work_dir: Path  # logs, per-stage metrics and stage outputs
    base_from: Path | None = None  # a saved base (after phase 0a): skip phases 0c and 0a, run 0b if any, then CLaRa
    # run
    seed: int = 0  # seeds Python, torch, the split, every phase's batches and the base's initialisation
    threads: int = 1  # torch CPU threads (1 is fastest for this size on a shared machine)
    device: str = field(
        default_factory=_default_device
    )  # device of stage 0; CLaRa stages go where accelerate puts them
    progress: bool = True  # tqdm progress bars
    check_questions: int = 40  # held-out questions of the final sanity check (answer F1, CLaRa vs text RAG)
    # data split
    heldout_per_passage: int = 2  # questions per passage never trained on
    heldout_passages: int = 50  # passages never trained on at all (neither their text nor their questions)
    n_candidates: int = 16  # BM25 candidate chunks per training question (negatives of stages 0, 2, R and 3)
    # base (a Mistral-shaped decoder from random weights) and its BPE tokenizer
    vocab: int = 4000  # BPE vocabulary trained on the training passages and QA pairs
    hidden: int = 192
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 512
    # CLaRa
    doc_max_length: int = 256  # tokens per chunk (what gets compressed and retrieved)
    compr_rate: int = 16  # tokens per memory vector
    lora_r: int = 32  # rank of the three LoRA adapters (alpha is twice this)
    # stage 0: full-parameter pretraining of the base (phases 0c, 0a, 0b; see stage0_phases)
    steps0c: int = 0  # phase-0c steps: copy batches only (0: off)
    steps0: int = 1000  # phase-0a steps: language and text RAG
    copy_share: float = 0.0  # share of copy batches in phases 0a and 0b
    max_docs0: int = 5  # most passages per phase-0a text-RAG example
    answer_weight0: float = 0.5  # share of a phase-0a text-RAG example's loss on its answer
    steps0b: int = 0  # phase-0b steps: short contexts, more weight on the answer (0: off)
    lr0b: float = 1e-3  # peak learning rate of phase 0b
    tokens0: int = 2048  # tokens per stage-0 batch (about)
    lm_share: float = 0.3  # share of stage-0 batches that are plain passages
    lr0: float = 2e-3  # peak learning rate of phase 0a
    # CLaRa stages (through clara_plugins.training)
    steps1: int = 250  # stage 1: compression pretraining
    steps2: int = 120  # stage 2: instruction tuning
    stage2_docs: int = 3  # passages per stage-2 example (gold + BM25 negatives)
    stepsJ: int = 1000  # stage J: dual encoder, in-batch InfoNCE on the gold chunks (0: none)
    batchJ: int = 32  # questions per stage-J step
    lrJ: float = 1e-3  # learning rate of stage J
    temperatureJ: float = 0.05  # InfoNCE temperature of stage J
    stepsR: int = 0  # stage R: query-reasoner InfoNCE warm-up on frozen memories (0: none)
    in_batch_negatives: bool = False  # stage R also uses the other questions' candidates as negatives
    steps3: int = 0  # stage 3: end-to-end (0: none; it lowered retrieval, see docs/tiny-model.md)
    batch: int = 8  # examples per step in stages 1, 2, R (twice this) and 3
    lr: float = 1e-3  # learning rate of stages 1, 2 and R (LoRA)
    lr3: float = 3e-4  # learning rate of stage 3

    def __post_init__(self) -> None:
        for name in ("data", "out", "assets_dir", "work_dir"):
            setattr(self, name, Path(getattr(self, name)))
        if self.base_from is not None:
            self.base_from = Path(self.base_from)
        steps = ("steps0c", "steps0", "steps0b", "steps1", "steps2", "stepsJ", "stepsR", "steps3")
        for name in steps:
            if getattr(self, name) < 0:
                msg = f"BuildConfig.{name} must be >= 0, got {getattr(self, name)!r}"
                raise ConfigError(msg)

    def quick(self) -> BuildConfig:
        """A copy with a few steps per stage and a small final check: a smoke test of the whole pipeline."""
        return dataclasses.replace(
            self,
            steps0c=3,
            steps0=6,
            steps0b=3,
            steps1=4,
            stepsJ=3,
            steps2=3,
            stepsR=3,
            steps3=3,
            check_questions=4,
        )
