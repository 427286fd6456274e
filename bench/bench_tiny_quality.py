"""What the bundled tiny model does on questions it was never trained on: retrieval and answers, against baselines.

The corpus is the bundled demo corpus (1,000 Wikipedia passages, chunked to <= 256 tokens, all indexed). Questions
come from ``demo_questions.jsonl``: ``heldout_question`` (questions kept out of training, about passages whose
other questions were trained on) and ``heldout_passage`` (passages kept out of all training, text included);
``train`` questions can be added to see the gap to what was trained on.

Rows, per split, in one table:

- retrieval: Recall@5 (the gold passage among the passages of the top-5 chunks) of CLaRa's query reasoner vs BM25
  (rank-bm25) over the same chunks;
- answers: F1 / EM of CLaRa reading the top-5 chunks compressed vs the same base decoder (adapters off) reading the
  raw text of the same top-5 chunks, for both retrievers;
- a reference bar: the question itself given as the answer (no retrieval, no model). This data's answers restate
  their question, so a reader that merely copies words from its prompt reaches this F1.

    python bench/bench_tiny_quality.py                 # 200 questions per held-out split
    python bench/bench_tiny_quality.py --n 50 --splits heldout_question train
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import random
import statistics
import time
from pathlib import Path

import torch

from clara_plugins.baselines import TextRAG
from clara_plugins.model import ClaraModel
from clara_plugins.training.bm25 import BM25Retriever
from clara_plugins.training.metrics import qa_metrics


def read_jsonl(folder: Path | None, name: str) -> list[dict]:
    base = folder if folder is not None else importlib.resources.files("clara_plugins.assets")
    return [json.loads(line) for line in (base / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def chunk_corpus(model: ClaraModel, passages: list[dict]) -> tuple[list[str], list[str]]:
    """Chunk texts and, per chunk, the id of its passage."""
    texts, owners = [], []
    for p in passages:
        for c in model.chunk(p["text"]):
            texts.append(c.text)
            owners.append(p["id"])
    return texts, owners


def retrieve(model: ClaraModel, memories: torch.Tensor, bm25: BM25Retriever, questions: list[str], k: int) -> dict:
    """Top-k chunk positions per question: CLaRa's query reasoner (cosine over memories) and BM25."""
    _, clara_top = model.rank(model.encode_query(questions, batch_size=32), memories, k)
    return {"clara": clara_top.tolist(), "bm25": [bm25.search(q, k) for q in questions]}


def recall(top: list[list[int]], owners: list[str], gold: list[str]) -> float:
    return 100 * statistics.mean(float(g in {owners[i] for i in t}) for t, g in zip(top, gold, strict=True))


def answer_both(
    model: ClaraModel, text: TextRAG, questions: list[str], top: list[list[int]], chunks: list[str], memories, args
) -> dict[str, list[str]]:
    """Answers of CLaRa (compressed chunks) and of the base decoder (raw text of the same chunks)."""
    mems = [memories[t] for t in top]
    docs = [[chunks[i] for i in t] for t in top]
    return {
        "clara": model.generate(questions, mems, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size),
        "text": text.generate(questions, docs, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size),
    }


def evaluate_split(name: str, rows: list[dict], model: ClaraModel, text: TextRAG, index: dict, args) -> list[dict]:
    questions = [r["question"] for r in rows]
    golds = [r["answers"] for r in rows]
    tops = retrieve(model, index["memories"], index["bm25"], questions, args.k)
    out, examples = [], []
    for retriever, top in tops.items():
        r_at_k = recall(top, index["owners"], [r["doc_id"] for r in rows])
        answers = answer_both(model, text, questions, top, index["chunks"], index["memories"], args)
        for reader, preds in answers.items():
            m = qa_metrics(preds, golds)
            out.append({"split": name, "n": len(rows), "retriever": retriever, "reader": reader,
                        f"recall@{args.k}": r_at_k, "f1": m["f1"], "em": m["em"]})  # fmt: skip
        if retriever == "clara":
            examples = list(zip(questions, golds, answers["clara"], answers["text"], strict=True))[:3]
    echo = qa_metrics(questions, golds)
    out.append({"split": name, "n": len(rows), "retriever": "-", "reader": "echo",
                f"recall@{args.k}": None, "f1": echo["f1"], "em": echo["em"]})  # fmt: skip
    for q, g, c, t in examples:
        print(f"  [{name}] Q: {q}\n      gold: {g[0]}\n      clara: {c!r}\n      text:  {t!r}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="the model (default: the bundled tiny model)")
    parser.add_argument("--assets-dir", type=Path, default=None, help="folder with demo_corpus/questions.jsonl")
    parser.add_argument("--splits", nargs="+", default=["heldout_question", "heldout_passage"])
    parser.add_argument("--n", type=int, default=200, help="questions per split (seeded sample)")
    parser.add_argument("--k", type=int, default=5, help="chunks retrieved and read per question")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = ClaraModel.from_pretrained(args.model, device="cpu", dtype="fp32")
    passages = read_jsonl(args.assets_dir, "demo_corpus.jsonl")
    questions = read_jsonl(args.assets_dir, "demo_questions.jsonl")
    chunks, owners = chunk_corpus(model, passages)
    index = {"chunks": chunks, "owners": owners, "bm25": BM25Retriever(chunks)}
    index["memories"] = model.compress(chunks, batch_size=32, show_progress=True)
    text = TextRAG.from_clara(model)
    rng = random.Random(args.seed)
    results = []
    for split in args.splits:
        rows = [q for q in questions if q["split"] == split]
        rows = rng.sample(rows, min(args.n, len(rows)))
        results += evaluate_split(split, rows, model, text, index, args)
    seconds = time.perf_counter() - started
    print(f"\ncorpus: {len(passages)} passages, {len(chunks)} chunks; model {args.model}; {seconds:.0f} s")
    print(f"{'split':17} {'n':>4} {'retriever':10} {f'Recall@{args.k}':>9} {'reader':24} {'F1':>6} {'EM':>6}")
    reader_names = {
        "clara": f"CLaRa ({model.n_mem} vec/chunk)",
        "text": "base LM on raw text",
        "echo": "the question, as answer",
    }
    for r in results:
        r_at_k = r[f"recall@{args.k}"]
        print(
            f"{r['split']:17} {r['n']:>4} {r['retriever']:10} {'-' if r_at_k is None else f'{r_at_k:.1f}':>9} "
            f"{reader_names[r['reader']]:24} {r['f1']:>6.1f} {r['em']:>6.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
