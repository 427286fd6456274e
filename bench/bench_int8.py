"""What int8 memories (per-vector scales, clara_plugins.quantize) change against the fp16 memories the store keeps.

Two models: the bundled tiny model on the bundled demo corpus with its held-out questions, and a Mistral-shaped
random model of about 100M parameters (hidden 768, 16 memory vectors per chunk) on NQ passages with their
questions. For each, in one run:

- ranking (exact cosine over every chunk): top-10 overlap with the fp16 ranking, top-1 agreement, and Recall@10 of
  the gold passage with fp16 vs int8 memories;
- generation from the top-5 chunks: KL(fp16 || int8) of the first answer token's distribution, and how many
  greedy answers (16 tokens) are identical;
- bytes per chunk, fp16 vs int8.

    python bench/bench_int8.py                      # both models (a few minutes on 2 CPU cores)
    python bench/bench_int8.py --models tiny --n 50
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from clara_plugins.model import ClaraModel
from clara_plugins.quantize import bytes_per_row, dequantize_rows, quantize_rows

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def tiny_setup(n: int) -> tuple[ClaraModel, list[str], list[str], list[str], list[str]]:
    """The bundled model, the demo corpus chunked, held-out questions and their gold passages."""
    assets = importlib.resources.files("clara_plugins.assets")
    read = lambda name: [json.loads(x) for x in (assets / name).read_text().splitlines() if x.strip()]  # noqa: E731
    model = ClaraModel.from_pretrained("tiny", device="cpu")
    texts, owners = [], []
    for p in read("demo_corpus.jsonl"):
        for c in model.chunk(p["text"]):
            texts.append(c.text)
            owners.append(p["id"])
    qs = [q for q in read("demo_questions.jsonl") if q["split"] == "heldout_question"][:n]
    return model, texts, owners, [q["question"] for q in qs], [q["doc_id"] for q in qs]


def random_100m_setup(n_docs: int, n: int) -> tuple[ClaraModel, list[str], list[str], list[str], list[str]]:
    """A ~100M random Mistral-shaped CLaRa model (as bench_model.py builds it) on NQ oracle passages."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_model import SHAPES, build

    rows = [json.loads(x) for x in (DATA / "nq_open_oracle" / "nq-open-oracle.jsonl").read_text().splitlines()[:n_docs]]
    texts = [r["ctxs"][0]["text"] for r in rows]
    model = build(SHAPES["100M"], texts)
    keep = [i for i, t in enumerate(texts) if model.count_document_tokens(t) <= model.config.doc_max_length]
    texts = [texts[i] for i in keep]
    owners = [str(i) for i in keep]
    return model, texts, owners, [rows[i]["question"] for i in keep[:n]], owners[:n]


def int8_copy(memories: torch.Tensor) -> torch.Tensor:
    """fp16 memories (as stored) -> int8 with one scale per memory vector -> back to float32."""
    n, n_mem, hidden = memories.shape
    codes, scales = quantize_rows(memories.reshape(n, -1).numpy(), group=hidden)
    return torch.from_numpy(dequantize_rows(codes, scales)).reshape(n, n_mem, hidden)


def ranking(model: ClaraModel, queries: torch.Tensor, fp16: torch.Tensor, int8: torch.Tensor, owners, gold) -> dict:
    _, a = model.rank(queries, fp16, 10)
    _, b = model.rank(queries, int8, 10)
    overlap = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a.tolist(), b.tolist())])
    top1 = np.mean([x[0] == y[0] for x, y in zip(a.tolist(), b.tolist())])
    recall = lambda top: np.mean([g in {owners[i] for i in t} for t, g in zip(top.tolist(), gold)])  # noqa: E731
    return {"overlap@10": overlap, "top1_agree": top1, "recall@10_fp16": recall(a), "recall@10_int8": recall(b)}


def first_token_logprobs(model: ClaraModel, questions: list[str], memories: list[torch.Tensor]) -> torch.Tensor:
    inputs = model._generation_inputs(questions, memories, "answer")
    with torch.inference_mode(), model.use_role("generator"):
        return model.base_lm(**inputs).logits[:, -1].float().log_softmax(-1)


def generation(model: ClaraModel, questions: list[str], queries, fp16, int8, n_gen: int) -> dict:
    _, top = model.rank(queries[:n_gen], fp16, 5)
    questions = questions[:n_gen]
    mem_a = [fp16[t] for t in top]
    mem_b = [int8[t] for t in top]
    kl = []
    for start in range(0, len(questions), 8):
        sl = slice(start, start + 8)
        p = first_token_logprobs(model, questions[sl], mem_a[sl])
        q = first_token_logprobs(model, questions[sl], mem_b[sl])
        kl += (p.exp() * (p - q)).sum(-1).tolist()
    ans_a = model.generate(questions, mem_a, max_new_tokens=16)
    ans_b = model.generate(questions, mem_b, max_new_tokens=16)
    same = sum(x == y for x, y in zip(ans_a, ans_b))
    identical = f"{same}/{len(ans_a)}"
    return {"kl_first_token": float(np.mean(kl)), "kl_max": float(np.max(kl)), "greedy_identical": identical}


def run(name: str, setup, n_gen: int) -> dict:
    start = time.perf_counter()
    model, texts, owners, questions, gold = setup
    torch.manual_seed(0)
    fp16 = model.compress(texts, batch_size=16).half().float()  # what the store keeps
    int8 = int8_copy(fp16)
    queries = model.encode_query(questions)
    out = {"model": name, "chunks": len(texts), "questions": len(questions)}
    out |= ranking(model, queries, fp16, int8, owners, gold)
    out |= generation(model, questions, queries, fp16, int8, n_gen)
    dim, hidden = model.memory_dim, model.hidden_size
    out |= {"bytes_fp16": 2 * dim, "bytes_int8": bytes_per_row(dim, hidden), "seconds": time.perf_counter() - start}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "100M"], choices=["tiny", "100M"])
    parser.add_argument("--n", type=int, default=100, help="questions per model for ranking")
    parser.add_argument("--n-gen", type=int, default=32, help="questions per model for generation")
    parser.add_argument("--docs-100m", type=int, default=300, help="NQ passages indexed for the 100M model")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        setup = tiny_setup(args.n) if name == "tiny" else random_100m_setup(args.docs_100m, args.n)
        rows.append(run(name, setup, args.n_gen))
        print(json.dumps(rows[-1]), flush=True)
    print(
        "\n| model | chunks | top-10 overlap | top-1 agree | Recall@10 fp16 / int8 | first-token KL mean / max "
        "| greedy 16-token answers identical | bytes per chunk fp16 / int8 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['chunks']} | {r['overlap@10']:.4f} | {r['top1_agree']:.3f} | "
            f"{100 * r['recall@10_fp16']:.1f} / {100 * r['recall@10_int8']:.1f} | "
            f"{r['kl_first_token']:.2e} / {r['kl_max']:.2e} | {r['greedy_identical']} | "
            f"{r['bytes_fp16']} / {r['bytes_int8']} ({r['bytes_int8'] / r['bytes_fp16']:.1%}) |"
        )


if __name__ == "__main__":
    main()
