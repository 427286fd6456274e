"""Build the bundled tiny CLaRa model and its demo data, from scratch, offline, reproducibly (seeded).

Nothing is downloaded: the base is a randomly initialised Mistral-shaped LM, so it must first learn language.

    stage 0  full-parameter causal-LM pretraining of the base on the corpus text and on text-RAG examples
             (``[INST] system\\n\\nBackground:\\n{passages}\\n\\nQuestion:{q} [/INST] {answer}</s>``), so that the
             base alone is a fair text-RAG baseline (clara_plugins.baselines.TextRAG); an optional phase 0c
             (``--steps0c``, off by default) first trains on repeated random spans so that content-based copying
             appears, and ``--copy-share`` keeps such batches in the mix; an optional phase 0b (``--steps0b``,
             off by default) continues with short contexts and more weight on the answer
    stage 1  CLaRa compression pretraining (QA targets + reconstruction as the paraphrase target)
    stage J  dual encoder (``--stepsJ``): the compressor and the query reasoner learn together from
             in-batch InfoNCE on the training questions' gold chunks (not in the paper, whose compressor learns only
             from generation; a model this small gets no usable retrieval geometry from that)
    stage 2  instruction tuning: answer from k compressed passages (gold + BM25 negatives); after stage J on the
             frozen compressor, so the retrieval geometry stays
    stage R  optional (``--stepsR``, off): query-reasoner InfoNCE warm-up on frozen memories (earlier builds)
    stage 3  optional (``--steps3``, off): end-to-end, the answer loss trains the query reasoner through the
             straight-through top-k; it lowered this model's retrieval, as its generator cannot answer

Stages 1, J, 2, R and 3 run through ``clara_plugins.training.train``; stage 0 is the build's own loop (the training
module only trains adapters). The code is the library package ``clara_plugins.tiny_build`` (``BuildConfig``, whose
defaults are these flags' defaults, and ``build``); this script only parses the flags.

Data: ``../shared/data/clara_example/pretrain_data.jsonl`` (1,000 Wikipedia passages with 5-10 QA pairs each). Every
passage keeps ``--heldout-per-passage`` of its questions out of all training, and ``--heldout-passages`` passages are
kept out entirely (neither their text nor their questions are trained on).

    python scripts/build_tiny_model.py                  # the real build (~50 min on an idle 2-core CPU)
    python scripts/build_tiny_model.py --base-from runs/tiny_build/stage0a   # redo stages 1-3 only
    python scripts/build_tiny_model.py --quick --out /tmp/tiny --assets-dir /tmp/assets   # a smoke run
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path

from clara_plugins.tiny_build import BuildConfig, build

logger = logging.getLogger("build_tiny_model")
REPO = Path(__file__).resolve().parents[1]
# the recipe of the shipped weights, with this checkout's paths: every flag's default
DEFAULTS = BuildConfig(
    data=REPO.parent / "shared" / "data" / "clara_example" / "pretrain_data.jsonl",
    out=REPO / "clara_plugins" / "assets" / "tiny",
    assets_dir=REPO / "clara_plugins" / "assets",
    work_dir=REPO / "runs" / "tiny_build",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    D = DEFAULTS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=D.data, help="official stage-1 JSONL (passages with QA pairs)")
    p.add_argument("--out", type=Path, default=D.out, help="model folder")
    p.add_argument("--assets-dir", type=Path, default=D.assets_dir, help="demo data folder")
    p.add_argument("--work-dir", type=Path, default=D.work_dir, help="logs and stage outputs")
    p.add_argument("--seed", type=int, default=D.seed)
    p.add_argument(
        "--threads",
        type=int,
        default=D.threads,
        help="torch CPU threads (1 is fastest for this size on a shared machine)",
    )
    p.add_argument(
        "--heldout-per-passage", type=int, default=D.heldout_per_passage, help="questions per passage never trained on"
    )
    p.add_argument("--heldout-passages", type=int, default=D.heldout_passages, help="passages never trained on at all")
    p.add_argument("--vocab", type=int, default=D.vocab)
    p.add_argument("--hidden", type=int, default=D.hidden)
    p.add_argument("--layers", type=int, default=D.layers)
    p.add_argument("--heads", type=int, default=D.heads)
    p.add_argument("--kv-heads", type=int, default=D.kv_heads)
    p.add_argument("--intermediate", type=int, default=D.intermediate)
    p.add_argument("--doc-max-length", type=int, default=D.doc_max_length)
    p.add_argument("--compr-rate", type=int, default=D.compr_rate)
    p.add_argument("--lora-r", type=int, default=D.lora_r)
    p.add_argument("--steps0c", type=int, default=D.steps0c, help="stage-0c steps (copy batches only; default off)")
    p.add_argument("--steps0", type=int, default=D.steps0, help="stage-0a steps (full-parameter LM pretraining)")
    p.add_argument("--copy-share", type=float, default=D.copy_share, help="share of copy batches in stages 0a and 0b")
    p.add_argument("--max-docs0", type=int, default=D.max_docs0, help="most passages per stage-0a text-RAG example")
    p.add_argument(
        "--answer-weight0",
        type=float,
        default=D.answer_weight0,
        help="share of a stage-0a example's loss on the answer",
    )
    p.add_argument("--steps0b", type=int, default=D.steps0b, help="stage-0b steps (short contexts; default off)")
    p.add_argument("--lr0b", type=float, default=D.lr0b)
    p.add_argument(
        "--base-from", type=Path, default=D.base_from, help="skip stage 0a: start from this saved base (after phase 0a)"
    )
    p.add_argument("--tokens0", type=int, default=D.tokens0, help="tokens per stage-0 batch (about)")
    p.add_argument(
        "--lm-share", type=float, default=D.lm_share, help="share of stage-0 batches that are plain passages"
    )
    p.add_argument("--lr0", type=float, default=D.lr0)
    p.add_argument("--steps1", type=int, default=D.steps1)
    p.add_argument("--steps2", type=int, default=D.steps2)
    p.add_argument(
        "--stage2-docs", type=int, default=D.stage2_docs, help="passages per stage-2 example (gold + negatives)"
    )
    p.add_argument(
        "--stepsJ",
        type=int,
        default=D.stepsJ,
        help="dual-encoder steps after stage 1: compressor and query reasoner learn together from in-batch InfoNCE "
        "on the training questions' gold chunks (0: none)",
    )
    p.add_argument("--batchJ", type=int, default=D.batchJ, help="questions per dual-encoder step")
    p.add_argument("--lrJ", type=float, default=D.lrJ, help="learning rate of the dual-encoder stage")
    p.add_argument(
        "--temperatureJ", type=float, default=D.temperatureJ, help="InfoNCE temperature of the dual-encoder stage"
    )
    p.add_argument(
        "--stepsR",
        type=int,
        default=D.stepsR,
        help="query-reasoner InfoNCE warm-up steps on frozen documents (0: none)",
    )
    p.add_argument(
        "--in-batch-negatives",
        action="store_true",
        help="stage R also uses the other questions' candidates as negatives (the training module's default)",
    )
    p.add_argument(
        "--steps3",
        type=int,
        default=D.steps3,
        help="end-to-end steps (0: none; they lowered retrieval, see docs/tiny-model.md)",
    )
    p.add_argument("--n-candidates", type=int, default=D.n_candidates, help="candidates per question in stages R and 3")
    p.add_argument("--batch", type=int, default=D.batch, help="examples per step in stages 1, 2, 3")
    p.add_argument("--lr", type=float, default=D.lr, help="learning rate of stages 1, 2 and R (LoRA)")
    p.add_argument("--lr3", type=float, default=D.lr3, help="learning rate of stage 3")
    p.add_argument("--quick", action="store_true", help="a few steps per stage (smoke test of the pipeline)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--device",
        default=D.device,
        help="device of stage 0 (stages 1-3 run where accelerate puts them: the GPU when there is one)",
    )
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    """The ``BuildConfig`` of the parsed flags (``--quick``: a few steps per stage, whatever the step flags say)."""
    names = {f.name for f in fields(BuildConfig)} - {"progress", "check_questions"}
    config = BuildConfig(**{name: getattr(args, name) for name in names}, progress=not args.no_progress)
    return config.quick() if args.quick else config


def main(argv: list[str] | None = None) -> int:
    config = config_from_args(parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = build(config)
    if not result.within_budget:
        logger.error("the model is %.1f MB, over the 25 MB budget of the bundled assets", result.size_mb)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
