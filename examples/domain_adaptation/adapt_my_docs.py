"""Adapt a CLaRa model to a folder of your own documents, then index them with the adapted model.

  1. chunk every ``*.txt`` / ``*.md`` file of ``--docs`` with the model's tokenizer;
  2. an LLM writes stage-1 rows (QA pairs and a paraphrase per chunk); pass any LangChain or LlamaIndex LLM to
     :func:`adapt` from Python, or ``--llm module:factory`` here (e.g. ``langchain_openai:ChatOpenAI``); the default
     ``extractive`` LLM is an offline rule-based stand-in (cloze questions) so the whole pipeline runs anywhere;
  3. stage 1, stage 2 (answer from the chunk plus BM25 distractors) and stage 3 (candidates mined with BM25; no labels);
  4. the adapted model is saved and the chunks are indexed into a Chroma store built with it.

Run: ``python examples/domain_adaptation/adapt_my_docs.py --docs my_docs/ --out runs/adapted`` (``--help`` for more).
Afterwards: ``ClaraRAG.from_pretrained("runs/adapted/model", store="runs/adapted/index").ask("...")``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import random
import re
from pathlib import Path
from typing import Any

from clara_plugins.model import ClaraModel
from clara_plugins.rag import ClaraRAG
from clara_plugins.store import ClaraStore
from clara_plugins.training import TrainConfig, train
from clara_plugins.training.bm25 import BM25Retriever
from clara_plugins.training.data import QARow, Stage1Row, write_jsonl
from clara_plugins.training.synthesis import stage3_rows, synthesize_stage1

log = logging.getLogger("adapt_my_docs")


def extractive_llm(prompt: str) -> str:
    """Offline stand-in for an LLM: cloze questions from the document's sentences, or the document as paraphrase."""
    doc = prompt.split("Document:\n", 1)[-1] if "Document:\n" in prompt else prompt.split("\n\n", 1)[-1]
    if not prompt.startswith("Read the document"):
        return doc.strip()
    pairs = []
    for sentence in re.split(r"(?<=[.!?])\s+", doc.strip()):
        words = sentence.split()
        if len(words) >= 6:
            answer = max(words[1:], key=len).strip(".,;:!?\"'()")
            pairs.append(f"Question: {sentence.replace(answer, '___', 1)} What is ___?\nAnswer: {answer}")
    return "\n".join(pairs[:5])


def load_llm(spec: str) -> Any:
    """``extractive`` or ``package.module:factory`` (called without arguments)."""
    if spec == "extractive":
        return extractive_llm
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)()


def read_chunks(folder: Path, model: ClaraModel) -> list[tuple[str, str]]:
    """``(id, text)`` per chunk of every text file in ``folder``."""
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".txt", ".md") and p.is_file())
    chunks = []
    for path in files:
        for i, chunk in enumerate(model.chunk(path.read_text(encoding="utf-8", errors="replace"))):
            chunks.append((f"{path.relative_to(folder)}#{i}", chunk.text))
    return chunks


def stage2_rows(rows: list[Stage1Row], texts: list[str], k: int, seed: int) -> list[QARow]:
    """Each synthesized question with its chunk and the BM25-closest other chunks (shuffled)."""
    bm25, rng, out = BM25Retriever(texts), random.Random(seed), []
    for r in rows:
        gold = texts.index(r.docs[0])
        for q, a in zip(r.questions, r.answers):
            picks = [gold, *[d for d in bm25.search(q, k + 1) if d != gold][: k - 1]]
            rng.shuffle(picks)
            out.append(QARow(q, [texts[d] for d in picks], [a], [picks.index(gold)]))
    return out


def adapt(
    docs: Path,
    llm: Any,
    out: Path,
    model: str = "tiny",
    steps: tuple[int, int, int] = (200, 200, 100),
    batch_size: int = 8,
    seed: int = 0,
) -> ClaraRAG:
    """Synthesize data, run stages 1-3 on ``docs`` and return a ``ClaraRAG`` whose store was built by the result."""
    clara = ClaraModel.from_pretrained(model)
    chunks = read_chunks(docs, clara)
    texts = [t for _, t in chunks]
    if len(texts) < 2:
        msg = f"--docs {str(docs)!r} must hold at least two chunks of text (*.txt, *.md); found {len(texts)}"
        raise SystemExit(msg)
    rows1 = synthesize_stage1(texts, llm)
    qa = [r for r in rows1 if r.data_type == "qa"]
    rows2 = stage2_rows(qa, texts, min(5, len(texts)), seed)
    gold = [[texts.index(r.docs[0])] for r in qa for _ in r.questions]
    rows3 = stage3_rows(
        [q for r in qa for q in r.questions],
        [[a] for r in qa for a in r.answers],
        texts,
        min(20, len(texts)),
        gold=gold,
        seed=seed,
    )
    for name, rows in (("stage1", rows1), ("stage2", rows2), ("stage3", rows3)):
        write_jsonl(out / "data" / f"{name}.jsonl", rows)  # the official formats, reusable with `clara train`
    common = {"batch_size": batch_size, "seed": seed, "log_every": 10}
    for stage, rows, n in (("1", rows1, steps[0]), ("2", rows2, steps[1]), ("3", rows3, steps[2])):
        cfg = TrainConfig(
            stage=stage,
            output_dir=str(out / f"stage{stage}"),
            max_steps=n,
            **common,
            learning_rate=1e-4 if stage != "3" else 5e-5,
            max_docs=5,
            top_k=min(5, len(texts)),
        )
        clara = train(cfg, clara, rows=rows)
    clara.save_pretrained(out / "model")
    rag = ClaraRAG(clara, ClaraStore(path=out / "index"))
    rag.index([{"id": cid, "text": text} for cid, text in chunks])
    return rag


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--docs", required=True, type=Path, help="folder of .txt / .md files")
    p.add_argument("--out", default=Path("runs/adapted"), type=Path, help="output folder")
    p.add_argument("--model", default="tiny", help="model to adapt: 'tiny', a Hub id or a folder")
    p.add_argument("--llm", default="extractive", help="'extractive' (offline stand-in) or module:factory")
    p.add_argument("--steps", type=int, nargs=3, default=[200, 200, 100], metavar=("S1", "S2", "S3"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    rag = adapt(args.docs, load_llm(args.llm), args.out, args.model, tuple(args.steps), args.batch_size, args.seed)
    print(f"adapted model: {args.out / 'model'}; index: {args.out / 'index'}")
    question = "What is this collection about?"
    print(f"{question} -> {rag.ask(question).text!r}")


if __name__ == "__main__":
    main()
