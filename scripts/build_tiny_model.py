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

Stages 1, J, 2, R and 3 run through ``clara_plugins.training.train``; stage 0 is here (the training module only
trains adapters). Data: ``../shared/data/clara_example/pretrain_data.jsonl`` (1,000 Wikipedia passages with 5-10
QA pairs each). Every passage keeps ``--heldout-per-passage`` of its questions out of all training, and
``--heldout-passages`` passages are kept out entirely (neither their text nor their questions are trained on).

    python scripts/build_tiny_model.py                  # the real build (~50 min on an idle 2-core CPU)
    python scripts/build_tiny_model.py --base-from runs/tiny_build/stage0a   # redo stages 1-3 only
    python scripts/build_tiny_model.py --quick --out /tmp/tiny --assets-dir /tmp/assets   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from clara_plugins.baselines import TextRAG, pad_left, text_prompt_ids
from clara_plugins.chunking import Chunk, chunk_text
from clara_plugins.config import ClaraConfig
from clara_plugins.model import ClaraModel
from clara_plugins.tiny import build_tiny_base, build_tiny_tokenizer
from clara_plugins.tokens import plain_ids
from clara_plugins.training import TrainConfig, train
from clara_plugins.training.data import QARow, Stage1Row
from clara_plugins.training.synthesis import mine_candidates

logger = logging.getLogger("build_tiny_model")
REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "clara_example" / "pretrain_data.jsonl"
TITLE = re.compile(r"^This a document about (.+?)\.\s*\n")


# ---------------------------------------------------------------------------- data
@dataclass
class Split:
    """The demo corpus and its questions, split into training and held-out questions."""

    passages: list[dict]  # {"id", "title", "text"}
    questions: list[dict]  # {"id", "question", "answers", "doc_id", "split"}
    train_docs: list[int] = field(default_factory=list)  # positions of passages used in training

    def by_split(self, name: str) -> list[dict]:
        return [q for q in self.questions if q["split"] == name]


def make_split(path: Path, seed: int, heldout_per_passage: int, heldout_passages: int) -> Split:
    """Passages with ids and titles; per passage ``heldout_per_passage`` questions held out; some passages held out."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(seed)
    held_docs = set(rng.sample(range(len(rows)), heldout_passages))
    passages, questions = [], []
    for i, row in enumerate(rows):
        text = row["docs"][0]
        match = TITLE.match(text)
        passages.append({"id": f"demo-{i:04d}", "title": match.group(1) if match else "", "text": text})
        pairs = list(zip(row["question"], row["answers"], strict=True))
        order = list(range(len(pairs)))
        rng.shuffle(order)
        for rank, j in enumerate(order):
            if i in held_docs:
                split = "heldout_passage"
            else:
                split = "heldout_question" if rank < heldout_per_passage else "train"
            q, a = pairs[j]
            questions.append({"id": f"q-{i:04d}-{j}", "question": q, "answers": [a], "doc_id": i, "split": split})
    train_docs = [i for i in range(len(rows)) if i not in held_docs]
    return Split(passages, questions, train_docs)


def write_assets(split: Split, folder: Path) -> None:
    """``demo_corpus.jsonl`` (id, title, text, and one held-out question/answer for ``clara demo``) and
    ``demo_questions.jsonl`` (every question with its split and source passage id)."""
    folder.mkdir(parents=True, exist_ok=True)
    first_heldout: dict[int, dict] = {}
    for q in split.questions:
        if q["split"] != "train":
            first_heldout.setdefault(q["doc_id"], q)
    with (folder / "demo_corpus.jsonl").open("w", encoding="utf-8") as f:
        for i, p in enumerate(split.passages):
            q = first_heldout[i]
            f.write(json.dumps({**p, "question": q["question"], "answer": q["answers"][0]}, ensure_ascii=False) + "\n")
    with (folder / "demo_questions.jsonl").open("w", encoding="utf-8") as f:
        for q in split.questions:
            row = {**q, "doc_id": split.passages[q["doc_id"]]["id"]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    logger.info("wrote %s and demo_questions.jsonl (%d questions)", folder / "demo_corpus.jsonl", len(split.questions))


@dataclass
class TrainData:
    """The training passages cut into chunks of at most ``doc_max_length`` tokens (what gets compressed and
    retrieved), and the training questions with their gold chunk and mined candidate chunks."""

    chunks: list[str]  # chunk texts of the training passages
    questions: list[str]
    answers: list[str]
    gold: list[int]  # chunk position of each question's answer
    candidates: list[list[int]]  # BM25 top-n chunks plus the gold chunk, shuffled


def gold_chunk(chunks: list[Chunk], answer: str) -> int:
    """The chunk of a passage holding the answer (case-insensitive), else the first one."""
    needle = answer.strip().rstrip(".").lower()
    for j, c in enumerate(chunks):
        if needle and needle in c.text.lower():
            return j
    return 0


def training_data(split: Split, tokenizer, max_tokens: int, n_candidates: int, seed: int) -> TrainData:
    """Chunks and BM25 candidates among the training passages only (held-out passages never appear in any
    training example, not even as negatives)."""
    chunks, first = [], {}
    per_doc: dict[int, list[Chunk]] = {}
    for d in split.train_docs:
        per_doc[d] = chunk_text(split.passages[d]["text"], tokenizer, max_tokens)
        first[d] = len(chunks)
        chunks += [c.text for c in per_doc[d]]
    train = split.by_split("train")
    gold = [first[q["doc_id"]] + gold_chunk(per_doc[q["doc_id"]], q["answers"][0]) for q in train]
    questions = [q["question"] for q in train]
    logger.info("%d training passages -> %d chunks; mining %d BM25 candidates", len(per_doc), len(chunks), n_candidates)
    cands = mine_candidates(questions, chunks, n_candidates, gold=[[g] for g in gold], seed=seed)
    return TrainData(chunks, questions, [q["answers"][0] for q in train], gold, cands)


def docs_with_gold(data: TrainData, i: int, k: int, rng: random.Random) -> tuple[list[int], int]:
    """``k`` candidate chunks of question ``i`` including its gold chunk, in a random order."""
    negatives = [d for d in data.candidates[i] if d != data.gold[i]]
    docs = [data.gold[i], *rng.sample(negatives, min(k - 1, len(negatives)))]
    rng.shuffle(docs)
    return docs, docs.index(data.gold[i])


# ---------------------------------------------------------------------------- stage 0
def stage0_batch(
    tokenizer,
    data: TrainData,
    rng: random.Random,
    tokens: int,
    lm_share: float,
    max_docs: int,
    answer_weight: float = 0.5,
) -> tuple[dict, torch.Tensor]:
    """One stage-0 batch of about ``tokens`` tokens: plain passages, or text-RAG examples with 1..max_docs docs.

    Returns the padded batch (``labels``: every real token) and a per-token weight that puts ``answer_weight`` of
    each text-RAG example's loss on its answer, so the short answers are not drowned by the context.
    """
    texts = data.chunks
    if rng.random() < lm_share:
        picked = rng.sample(range(len(texts)), max(1, tokens // 200))
        ids = plain_ids(tokenizer, [texts[i] for i in picked])
        rows = [[tokenizer.bos_token_id, *r, tokenizer.eos_token_id] for r in ids]
        batch = pad_left(rows, tokenizer.bos_token_id, rows)
        return batch, (batch["labels"] != -100).float()
    k = rng.randint(1, max_docs)
    idx = rng.sample(range(len(data.questions)), max(1, tokens // (150 * k + 80)))
    docs = [[texts[d] for d in docs_with_gold(data, i, k, rng)[0]] for i in idx]
    prompts = text_prompt_ids(tokenizer, [data.questions[i] for i in idx], docs)
    answers = [[*ids, tokenizer.eos_token_id] for ids in plain_ids(tokenizer, [data.answers[i] for i in idx])]
    rows = [p + a for p, a in zip(prompts, answers, strict=True)]
    aw = answer_weight
    weights = [[(1 - aw) / len(p)] * len(p) + [aw / len(a)] * len(a) for p, a in zip(prompts, answers, strict=True)]
    return pad_weighted(rows, weights, tokenizer.bos_token_id)


def pad_weighted(rows: list[list[int]], weights: list[list[float]], pad_id: int) -> tuple[dict, torch.Tensor]:
    """``pad_left`` of ``rows`` (every token a label) and the per-token ``weights`` padded the same way with 0."""
    batch = pad_left(rows, pad_id, rows)
    width = batch["input_ids"].shape[1]
    return batch, torch.tensor([[0.0] * (width - len(w)) + w for w in weights])


def copy_batch(rng: random.Random, vocab: int, bos: int, rows: int = 32, max_len: int = 48, max_prefix: int = 16):
    """Random token spans, each followed by itself, behind a random prefix; the loss is on the repeat only.

    The spans have random lengths and positions, so only content-based copying ("induction heads": attend to the
    token after an earlier occurrence of the current one) predicts the repeat. A small base trained on text alone
    never learnt that within a CPU budget (docs/tiny-model.md), and without it no reader can copy an answer.
    """
    ids, weights = [], []
    for _ in range(rows):
        span = [rng.randrange(10, vocab) for _ in range(rng.randint(8, max_len))]
        prefix = [rng.randrange(10, vocab) for _ in range(rng.randint(0, max_prefix))]
        ids.append([bos, *prefix, *span, *span])
        weights.append([0.0] * (2 + len(prefix) + len(span)) + [1.0] * (len(span) - 1))
    return pad_weighted(ids, weights, bos)


def weighted_lm_loss(lm, batch: dict, weights: torch.Tensor) -> torch.Tensor:
    """Next-token CE, each token weighted (weights are per target position; mean over the batch)."""
    logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]  # (B, L-1, V)
    labels = batch["labels"][:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    w = weights[:, 1:] * (labels != -100)
    return ((ce * w).sum(1) / w.sum(1).clamp(min=1e-9)).mean()


@dataclass
class Phase:
    """One stage-0 phase: steps, peak learning rate, most passages per text-RAG example, weight of the answer,
    share of copy batches (``copy_batch``) and whether the learning rate stays constant after warm-up."""

    name: str
    steps: int
    lr: float
    max_docs: int
    answer_weight: float
    seed: int
    copy_share: float = 0.0
    constant_lr: bool = False


def stage0_phases(args: argparse.Namespace) -> list[Phase]:
    """Phase 0c (off by default): copy batches only, until content-based copying appears (a sudden drop of the
    copy loss, after about 900 steps in our runs); phase 0a: language and text RAG (1 to ``--max-docs0`` passages),
    with ``--copy-share`` copy batches so that the copying circuit stays; phase 0b (off by default): short contexts,
    three quarters of the loss on the answer. The defaults are the recipe of the shipped weights."""
    return [
        Phase("0c", args.steps0c, 1e-3, 1, 0.5, args.seed + 2, copy_share=1.0, constant_lr=True),
        Phase("0a", args.steps0, args.lr0, args.max_docs0, args.answer_weight0, args.seed, args.copy_share),
        Phase("0b", args.steps0b, args.lr0b, 2, 0.75, args.seed + 1, args.copy_share),
    ]


def run_stage0(lm, tokenizer, data: TrainData, phase: Phase, args: argparse.Namespace, out: Path) -> None:
    """Full-parameter training of the base LM for one phase (fresh AdamW, cosine schedule with warm-up), on the
    LM's device."""
    rng = random.Random(phase.seed)
    lm.train()
    opt = torch.optim.AdamW(lm.parameters(), lr=phase.lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, phase.steps // 30)
    if phase.constant_lr:
        sched = get_constant_schedule_with_warmup(opt, warmup)
    else:
        sched = get_cosine_schedule_with_warmup(opt, warmup, phase.steps)
    out.mkdir(parents=True, exist_ok=True)
    log = (out / f"stage{phase.name}_metrics.jsonl").open("w")
    bar = tqdm(range(phase.steps), desc=f"stage {phase.name}", disable=args.no_progress)
    running, seen, started = defaultdict(list), 0, time.perf_counter()
    device = lm.device
    for step in bar:
        # no draw without copy batches, so those phases see exactly the batches they saw before copy batches existed
        kind = "copy_loss" if phase.copy_share > 0 and rng.random() < phase.copy_share else "loss"
        if kind == "copy_loss":
            batch, weights = copy_batch(rng, len(tokenizer), tokenizer.bos_token_id)
        else:
            batch, weights = stage0_batch(
                tokenizer, data, rng, args.tokens0, args.lm_share, phase.max_docs, phase.answer_weight
            )
        loss = weighted_lm_loss(lm, {k: v.to(device) for k, v in batch.items()}, weights.to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        running[kind].append(loss.item())
        seen += int(batch["attention_mask"].sum())
        bar.set_postfix({kind: f"{loss.item():.3f}"})
        if (step + 1) % 20 == 0 or step + 1 == phase.steps:
            record = {"step": step + 1, **{k: round(sum(v) / len(v), 4) for k, v in running.items()}}
            record["tokens_per_s"] = round(seen / (time.perf_counter() - started), 1)
            log.write(json.dumps(record) + "\n")
            log.flush()
            logger.info("stage %s %s", phase.name, record)
            running = defaultdict(list)
    log.close()
    lm.eval()


def load_stage0(folder: Path):
    """A saved stage-0 base and its tokenizer (read from ``folder``, or from its parent for ``assets/tiny/base``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok_dir = folder if (folder / "tokenizer.json").is_file() else folder.parent
    logger.info("stage 0a skipped: base from %s, tokenizer from %s", folder, tok_dir)
    return lm, AutoTokenizer.from_pretrained(tok_dir)


# ---------------------------------------------------------------------------- CLaRa stages
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
    rng = random.Random(seed)
    rows = []
    for i, q in enumerate(data.questions):
        docs, gold = docs_with_gold(data, i, k, rng)
        rows.append(QARow(q, [data.chunks[d] for d in docs], [data.answers[i]], [gold]))
    return rows


def stage3_rows(data: TrainData) -> list[QARow]:
    return [
        QARow(q, [data.chunks[d] for d in cands], [data.answers[i]], [cands.index(data.gold[i])])
        for i, (q, cands) in enumerate(zip(data.questions, data.candidates, strict=True))
    ]


def run_stage(model: ClaraModel, stage: str, rows: list, args: argparse.Namespace, work: Path, **kwargs) -> None:
    """One stage through the training module (``clara_plugins.training.train``); no eval rows (the bench does it)."""
    config = TrainConfig(
        stage=stage,
        output_dir=str(work / f"stage{stage}"),
        seed=args.seed,
        log_every=10,
        plot=False,
        progress=not args.no_progress,
        eval_generate=False,
        **kwargs,
    )
    logger.info("stage %s: %d rows, %s", stage, len(rows), kwargs)
    started = time.perf_counter()
    train(config, model=model, rows=rows)
    logger.info("stage %s done in %.0f s", stage, time.perf_counter() - started)


def wrap_clara(lm, tokenizer, args: argparse.Namespace) -> ClaraModel:
    """The stage-0 base with CLaRa's tokens and three fresh LoRA adapters (lora_B = 0: the base's behaviour)."""
    config = ClaraConfig(
        base_model="clara-plugins-tiny-base",
        doc_max_length=args.doc_max_length,
        compr_rate=args.compr_rate,
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        lora_dropout=0.0,
        max_new_tokens=32,
        training_stage="untrained",
    )
    for p in lm.parameters():
        p.requires_grad_(False)
    return ClaraModel.from_base(lm, tokenizer, config, source="clara-plugins tiny build")


def joint_rows(data: TrainData) -> list[QARow]:
    """Per training question its gold chunk alone: the other questions' chunks are the (in-batch) negatives."""
    return [QARow(q, [data.chunks[data.gold[i]]], ["-"], [0]) for i, q in enumerate(data.questions)]


def train_clara(model: ClaraModel, data: TrainData, args: argparse.Namespace, work: Path) -> None:
    b = args.batch
    run_stage(model, "1", stage1_rows(data, 4), args, work, max_steps=args.steps1, batch_size=b, learning_rate=args.lr)
    if args.stepsJ:  # before stage 2, so that the generator learns to read the memories this stage reshapes
        run_stage(
            model,
            "retrieval",
            joint_rows(data),
            args,
            work / "joint",
            max_steps=args.stepsJ,
            batch_size=args.batchJ,
            learning_rate=args.lrJ,
            temperature=args.temperatureJ,
            train_compressor=True,
            in_batch_negatives=True,
        )
    rows2 = stage2_rows(data, args.stage2_docs, args.seed)
    run_stage(
        model,
        "2",
        rows2,
        args,
        work,
        max_steps=args.steps2,
        batch_size=b,
        learning_rate=args.lr,
        max_docs=5,
        train_compressor=False if args.stepsJ else None,  # keep the retrieval geometry stage J learnt
    )
    rows3 = stage3_rows(data)
    if args.stepsR:
        run_stage(
            model,
            "retrieval",
            rows3,
            args,
            work,
            max_steps=args.stepsR,
            batch_size=2 * b,
            learning_rate=args.lr,
            in_batch_negatives=args.in_batch_negatives,
            init_query_reasoner=not args.stepsJ,  # continue the dual encoder's query reasoner
        )
    model.config.training_stage = "stage1_2"  # the official name of the Instruct (stage-2) checkpoints
    if not args.steps3:
        return
    run_stage(
        model,
        "3",
        rows3,
        args,
        work,
        max_steps=args.steps3,
        batch_size=b,
        learning_rate=args.lr3,
        init_query_reasoner=not (args.stepsR or args.stepsJ),
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
    """Write the model in our format, fp32, base included; returns the folder's size in MB."""
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out, include_base=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
    logger.info("saved %s (%.1f MB)", out, size)
    return size


# ---------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA, help="official stage-1 JSONL (passages with QA pairs)")
    p.add_argument("--out", type=Path, default=REPO / "clara_plugins" / "assets" / "tiny", help="model folder")
    p.add_argument("--assets-dir", type=Path, default=REPO / "clara_plugins" / "assets", help="demo data folder")
    p.add_argument("--work-dir", type=Path, default=REPO / "runs" / "tiny_build", help="logs and stage outputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest for this size on a shared machine)"
    )
    p.add_argument("--heldout-per-passage", type=int, default=2, help="questions per passage never trained on")
    p.add_argument("--heldout-passages", type=int, default=50, help="passages never trained on at all")
    p.add_argument("--vocab", type=int, default=4000)
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--doc-max-length", type=int, default=256)
    p.add_argument("--compr-rate", type=int, default=16)
    p.add_argument("--lora-r", type=int, default=32)
    p.add_argument("--steps0c", type=int, default=0, help="stage-0c steps (copy batches only; default off)")
    p.add_argument("--steps0", type=int, default=1000, help="stage-0a steps (full-parameter LM pretraining)")
    p.add_argument("--copy-share", type=float, default=0.0, help="share of copy batches in stages 0a and 0b")
    p.add_argument("--max-docs0", type=int, default=5, help="most passages per stage-0a text-RAG example")
    p.add_argument("--answer-weight0", type=float, default=0.5, help="share of a stage-0a example's loss on the answer")
    p.add_argument("--steps0b", type=int, default=0, help="stage-0b steps (short contexts; default off)")
    p.add_argument("--lr0b", type=float, default=1e-3)
    p.add_argument(
        "--base-from", type=Path, default=None, help="skip stage 0a: start from this saved base (after phase 0a)"
    )
    p.add_argument("--tokens0", type=int, default=2048, help="tokens per stage-0 batch (about)")
    p.add_argument("--lm-share", type=float, default=0.3, help="share of stage-0 batches that are plain passages")
    p.add_argument("--lr0", type=float, default=2e-3)
    p.add_argument("--steps1", type=int, default=250)
    p.add_argument("--steps2", type=int, default=120)
    p.add_argument("--stage2-docs", type=int, default=3, help="passages per stage-2 example (gold + negatives)")
    p.add_argument(
        "--stepsJ",
        type=int,
        default=1000,
        help="dual-encoder steps after stage 1: compressor and query reasoner learn together from in-batch InfoNCE "
        "on the training questions' gold chunks (0: none)",
    )
    p.add_argument("--batchJ", type=int, default=32, help="questions per dual-encoder step")
    p.add_argument("--lrJ", type=float, default=1e-3, help="learning rate of the dual-encoder stage")
    p.add_argument("--temperatureJ", type=float, default=0.05, help="InfoNCE temperature of the dual-encoder stage")
    p.add_argument(
        "--stepsR", type=int, default=0, help="query-reasoner InfoNCE warm-up steps on frozen documents (0: none)"
    )
    p.add_argument(
        "--in-batch-negatives",
        action="store_true",
        help="stage R also uses the other questions' candidates as negatives (the training module's default)",
    )
    p.add_argument(
        "--steps3",
        type=int,
        default=0,
        help="end-to-end steps (0: none; they lowered retrieval, see docs/tiny-model.md)",
    )
    p.add_argument("--n-candidates", type=int, default=16, help="candidates per question in stages R and 3")
    p.add_argument("--batch", type=int, default=8, help="examples per step in stages 1, 2, 3")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of stages 1, 2 and R (LoRA)")
    p.add_argument("--lr3", type=float, default=3e-4, help="learning rate of stage 3")
    p.add_argument("--quick", action="store_true", help="a few steps per stage (smoke test of the pipeline)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="device of stage 0 (stages 1-3 run where accelerate puts them: the GPU when there is one)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.steps0c, args.steps0, args.steps0b = 3, 6, 3
        args.steps1, args.stepsJ, args.steps2, args.stepsR, args.steps3 = 4, 3, 3, 3, 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    (work / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=2))
    split = make_split(args.data, args.seed, args.heldout_per_passage, args.heldout_passages)
    write_assets(split, args.assets_dir)
    train_texts = [split.passages[i]["text"] for i in split.train_docs]
    train_qa = [t for q in split.by_split("train") for t in (q["question"], q["answers"][0])]
    phases = stage0_phases(args)
    if args.base_from:  # resume after phase 0a with a saved base (work-dir/stage0a, or a build's tiny/base)
        lm, tokenizer = load_stage0(args.base_from)
        data = training_data(split, tokenizer, args.doc_max_length, args.n_candidates, args.seed)
        phases = [p for p in phases if p.name == "0b"]
    else:
        tokenizer = build_tiny_tokenizer(train_texts + train_qa, args.vocab)
        data = training_data(split, tokenizer, args.doc_max_length, args.n_candidates, args.seed)
        lm = build_tiny_base(
            len(tokenizer), args.hidden, args.layers, args.heads, args.kv_heads, args.intermediate, args.seed, 0.02
        )
        logger.info("base: %.2fM parameters", sum(p.numel() for p in lm.parameters()) / 1e6)
    lm.to(args.device)
    for phase in (p for p in phases if p.steps > 0):
        run_stage0(lm, tokenizer, data, phase, args, work)
        lm.save_pretrained(work / f"stage{phase.name}")
        tokenizer.save_pretrained(work / f"stage{phase.name}")
    model = wrap_clara(lm, tokenizer, args)
    train_clara(model, data, args, work)
    logger.info("held-out check (gold passage only): %s", quick_check(model, split, 40 if not args.quick else 4))
    size = save(model, args.out)
    minutes = (time.perf_counter() - started) / 60
    logger.info("build finished in %.1f min; model %.1f MB at %s", minutes, size, args.out)
    if size > 25:
        logger.error("the model is %.1f MB, over the 25 MB budget of the bundled assets", size)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
