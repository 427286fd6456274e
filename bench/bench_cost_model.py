"""A cost model for a shared store of 10M chunks at the official 7B width (16 x 4,096 numbers per chunk), from what
can be counted or measured on this machine, with every assumption printed next to the number it feeds.

Counted here (no GPU, no weights):
- FLOPs of one compression (259 document tokens + 16 memory tokens through Mistral-7B), of one query encoding and
  of one answer (prefill of 5 x 16 memory vectors + the prompt, then decoding), by ``torch.utils.flop_counter`` on a
  Mistral-7B built on the meta device (exact matmul/attention FLOPs, not timings).
- Bytes per chunk: memory rows in the shard (fp16 / int8) + its CRC + the scan row (ids, row, fp16 projection);
  Chroma's bytes per chunk is an input (``--chroma-bytes``; ``bench/bench_shared_store.py`` measures it).
- The exact scan's time per query on this CPU at ``--scan-rows`` rows, scaled linearly to 10M.

Assumed (flags): GPU peak and model-FLOPs utilisation for ingest, object-store latency for the re-rank reads.

    python bench/bench_cost_model.py
    python bench/bench_cost_model.py --chunks 10000000 --gpus 1 8 64 --mfu 0.35 --chroma-bytes 6200
"""

from __future__ import annotations

import argparse
import time

import torch

HIDDEN, N_MEM, DOC_TOKENS = 4096, 16, 259  # official compression-16: doc_max_length 256 + 3, 16 memory tokens
ANN_DIM = 256
GPU_PEAK = {"H100/H200 bf16 dense": 989e12, "A100 bf16 dense": 312e12, "L4 bf16 dense": 121e12}


def mistral_7b() -> torch.nn.Module:
    """Mistral-7B-Instruct-v0.2's shape on the meta device (no memory, no weights), with the 20 CLaRa tokens."""
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(
        vocab_size=32000 + 20,
        hidden_size=HIDDEN,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=32768,
    )
    with torch.device("meta"):
        return MistralForCausalLM(cfg)


def flops(model: torch.nn.Module, tokens: int, batch: int = 1, lm_head: bool = False) -> float:
    """FLOPs of one forward over ``tokens`` positions (per sequence)."""
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.zeros(batch, tokens, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter:
        (model if lm_head else model.model)(input_ids=ids)
    return counter.get_total_flops() / batch


def scan_ms(rows: int, repeat: int = 5) -> float:
    """Median ms of one exact scan (a question against ``rows`` fp16 projections) on this CPU."""
    vectors = torch.randn(rows, ANN_DIM).half()
    q = torch.randn(1, ANN_DIM).half()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        (q @ vectors.T).topk(64)
        times.append((time.perf_counter() - t0) * 1000)
    return sorted(times)[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", type=int, default=10_000_000)
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--mfu", type=float, default=0.35, help="assumed model-FLOPs utilisation of batched compression")
    p.add_argument("--chroma-bytes", type=float, default=4700, help="Chroma bytes per chunk (measured by the bench)")
    p.add_argument("--scan-rows", type=int, default=1_000_000, help="rows of the scan timed here")
    p.add_argument("--candidates", type=int, default=64, help="memories read per question for the re-rank")
    p.add_argument("--s3-ms", type=float, default=30.0, help="assumed first-byte latency of a ranged object read")
    p.add_argument("--s3-gbps", type=float, default=1.0, help="assumed object-store bandwidth per client (GB/s)")
    args = p.parse_args()

    model = mistral_7b()
    params = sum(t.numel() for t in model.parameters())
    f_chunk = flops(model, DOC_TOKENS + N_MEM)
    f_query = flops(model, 40 + 3 + N_MEM)  # a 40-token question
    f_prefill = flops(model, 5 * N_MEM + 80, lm_head=True)  # 5 documents' memories + prompt and question
    f_token = 2 * params  # one decoded token, KV cache held

    n = args.chunks
    print(f"# Cost model: {n:,} chunks at 7B width ({N_MEM} x {HIDDEN} = {N_MEM * HIDDEN:,} numbers per chunk)\n")
    print(f"Mistral-7B-shaped model, {params / 1e9:.2f}B parameters (meta device, flop_counter):\n")
    print("| work | tokens | GFLOP |")
    print("|---|---:|---:|")
    print(f"| compress one chunk | {DOC_TOKENS + N_MEM} | {f_chunk / 1e9:,.0f} |")
    print(f"| encode one question | {40 + 3 + N_MEM} | {f_query / 1e9:,.0f} |")
    print(f"| answer: prefill 5 x 16 memories + 80 prompt tokens | {5 * N_MEM + 80} | {f_prefill / 1e9:,.0f} |")
    print(f"| answer: each decoded token | 1 | {f_token / 1e9:,.1f} |")

    total = n * f_chunk
    print(f"\nIngest: {total / 1e18:,.1f} EFLOP for {n:,} chunks; hours at MFU {args.mfu} (assumed):\n")
    print("| GPU (peak, assumed) | " + " | ".join(f"{g} GPU{'s' if g > 1 else ''}" for g in args.gpus) + " |")
    print("|---|" + "---:|" * len(args.gpus))
    for name, peak in GPU_PEAK.items():
        hours = [total / (peak * args.mfu * g) / 3600 for g in args.gpus]
        print(f"| {name} ({peak / 1e12:,.0f} TFLOP/s) | " + " | ".join(f"{h:,.1f} h" for h in hours) + " |")

    mem16, mem8 = 2 * N_MEM * HIDDEN + 4, N_MEM * HIDDEN + 4 * N_MEM + 4  # row + its CRC in the shard
    scan_row = 2 * ANN_DIM + 8 + 24  # fp16 projection, row number, id (~24 bytes of JSON)
    print("\nBytes (per chunk, then for all chunks):\n")
    print("| where | per chunk fp16 / int8 | total fp16 / int8 |")
    print("|---|---:|---:|")
    for label, a, b in (
        ("object store: shard rows + CRC", mem16, mem8),
        ("object store: scan files", scan_row, scan_row),
        (f"Chroma: records, 257-d vector, HNSW, text (--chroma-bytes {args.chroma_bytes:,.0f}, measured)",
         args.chroma_bytes, args.chroma_bytes),
        ("each query client's RAM: the scan", scan_row, scan_row),
    ):  # fmt: skip
        print(f"| {label} | {a:,.0f} / {b:,.0f} B | {n * a / 1e9:,.1f} / {n * b / 1e9:,.1f} GB |")

    ms = scan_ms(args.scan_rows)
    scan_10m = ms * n / args.scan_rows
    read_mb = args.candidates * mem16 / 1e6
    read_ms = args.s3_ms + read_mb / (args.s3_gbps * 1e3) * 1e3
    print(f"\nQuery latency parts (one question, {args.candidates} candidates re-ranked):\n")
    print("| part | time | how |")
    print("|---|---:|---|")
    print(f"| exact scan of {args.scan_rows:,} fp16 projections | {ms:,.1f} ms | measured on this CPU |")
    print(f"| exact scan of {n:,} | {scan_10m:,.0f} ms | linear scaling of the line above |")
    print(f"| read {args.candidates} fp16 memories ({read_mb:.1f} MB, one ranged GET per shard, concurrent) | "
          f"{read_ms:,.0f} ms | assumed {args.s3_ms:.0f} ms first byte, {args.s3_gbps} GB/s |")  # fmt: skip
    print(f"| encode the question on a GPU | {f_query / (GPU_PEAK['H100/H200 bf16 dense'] * 0.2) * 1e3:,.1f} ms | "
          "FLOPs above at 20 % of an H100 (assumed) |")  # fmt: skip


if __name__ == "__main__":
    main()
