"""Train a tiny CLaRa model from scratch on CPU through stages 1, 2 and 3, and print one table against held-out data.

Data: the official stage-1 example (``pretrain_data.jsonl``: Wikipedia passages with generated QA pairs). Each
passage's QA pairs are split: most train, the last ``--held-out`` per passage are never trained on.

Phases (each a call of ``clara_plugins.training.train`` except phase 0):
  0. a tokenizer and a small Mistral-shaped base LM trained from scratch on the passages and training QA text
     (the frozen base every stage builds on);
  1. stage 1: compressor + generator + memory rows on QA targets (+ 0.1 MSE);
  2. stage 2: answer a question from 5 compressed documents (gold + 4 BM25 distractors);
  3. stage 3: the query reasoner (copy of the compressor) + generator, from the answer's loss only, through the
     straight-through top-k over 20 candidates (gold + 19 BM25-mined); no relevance labels are used;
  baselines: the supervised InfoNCE query reasoner (same start, uses the labels) and BM25 on the same candidates.

Run: ``python examples/domain_adaptation/tiny_from_scratch.py --out runs/tiny_from_scratch``
(docs/training.md reports the table and the time on 2 CPU cores). ``--help`` lists the knobs.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import random
import time
from pathlib import Path

import torch

from clara_plugins.config import ClaraConfig
from clara_plugins.model import ClaraModel
from clara_plugins.tiny import build_tiny_base, build_tiny_tokenizer
from clara_plugins.training import TrainConfig, train
from clara_plugins.training.bm25 import BM25Retriever
from clara_plugins.training.data import QARow, Stage1Row, load_stage1
from clara_plugins.training.evaluate import answer_from, format_table, rank_candidates
from clara_plugins.training.metrics import qa_metrics, retrieval_metrics
from clara_plugins.training.stages import Stage1, Stage2

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "clara_example" / "pretrain_data.jsonl"
log = logging.getLogger("tiny_from_scratch")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data", default=str(DEFAULT_DATA), help="official stage-1 JSONL")
    p.add_argument("--out", default="runs/tiny_from_scratch", help="output folder (metrics, plots, models)")
    p.add_argument("--passages", type=int, default=400, help="passages used")
    p.add_argument("--held-out", type=int, default=2, help="QA pairs held out per passage")
    p.add_argument("--doc-chars", type=int, default=400, help="passages are cut to this many characters")
    p.add_argument("--vocab", type=int, default=2000)
    p.add_argument("--hidden", type=int, default=96)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--n-mem", type=int, default=8, help="memory vectors per document")
    p.add_argument(
        "--steps",
        type=int,
        nargs=5,
        default=[400, 400, 400, 150, 150],
        metavar=("LM", "S1", "S2", "S3", "RET"),
        help="optimiser steps of phase 0, stage 1, stage 2, stage 3 and the InfoNCE baseline",
    )
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--candidates", type=int, default=20, help="stage-3 candidates per question")
    p.add_argument("--eval-questions", type=int, default=150, help="held-out questions evaluated")
    p.add_argument(
        "--no-paraphrase",
        action="store_true",
        help="stage 1 without paraphrase rows (by default each passage also gets one whose target is the "
        "passage itself, so the memory must hold all of it)",
    )
    p.add_argument(
        "--fresh-generator",
        action="store_true",
        help="re-initialise the generator for stage 2 as the paper does (default: continue stage 1's generator)",
    )
    p.add_argument(
        "--in-batch-negatives",
        action="store_true",
        help="the InfoNCE baseline also uses the other questions' candidates as negatives (the training module's "
        "default; the table in docs/training.md was made without it)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return p.parse_args()


# ---------------------------------------------------------------------- data
def split_data(args: argparse.Namespace) -> tuple[list[Stage1Row], list[Stage1Row], list[str]]:
    """Train / held-out stage-1 rows over the same passages; QA pairs whose answer is not in the cut passage go."""
    train_rows, held_rows, docs = [], [], []
    for row in load_stage1(args.data):
        doc = row.docs[0][: args.doc_chars]
        pairs = [(q, a) for q, a in zip(row.questions, row.answers) if a.lower() in doc.lower() and len(a) < 60]
        if len(pairs) < args.held_out + 2:
            continue
        docs.append(doc)
        cut = len(pairs) - args.held_out
        train_rows.append(Stage1Row("qa", [q for q, _ in pairs[:cut]], [a for _, a in pairs[:cut]], [doc]))
        held_rows.append(Stage1Row("qa", [q for q, _ in pairs[cut:]], [a for _, a in pairs[cut:]], [doc]))
        if len(docs) == args.passages:
            break
    return train_rows, held_rows, docs


def qa_rows(rows: list[Stage1Row], docs: list[str], bm25: BM25Retriever, n: int, seed: int) -> list[QARow]:
    """One row per question: its passage plus the BM25-best other passages, shuffled; pos_index marks the gold."""
    rng = random.Random(seed)
    out = []
    for r in rows:
        gold = docs.index(r.docs[0])
        for q, a in zip(r.questions, r.answers):
            others = [d for d in bm25.search(q, n + 1) if d != gold][: n - 1]
            cands = [gold, *others]
            rng.shuffle(cands)
            out.append(QARow(q, [docs[d] for d in cands], [a], [cands.index(gold)]))
    return out


# ---------------------------------------------------------------------- phase 0: base LM from scratch
def pretrain_base(args: argparse.Namespace, train_rows: list[Stage1Row], docs: list[str]) -> ClaraModel:
    texts = docs + [f"Question: {q}\nAnswer: {a}" for r in train_rows for q, a in zip(r.questions, r.answers)]
    tokenizer = build_tiny_tokenizer(texts, args.vocab)
    base = build_tiny_base(
        len(tokenizer), args.hidden, args.layers, num_heads=4, num_kv_heads=2, seed=args.seed, initializer_range=0.02
    )
    base.train()
    opt = torch.optim.AdamW(base.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=args.steps[0], pct_start=0.05)
    rng = random.Random(args.seed)
    tokenizer.padding_side = "right"
    tokenizer.pad_token = tokenizer.bos_token  # pad = bos, as CLaRa does
    for step in range(args.steps[0]):
        batch = tokenizer(
            rng.sample(texts, args.batch), return_tensors="pt", padding=True, truncation=True, max_length=128
        )
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = base(**batch, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(base.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 100 == 0 or step == args.steps[0] - 1:
            log.info("phase 0 step %d: LM loss %.3f", step, loss.item())
    tokenizer.padding_side = "left"
    base.eval()
    config = ClaraConfig(
        base_model="tiny-from-scratch",
        doc_max_length=args.n_mem * 16,
        compr_rate=16,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        training_stage="untrained",
        max_new_tokens=24,
    )
    return ClaraModel.from_base(base, tokenizer, config)


# ---------------------------------------------------------------------- evaluation
def measure(
    model: ClaraModel,
    name: str,
    held1: list[Stage1Row],
    held2: list[QARow],
    held3: list[QARow],
    args: argparse.Namespace,
    retrieval: bool = True,
) -> dict:
    """Held-out stage-1 loss, answer CE, EM/F1 with gold + 4 distractors, and ranking over the candidates."""
    cfg = TrainConfig(stage="2", train_file="-", max_docs=5)
    row: dict = {"model": name}
    with torch.no_grad():
        row["s1_loss"] = _mean_loss(Stage1(cfg), model, held1)
        row["answer_ce"] = _mean_loss(Stage2(cfg), model, held2)
    preds = answer_from(model, held2, [list(range(len(r.docs))) for r in held2], 24)
    row.update({k: v for k, v in qa_metrics(preds, [r.answers for r in held2]).items() if k in ("em", "f1")})
    if retrieval:
        ranked = rank_candidates(model, held3)
        row.update(retrieval_metrics(ranked, [r.pos_index for r in held3], (1, 3, 5)))
        preds = answer_from(model, held3, [rk[:5] for rk in ranked], 24)
        row["e2e_f1"] = qa_metrics(preds, [r.answers for r in held3])["f1"]
    log.info("%s", row)
    return row


def _mean_loss(stage, model: ClaraModel, rows: list) -> float:
    total = 0.0
    for i in range(0, len(rows), 16):
        chunk = rows[i : i + 16]
        total += stage.loss(model, chunk)[0].item() * len(chunk)
    return total / len(rows)


def run_stage(stage: str, model: ClaraModel, rows: list, steps: int, args: argparse.Namespace, **kw) -> ClaraModel:
    cfg = TrainConfig(
        stage=stage,
        output_dir=f"{args.out}/stage{stage}",
        max_steps=steps,
        batch_size=args.batch,
        seed=args.seed,
        log_every=25,
        eval_generate=False,
        **kw,
    )
    return train(cfg, model, rows=rows)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("clara_plugins.model", "accelerate", "clara_plugins.training.trainer"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    train1, held1, docs = split_data(args)
    bm25 = BM25Retriever(docs)
    train2, held2 = qa_rows(train1, docs, bm25, 5, args.seed), qa_rows(held1, docs, bm25, 5, args.seed + 1)
    train3 = qa_rows(train1, docs, bm25, args.candidates, args.seed + 2)
    held3 = qa_rows(held1, docs, bm25, args.candidates, args.seed + 3)[: args.eval_questions]
    held2 = held2[: args.eval_questions]
    held1_eval = held1[: max(1, args.eval_questions // args.held_out)]
    log.info("%d passages, %d train / %d held-out questions", len(docs), len(train2), len(held2))

    model = pretrain_base(args, train1, docs)
    model.ensure_adapter("query_reasoner", init_from="compressor")
    table = [measure(model, "untrained (LM-pretrained base, fresh adapters)", held1_eval, held2, held3, args)]
    para = [] if args.no_paraphrase else [Stage1Row("paraphrase", [], [d], [d]) for d in docs]
    model = run_stage("1", model, train1 + para, args.steps[1], args, learning_rate=1e-3, max_docs=5)
    table.append(measure(model, "after stage 1", held1_eval, held2, held3, args, retrieval=False))
    model = run_stage(
        "2", model, train2, args.steps[2], args, learning_rate=1e-3, max_docs=5, fresh_generator=args.fresh_generator
    )
    model.ensure_adapter("query_reasoner", init_from="compressor")
    table.append(measure(model, "after stage 2 (query reasoner = compressor copy)", held1_eval, held2, held3, args))
    stage2_model = copy.deepcopy(model)
    model = run_stage("3", model, train3, args.steps[3], args, learning_rate=1e-3, top_k=5, temperature=0.02)
    table.append(measure(model, "after stage 3 (no labels)", held1_eval, held2, held3, args))
    ret = run_stage(
        "retrieval",
        stage2_model,
        train3,
        args.steps[4],
        args,
        learning_rate=1e-3,
        temperature=0.02,
        in_batch_negatives=args.in_batch_negatives,
    )
    table.append(measure(ret, "stage 2 + InfoNCE query reasoner (labels)", held1_eval, held2, held3, args))
    table.append(
        {
            "model": "BM25 (same candidates)",
            **retrieval_metrics(bm25_ranked(held3), [r.pos_index for r in held3], (1, 3, 5)),
        }
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps(table, indent=2) + "\n")
    print(format_table(table))
    print(f"\n{len(held2)} held-out questions; {time.perf_counter() - started:.0f} s total; seed {args.seed}")


def bm25_ranked(rows: list[QARow]) -> list[list[int]]:
    from clara_plugins.training.evaluate import bm25_rank_candidates

    return bm25_rank_candidates(rows)


if __name__ == "__main__":
    main()
