"""Throughput of compress, encode_query and generate for batch sizes 1 to 32.

Runs on the tiny model and on a Mistral-shaped random model of about 100M parameters (doc_max_length 256,
compression 16: 16 memory vectors per document, as the official compression-16 checkpoints). In the same run it
compares query encoding padded to the longest question (ours) with padding to doc_max_length + 3 = 259 tokens
(the official code), the speed-up the reference (section 2) says is free.

    python bench/bench_model.py                 # both models
    python bench/bench_model.py --models tiny   # quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from clara_plugins.model import ClaraModel
from clara_plugins.tiny import build_tiny_base, build_tiny_tokenizer, randomize_adapters

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHAPES = {  # name -> base model shape
    "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "vocab": 2000},
    "100M": {"hidden_size": 768, "num_layers": 14, "num_heads": 12, "num_kv_heads": 4, "vocab": 8000},
}


def load_texts(n: int) -> tuple[list[str], list[str]]:
    path = DATA / "nq_open_oracle" / "nq-open-oracle.jsonl"
    docs, questions = [], []
    with path.open() as f:
        for line in f:
            row = json.loads(line)
            questions.append(row["question"])
            docs.append(row["ctxs"][0]["text"])
            if len(docs) >= n:
                break
    return docs, questions


def build(shape: dict, texts: list[str]) -> ClaraModel:
    from clara_plugins.config import ClaraConfig

    tok = build_tiny_tokenizer(texts, shape["vocab"])
    base = build_tiny_base(
        len(tok),
        shape["hidden_size"],
        shape["num_layers"],
        shape["num_heads"],
        shape["num_kv_heads"],
        initializer_range=0.02,
    )
    config = ClaraConfig(base_model="bench-random", doc_max_length=256, compr_rate=16, lora_r=16)
    model = ClaraModel.from_base(base, tok, config)
    randomize_adapters(model)
    return model


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def padded_to_259(model: ClaraModel, questions: list[str]) -> None:
    """The official way: every query padded to doc_max_length + 3 tokens."""
    batch = model.tokenize_documents(questions, truncate=True)
    width = model.config.doc_max_length + 3 + model.n_mem
    pad = width - batch["input_ids"].shape[1]
    batch = {
        k: torch.nn.functional.pad(v, (pad, 0), value=model.special_token_ids.pad if k == "input_ids" else 0)
        for k, v in batch.items()
    }
    with torch.inference_mode():
        model.memories_from_batch(batch, "query_reasoner")


def bench_model(
    name: str, model: ClaraModel, docs: list[str], questions: list[str], sizes: list[int], repeats: int, new_tokens: int
) -> list[dict]:
    params = sum(p.numel() for p in model.base_lm.parameters()) / 1e6
    docs = [c.text for d in docs for c in model.chunk(d)]
    rows = []
    for bs in sizes:
        d, q = docs[:bs], questions[:bs]
        t_comp = timed(lambda d=d, bs=bs: model.compress(d, batch_size=bs), repeats)
        t_query = timed(lambda q=q, bs=bs: model.encode_query(q, batch_size=bs), repeats)
        t_259 = timed(lambda q=q: padded_to_259(model, q), repeats)
        mem = model.compress(docs[: 5 * bs]).reshape(bs, 5, model.n_mem, model.hidden_size)
        t_gen = timed(lambda q=q, m=mem, bs=bs: model.generate(q, list(m), max_new_tokens=new_tokens, batch_size=bs), 1)
        rows.append(
            {
                "model": name,
                "params_M": round(params, 1),
                "batch": bs,
                "compress_docs_s": bs / t_comp,
                "query_q_s": bs / t_query,
                "query_speedup_vs_259": t_259 / t_query,
                "generate_tok_s": bs * new_tokens / t_gen,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 16, 32])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    docs, questions = load_texts(max(args.batch_sizes) * 6)
    rows = []
    for name in args.models:
        model = build(SHAPES[name], docs)
        rows += bench_model(name, model, docs, questions, args.batch_sizes, args.repeats, args.new_tokens)
    print(f"device: cpu, {torch.get_num_threads()} threads, torch {torch.__version__}")
    header = (
        f"{'model':6} {'params':>7} {'batch':>5} {'compress doc/s':>14} {'query q/s':>10} "
        f"{'query vs pad-259':>16} {'generate tok/s':>14}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['model']:6} {r['params_M']:>6}M {r['batch']:>5} {r['compress_docs_s']:>14.1f} "
            f"{r['query_q_s']:>10.1f} {r['query_speedup_vs_259']:>15.2f}x {r['generate_tok_s']:>14.1f}"
        )


if __name__ == "__main__":
    main()
