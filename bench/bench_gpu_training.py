"""Stage-3 training throughput (tokens/s, model FLOPs utilisation) in bf16, and CPU vs accelerator loss agreement.

For issue #5's GPU item: a Mistral-shaped model of about 1B parameters (default shape: hidden 2048, 20 layers,
16 heads / 8 KV heads, MLP 5632, vocabulary 8,000: 0.98B parameters), random weights (speed does not depend on
them), LoRA adapters as CLaRa trains them, stage 3's loss (query reasoner + generator through the
straight-through top-k; documents compressed under no_grad, as the trainer does, and counted every step).

MFU counts the matrix FLOPs of a frozen-base LoRA step: 2N per token forward and 2N backward (gradients with respect
to activations; the frozen weights get none), so 4N per trained token, plus 2N per compressed document token, over
the device's dense bf16 peak (``--peak-tflops``, default 989 for an H100/H200 SXM); N is the base's parameter
count less the input embedding. Attention's own FLOPs are left
out, which understates MFU a little at these lengths.

The agreement check computes the loss of the same batch in fp32 on the CPU and in bf16 (autocast) on ``--device``.

    python bench/bench_gpu_training.py --device cuda                       # the ~1B run (GPU)
    python bench/bench_gpu_training.py --device cpu --hidden 64 --layers 2 --intermediate 192 --steps 2   # smoke
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

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "clara_example" / "pretrain_data.jsonl"


def make_rows(n_rows: int, n_cands: int) -> list[QARow]:
    items = [json.loads(x) for x in DATA.read_text(encoding="utf-8").splitlines()[: n_rows + n_cands]]
    docs = [it["docs"][0] for it in items]
    return [
        QARow(it["question"][0], [docs[(i + j) % len(docs)] for j in range(n_cands)], [it["answers"][0]], [0])
        for i, it in enumerate(items[:n_rows])
    ]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def batch_tokens(model, rows: list[QARow], top_k: int = 5) -> tuple[int, int]:
    """(trained tokens: the questions the query reasoner reads + the generator's prompts with answers and their
    ``top_k`` memory slots, compressed document tokens) of one batch, counted from the real token batches."""
    questions = [r.question for r in rows]
    query = model.tokenize_documents(questions, truncate=True)["attention_mask"].sum()
    prompts = model.build_prompts(questions, [top_k] * len(rows), [r.answers[0] for r in rows])
    docs = model.tokenize_documents([d for r in rows for d in r.docs], truncate=True)["attention_mask"].sum()
    return int(query + prompts["attention_mask"].sum()), int(docs)


def stage3_loss(model, stage, rows: list[QARow], device: torch.device, bf16: bool) -> torch.Tensor:
    with autocast(device, bf16):
        loss, _ = stage.loss(model, rows)
    return loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=20)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--intermediate", type=int, default=5632)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--doc-max-length", type=int, default=256)
    p.add_argument("--batch", type=int, default=8, help="questions per step")
    p.add_argument("--candidates", type=int, default=20, help="documents per question (top 5 are read)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--no-bf16", action="store_true", help="time in fp32 instead of bf16 autocast")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the device")
    p.add_argument("--check-rows", type=int, default=2, help="questions in the CPU-vs-device loss check (0: skip)")
    args = p.parse_args()
    device, bf16 = torch.device(args.device), not args.no_bf16
    texts = [json.loads(x)["docs"][0] for x in DATA.read_text(encoding="utf-8").splitlines()[:1000]]
    model = build_tiny_clara(
        texts=texts,
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=args.heads,
        num_kv_heads=args.kv_heads,
        intermediate_size=args.intermediate,
        doc_max_length=args.doc_max_length,
        compr_rate=16,
        lora_r=16,
        initializer_range=0.02,
    )
    # N: the base's matrix parameters (the input embedding is a lookup, not a matmul)
    n_params = sum(
        p.numel() for n, p in model.peft_model.named_parameters() if "lora_" not in n and "embed_tokens" not in n
    )
    rows = make_rows(max(args.batch * 4, args.check_rows), args.candidates)
    stage = make_stage(TrainConfig(stage="3", train_file="-", top_k=5, max_docs=5))
    stage.prepare(model)

    check = None
    if args.check_rows:  # same weights, same batch: fp32 on the CPU, then bf16 (or fp32) on the device
        with torch.no_grad():
            cpu_loss = stage3_loss(model, stage, rows[: args.check_rows], torch.device("cpu"), False).item()
            stage._doc_cache.clear()
            model.to(device)
            dev_loss = stage3_loss(model, stage, rows[: args.check_rows], device, bf16).item()
            stage._doc_cache.clear()
        check = (cpu_loss, dev_loss)
    model.to(device)
    if args.gradient_checkpointing:
        model.base_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.peft_model.train()
    trained = [p for p in model.peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=1e-5)
    tokens = docs = 0
    for step in range(args.steps + 2):
        if step == 2:
            sync(device)
            started = time.perf_counter()
            tokens = docs = 0
        chunk = [rows[(step * args.batch + i) % len(rows)] for i in range(args.batch)]
        stage._doc_cache.clear()  # documents differ per step in real training: count their compression each step
        loss = stage3_loss(model, stage, chunk, device, bf16)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t, d = batch_tokens(model, chunk)
        tokens, docs = tokens + t, docs + d
    sync(device)
    seconds = time.perf_counter() - started
    flops = (4 * tokens + 2 * docs) * n_params
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    precision = "bf16 autocast" if bf16 else "fp32"
    print(f"{name}; base {n_params / 1e6:,.0f}M matrix parameters; {precision}; batch {args.batch}")
    print("| steps | s/step | trained tokens/s | + compressed tokens/s | model TFLOP/s | MFU |")
    print("|---:|---:|---:|---:|---:|---:|")
    tflops = flops / seconds / 1e12
    print(
        f"| {args.steps} | {seconds / args.steps:.3f} | {tokens / seconds:,.0f} | {docs / seconds:,.0f} "
        f"| {tflops:.3g} | {100 * tflops / args.peak_tflops:.1f} % |"
    )
    if check:
        cpu_loss, dev_loss = check
        rel = abs(cpu_loss - dev_loss) / abs(cpu_loss)
        print(f"loss of the same batch: CPU fp32 {cpu_loss:.5f}, {device} {'bf16' if bf16 else 'fp32'} {dev_loss:.5f}")
        print(f"relative difference {rel:.2e} ({'within' if rel < 2e-2 else 'OUTSIDE'} the bf16 tolerance of 2e-2)")


if __name__ == "__main__":
    main()
