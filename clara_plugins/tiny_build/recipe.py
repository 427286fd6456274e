"""The CLaRa stages of the build, through ``clara_plugins.training.train``: their rows, their order, their settings.

stage 1  compression pretraining (QA targets + reconstruction as the paraphrase target)
stage J  dual encoder: compressor and query reasoner learn together from in-batch InfoNCE on the gold chunks
stage 2  instruction tuning on frozen memories (after stage J, so the retrieval geometry stays)
stage R  optional: query-reasoner InfoNCE warm-up on frozen memories
stage 3  optional: end-to-end through the straight-through top-k
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from pathlib import Path

from clara_plugins.baselines import TextRAG
from clara_plugins.config import ClaraConfig
from clara_plugins.model import ClaraModel
from clara_plugins.tiny_build.config import BuildConfig
from clara_plugins.tiny_build.data import Split, TrainData, docs_with_gold
from clara_plugins.training import TrainConfig, train
from clara_plugins.training.data import QARow, Stage1Row

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- rows
def stage1_rows(data: TrainData, group: int) -> list[Stage1Row]:
    """Per training chunk: the training QA pairs it answers, in groups of ``group``, and one reconstruction row
    (the chunk itself as the paraphrase target: there are no paraphrases, and reconstruction is their upper bound)."""
    by_chunk: dict[int, list[int]] = {}
    for i, g in enumerate(data.gold):
        by_chunk.setdefault(g, []).append(i)
    rows = []
    for c, text in enumerate(data.chunks):
        qs = by_chunk.get(c, [])
        for start in range(0, len(qs), group):
            part = qs[start : start + group]
            rows.append(Stage1Row("qa", [data.questions[i] for i in part], [data.answers[i] for i in part], [text]))
        rows.append(Stage1Row("paraphrase", [], [text], [text]))
    return rows


def stage2_rows(data: TrainData, k: int, seed: int) -> list[QARow]:
    """Per training question ``k`` chunks: its gold chunk and BM25 negatives, in a seeded random order."""
    rng = random.Random(seed)
    rows = []
    for i, q in enumerate(data.questions):
        docs, gold = docs_with_gold(data, i, k, rng)
        rows.append(QARow(q, [data.chunks[d] for d in docs], [data.answers[i]], [gold]))
    return rows


def stage3_rows(data: TrainData) -> list[QARow]:
    """Per training question all its candidate chunks (BM25 top-n plus the gold one)."""
    return [
        QARow(q, [data.chunks[d] for d in cands], [data.answers[i]], [cands.index(data.gold[i])])
        for i, (q, cands) in enumerate(zip(data.questions, data.candidates, strict=True))
    ]


def joint_rows(data: TrainData) -> list[QARow]:
    """Per training question its gold chunk alone: the other questions' chunks are the (in-batch) negatives."""
    return [QARow(q, [data.chunks[data.gold[i]]], ["-"], [0]) for i, q in enumerate(data.questions)]


# ---------------------------------------------------------------------------- stages
def run_stage(model: ClaraModel, stage: str, rows: list, config: BuildConfig, work: Path, **kwargs) -> None:
    """One stage through the training module (``clara_plugins.training.train``); no eval rows (the bench does it)."""
    train_config = TrainConfig(
        stage=stage,
        output_dir=str(work / f"stage{stage}"),
        seed=config.seed,
        log_every=10,
        plot=False,
        progress=config.progress,
        eval_generate=False,
        **kwargs,
    )
    logger.info("stage %s: %d rows, %s", stage, len(rows), kwargs)
    started = time.perf_counter()
    train(train_config, model=model, rows=rows)
    logger.info("stage %s done in %.0f s", stage, time.perf_counter() - started)


def wrap_clara(lm, tokenizer, config: BuildConfig) -> ClaraModel:
    """The stage-0 base with CLaRa's tokens and three fresh LoRA adapters (lora_B = 0: the base's behaviour)."""
    clara_config = ClaraConfig(
        base_model="clara-plugins-tiny-base",
        doc_max_length=config.doc_max_length,
        compr_rate=config.compr_rate,
        lora_r=config.lora_r,
        lora_alpha=2 * config.lora_r,
        lora_dropout=0.0,
        max_new_tokens=32,
        training_stage="untrained",
    )
    for p in lm.parameters():
        p.requires_grad_(False)
    return ClaraModel.from_base(lm, tokenizer, clara_config, source="clara-plugins tiny build")


def train_clara(model: ClaraModel, data: TrainData, config: BuildConfig, work: Path) -> None:
    """Stages 1, J, 2, then the optional R and 3; names the checkpoint's training stage after the last one run."""
    c, b = config, config.batch
    run_stage(model, "1", stage1_rows(data, 4), c, work, max_steps=c.steps1, batch_size=b, learning_rate=c.lr)
    if c.stepsJ:  # before stage 2, so that the generator learns to read the memories this stage reshapes
        run_stage(
            model,
            "retrieval",
            joint_rows(data),
            c,
            work / "joint",
            max_steps=c.stepsJ,
            batch_size=c.batchJ,
            learning_rate=c.lrJ,
            temperature=c.temperatureJ,
            train_compressor=True,
            in_batch_negatives=True,
        )
    rows2 = stage2_rows(data, c.stage2_docs, c.seed)
    run_stage(
        model,
        "2",
        rows2,
        c,
        work,
        max_steps=c.steps2,
        batch_size=b,
        learning_rate=c.lr,
        max_docs=5,
        train_compressor=False if c.stepsJ else None,  # keep the retrieval geometry stage J learnt
    )
    rows3 = stage3_rows(data)
    if c.stepsR:
        run_stage(
            model,
            "retrieval",
            rows3,
            c,
            work,
            max_steps=c.stepsR,
            batch_size=2 * b,
            learning_rate=c.lr,
            in_batch_negatives=c.in_batch_negatives,
            init_query_reasoner=not c.stepsJ,  # continue the dual encoder's query reasoner
        )
    model.config.training_stage = "stage1_2"  # the official name of the Instruct (stage-2) checkpoints
    if c.steps3:
        train_end_to_end(model, rows3, c, work)


def train_end_to_end(model: ClaraModel, rows3: list[QARow], config: BuildConfig, work: Path) -> None:
    """Stage 3: the answer loss trains the query reasoner through the straight-through top-k (top 5)."""
    run_stage(
        model,
        "3",
        rows3,
        config,
        work,
        max_steps=config.steps3,
        batch_size=config.batch,
        learning_rate=config.lr3,
        init_query_reasoner=not (config.stepsR or config.stepsJ),
        top_k=5,
    )
    model.config.training_stage = "stage2"  # the official name of the end-to-end (stage-3) checkpoints


# ---------------------------------------------------------------------------- sanity check and save
def quick_check(model: ClaraModel, split: Split, n: int) -> dict[str, float]:
    """Answer F1 on ``n`` held-out questions given their gold passage's chunks: CLaRa vs the same base on the text."""
    from clara_plugins.training.metrics import qa_metrics

    held = split.by_split("heldout_question")[:n]
    questions, golds = [q["question"] for q in held], [q["answers"] for q in held]
    docs = [[c.text for c in model.chunk(split.passages[q["doc_id"]]["text"])] for q in held]
    memories = [model.compress(d) for d in docs]
    clara = model.generate(questions, memories, max_new_tokens=32)
    text = TextRAG.from_clara(model).generate(questions, docs, max_new_tokens=32)
    for q, a, c, t in list(zip(questions, golds, clara, text))[:3]:
        logger.info("Q: %s | gold: %s | clara: %s | text: %s", q, a[0], c, t)
    return {"clara_f1": qa_metrics(clara, golds)["f1"], "text_f1": qa_metrics(text, golds)["f1"]}


def save(model: ClaraModel, out: Path) -> float:
    """Write the model in our format, fp32, base included (replacing ``out``); returns the folder's size in MB."""
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out, include_base=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
    logger.info("saved %s (%.1f MB)", out, size)
    return size
