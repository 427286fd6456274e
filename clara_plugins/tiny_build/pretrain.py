"""Stage 0: full-parameter causal-LM pretraining of the tiny base (``clara_plugins.training`` only trains adapters).

The base learns language from the training chunks and text RAG from examples in exactly CLaRa's prompt
(``[INST] system\\n\\nBackground:\\n{passages}\\n\\nQuestion:{q} [/INST] {answer}</s>``), so that the base alone is a
fair text-RAG baseline (``clara_plugins.baselines.TextRAG``). Copy batches (random spans repeated) can be mixed in so
that content-based copying appears.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from clara_plugins.baselines import pad_left, text_prompt_ids
from clara_plugins.tiny_build.config import BuildConfig
from clara_plugins.tiny_build.data import TrainData, docs_with_gold
from clara_plugins.tokens import plain_ids

logger = logging.getLogger(__name__)
LOG_EVERY = 20  # steps between two metrics records


# ---------------------------------------------------------------------------- batches and loss
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


def copy_batch(
    rng: random.Random, vocab: int, bos: int, rows: int = 32, max_len: int = 48, max_prefix: int = 16
) -> tuple[dict, torch.Tensor]:
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
    labels = batch["labels"][:, 1:]  # (B, L-1)
    ce = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    w = weights[:, 1:] * (labels != -100)
    return ((ce * w).sum(1) / w.sum(1).clamp(min=1e-9)).mean()


# ---------------------------------------------------------------------------- phases
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


def stage0_phases(config: BuildConfig) -> list[Phase]:
    """Phase 0c (off by default): copy batches only, until content-based copying appears (a sudden drop of the
    copy loss, after about 900 steps in our runs); phase 0a: language and text RAG (1 to ``max_docs0`` passages),
    with ``copy_share`` copy batches so that the copying circuit stays; phase 0b (off by default): short contexts,
    three quarters of the loss on the answer. The defaults are the recipe of the shipped weights."""
    c = config
    return [
        Phase("0c", c.steps0c, 1e-3, 1, 0.5, c.seed + 2, copy_share=1.0, constant_lr=True),
        Phase("0a", c.steps0, c.lr0, c.max_docs0, c.answer_weight0, c.seed, c.copy_share),
        Phase("0b", c.steps0b, c.lr0b, 2, 0.75, c.seed + 1, c.copy_share),
    ]


def next_batch(
    rng: random.Random, tokenizer, data: TrainData, phase: Phase, config: BuildConfig
) -> tuple[str, dict, torch.Tensor]:
    """The next batch of a phase and the name its loss is logged under ("copy_loss" or "loss")."""
    # no draw without copy batches, so those phases see exactly the batches they saw before copy batches existed
    if phase.copy_share > 0 and rng.random() < phase.copy_share:
        return "copy_loss", *copy_batch(rng, len(tokenizer), tokenizer.bos_token_id)
    batch, weights = stage0_batch(
        tokenizer, data, rng, config.tokens0, config.lm_share, phase.max_docs, phase.answer_weight
    )
    return "loss", batch, weights


def _optimizer(lm, phase: Phase) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """A fresh AdamW and its schedule: linear warm-up over 1/30 of the steps, then cosine decay (or constant)."""
    opt = torch.optim.AdamW(lm.parameters(), lr=phase.lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, phase.steps // 30)
    if phase.constant_lr:
        return opt, get_constant_schedule_with_warmup(opt, warmup)
    return opt, get_cosine_schedule_with_warmup(opt, warmup, phase.steps)


class _MetricsLog:
    """Running mean losses of a phase, written to ``stage{name}_metrics.jsonl`` and logged every ``LOG_EVERY``
    steps, with the throughput since the phase started."""

    def __init__(self, path: Path, phase: str) -> None:
        self.file, self.phase = path.open("w"), phase
        self.running: dict[str, list[float]] = defaultdict(list)
        self.seen, self.started = 0, time.perf_counter()

    def add(self, kind: str, loss: float, tokens: int) -> None:
        self.running[kind].append(loss)
        self.seen += tokens

    def flush(self, step: int) -> None:
        record = {"step": step, **{k: round(sum(v) / len(v), 4) for k, v in self.running.items()}}
        record["tokens_per_s"] = round(self.seen / (time.perf_counter() - self.started), 1)
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        logger.info("stage %s %s", self.phase, record)
        self.running = defaultdict(list)


def run_stage0(lm, tokenizer, data: TrainData, phase: Phase, config: BuildConfig, out: Path) -> None:
    """Full-parameter training of the base LM for one phase (fresh AdamW, cosine schedule with warm-up), on the
    LM's device; metrics go to ``out/stage{phase}_metrics.jsonl``."""
    rng = random.Random(phase.seed)
    lm.train()
    opt, sched = _optimizer(lm, phase)
    out.mkdir(parents=True, exist_ok=True)
    metrics = _MetricsLog(out / f"stage{phase.name}_metrics.jsonl", phase.name)
    bar = tqdm(range(phase.steps), desc=f"stage {phase.name}", disable=not config.progress)
    device = lm.device
    for step in bar:
        kind, batch, weights = next_batch(rng, tokenizer, data, phase, config)
        loss = weighted_lm_loss(lm, {k: v.to(device) for k, v in batch.items()}, weights.to(device))
        # one optimiser step: backward, clip, step, schedule
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        metrics.add(kind, loss.item(), int(batch["attention_mask"].sum()))
        bar.set_postfix({kind: f"{loss.item():.3f}"})
        if (step + 1) % LOG_EVERY == 0 or step + 1 == phase.steps:
            metrics.flush(step + 1)
    metrics.file.close()
    lm.eval()


def run_stage0_phases(lm, tokenizer, data: TrainData, phases: list[Phase], config: BuildConfig) -> None:
    """Every phase with steps, in order, on ``config.device``; each leaves its base and tokenizer in
    ``work_dir/stage{name}`` (what ``base_from`` resumes from)."""
    lm.to(config.device)
    for phase in (p for p in phases if p.steps > 0):
        run_stage0(lm, tokenizer, data, phase, config, config.work_dir)
        lm.save_pretrained(config.work_dir / f"stage{phase.name}")
        tokenizer.save_pretrained(config.work_dir / f"stage{phase.name}")


def load_stage0(folder: Path):
    """A saved stage-0 base and its tokenizer (read from ``folder``, or from its parent for ``assets/tiny/base``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok_dir = folder if (folder / "tokenizer.json").is_file() else folder.parent
    logger.info("stage 0a skipped: base from %s, tokenizer from %s", folder, tok_dir)
    return lm, AutoTokenizer.from_pretrained(tok_dir)
