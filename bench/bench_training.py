"""Training-step throughput on CPU: stage 3 with documents encoded once (ours) vs re-encoded every step (official).

The official code re-compresses every candidate document in every step; ours compresses each distinct document once
per run (the compressor is frozen in stage 3) and reuses the memories. Also: stage 2 with and without gradient
checkpointing. Prints a table with ratios; numbers depend on the machine (run it on an idle one).

    python bench/bench_training.py --steps 10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from clara_plugins.tiny import build_tiny_clara
from clara_plugins.training.config import TrainConfig
from clara_plugins.training.data import QARow
from clara_plugins.training.stages import make_stage
from clara_plugins.training.trainer import adapter_recompute_context

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "clara_example" / "pretrain_data.jsonl"


def rows(n_rows: int, n_cands: int) -> list[QARow]:
    lines = DATA.read_text().splitlines()[: n_rows + n_cands]
    items = [json.loads(x) for x in lines]
    docs = [it["docs"][0][:300] for it in items]
    return [
        QARow(it["question"][0], [docs[(i + j) % len(docs)] for j in range(n_cands)], [it["answers"][0]], [0])
        for i, it in enumerate(items[:n_rows])
    ]


def time_steps(model, stage_name: str, data: list[QARow], steps: int, batch: int, reencode: bool, ckpt: bool) -> float:
    cfg = TrainConfig(stage=stage_name, train_file="-", top_k=5, max_docs=5)
    stage = make_stage(cfg)
    params = stage.prepare(model)
    opt = torch.optim.AdamW([p for _, p in params], lr=1e-4)
    if ckpt:
        kwargs = {"use_reentrant": False, "context_fn": adapter_recompute_context(model)}
        model.base_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.peft_model.train()
    start = None
    for step in range(steps + 1):  # step 0 warms up (and fills the cache)
        if step == 1:
            start = time.perf_counter()
        if reencode:
            stage._doc_cache.clear()
        chunk = [data[(step * batch + i) % len(data)] for i in range(batch)]
        loss, _ = stage.loss(model, chunk)
        loss.backward()
        opt.step()
        opt.zero_grad()
    elapsed = (time.perf_counter() - start) / steps
    stage.finish(model)
    if ckpt:
        model.base_lm.gradient_checkpointing_disable()
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--candidates", type=int, default=20)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    texts = [json.loads(x)["docs"][0] for x in DATA.read_text().splitlines()[:300]]
    model = build_tiny_clara(
        texts=texts, vocab_size=2000, hidden_size=args.hidden, num_layers=4, doc_max_length=128, compr_rate=16
    )
    data = rows(64, args.candidates)
    cases = [
        ("stage 3, documents encoded once (ours)", "3", False, False),
        ("stage 3, re-encoded every step (official)", "3", True, False),
        ("stage 2, no gradient checkpointing", "2", False, False),
        ("stage 2, gradient checkpointing", "2", False, True),
    ]
    results = {name: time_steps(model, st, data, args.steps, args.batch, re, ck) for name, st, re, ck in cases}
    print(f"batch {args.batch}, {args.candidates} candidates, hidden {args.hidden}, {args.steps} timed steps")
    print("| case | s/step | examples/s | ratio |")
    print("|---|---|---|---|")
    base3, base2 = results[cases[0][0]], results[cases[2][0]]
    for name, value in results.items():
        ref = base3 if "stage 3" in name else base2
        print(f"| {name} | {value:.3f} | {args.batch / value:.1f} | {value / ref:.2f}x |")


if __name__ == "__main__":
    main()
