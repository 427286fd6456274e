"""What ``clara demo`` shows, as a library: compress a sample of the bundled corpus once, then for a few held-out
questions the retrieved chunks (gold passage marked), where BM25 ranks the gold passage, the prompt the generator
reads (memory slots against the text tokens of the same chunks) and the measured prefill time of both.

The tiny model's generated text is reported as such, never as an answer: the bundled model ranks but cannot answer.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from clara_plugins.baselines import TextRAG
from clara_plugins.store import Hit
from clara_plugins.training.bm25 import bm25_tokenize

TINY_NOTE = (
    "The bundled tiny model (3M parameters, trained on a CPU) ranks passages but cannot answer questions: "
    "its generated text below is NOT an answer. For real answers load an official checkpoint on a GPU "
    '(ClaraModel.from_pretrained("apple/CLaRa-7B-E2E", subfolder="compression-16"), see the README) '
    "or adapt a real base model to your documents with `clara train` (docs/training.md)."
)


def demo_records() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The bundled demo corpus ``{"id", "text", "title"?}`` and its questions ``{"question", "answer", "doc_id"}``.

    Questions come from ``demo_questions.jsonl`` (held-out questions first) when it is bundled, else from the
    ``question``/``answer`` fields of the corpus rows.
    """
    assets = importlib.resources.files("clara_plugins.assets")
    rows = [json.loads(x) for x in (assets / "demo_corpus.jsonl").read_text(encoding="utf-8").splitlines() if x]
    qfile = assets / "demo_questions.jsonl"
    if not qfile.is_file():
        return rows, [
            {"question": r["question"], "answer": r["answer"], "doc_id": r["id"]} for r in rows if "question" in r
        ]
    qs = [json.loads(line) for line in qfile.read_text(encoding="utf-8").splitlines() if line]
    qs.sort(key=lambda q: q.get("split") != "heldout_question")
    return rows, [{"question": q["question"], "answer": q["answers"][0], "doc_id": q["doc_id"]} for q in qs]


def pick_sample(
    rows: list[dict[str, Any]], questions: list[dict[str, Any]], n_passages: int | None, n_questions: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The first ``n_questions`` questions about distinct passages, and ``n_passages`` passages that hold their gold
    passages (the first passages of the corpus otherwise; all with ``n_passages=None``), in corpus order."""
    asked: list[dict[str, Any]] = []
    for q in questions:
        if len(asked) < n_questions and q["doc_id"] not in {a["doc_id"] for a in asked}:
            asked.append(q)
    gold = {q["doc_id"] for q in asked}
    budget = len(rows) if n_passages is None else max(n_passages, len(gold))
    keep = set(gold)
    for r in rows:
        if len(keep) >= budget:
            break
        keep.add(r["id"])
    return [r for r in rows if r["id"] in keep], asked


class BM25:
    """Okapi BM25 over a fixed list of texts, scoring exactly as ``rank_bm25.BM25Okapi`` on the tokens of
    ``training.bm25`` (the lexical baseline of every retrieval table), so the demo needs no ``rank-bm25``."""

    def __init__(self, texts: Sequence[str], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25) -> None:
        self.docs = [Counter(bm25_tokenize(t) or ["\x00"]) for t in texts]
        self.lengths = [sum(d.values()) for d in self.docs]
        self.avg = sum(self.lengths) / max(len(self.docs), 1)
        n = len(self.docs)
        df = Counter(w for d in self.docs for w in d)
        idf = {w: math.log(n - f + 0.5) - math.log(f + 0.5) for w, f in df.items()}
        floor = epsilon * sum(idf.values()) / max(len(idf), 1)  # rank_bm25's floor for words in most documents
        self.idf = {w: v if v >= 0 else floor for w, v in idf.items()}
        self.k1, self.b = k1, b

    def scores(self, query: str) -> list[float]:
        """BM25 score of every text for ``query``."""
        words = bm25_tokenize(query)
        out = []
        for doc, length in zip(self.docs, self.lengths):
            norm = self.k1 * (1 - self.b + self.b * length / self.avg)
            out.append(sum(self.idf.get(w, 0.0) * doc[w] * (self.k1 + 1) / (doc[w] + norm) for w in words))
        return out


@dataclass
class PromptCost:
    """The generator's prompt for one question: CLaRa's memory slots against the same chunks as text."""

    chunks: int
    slots_per_chunk: int  # n_mem memory vectors + <SEP>
    clara_tokens: int  # whole prompt: template, question and slots
    text_tokens: int  # whole prompt of the same base decoder reading the chunks' text
    clara_prefill_s: float
    text_prefill_s: float


@dataclass
class DemoQuestion:
    """One demo question: the chunks CLaRa retrieved and how the gold passage fared."""

    question: str
    reference_answer: str
    gold_doc_id: str
    hits: list[dict[str, Any]]
    gold_rank_clara: int | None  # rank of the gold passage's best chunk among all stored chunks
    gold_rank_bm25: int | None
    prompt: PromptCost
    generated_text: str
    generated_text_is_answer: bool


@dataclass
class DemoReport:
    """Everything ``clara demo`` prints (``--json`` prints ``asdict`` of it)."""

    model: str
    passages_indexed: int
    passages_total: int
    chunks: int
    chunks_compressed: int  # 0 when every chunk was already in the store
    compress_s: float
    threads: int
    note: str | None
    questions: list[DemoQuestion] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gold_rank(hit_doc_ids: Sequence[str], gold: str) -> int | None:
    """1-based rank of the first entry equal to ``gold`` (None when absent)."""
    return next((i for i, d in enumerate(hit_doc_ids, 1) if d == gold), None)


def bm25_rank(bm25: BM25, doc_ids: Sequence[str], question: str, gold: str) -> int | None:
    """Rank of the gold passage's best chunk when BM25 ranks every stored chunk."""
    scores = bm25.scores(question)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return gold_rank([doc_ids[i] for i in order], gold)


def _best_s(fn: Any, repeats: int) -> float:
    """Fastest of ``repeats`` runs: on a machine shared with other work the minimum is the stable estimate."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def prompt_cost(model: Any, question: str, memories: torch.Tensor, texts: list[str], repeats: int = 3) -> PromptCost:
    """Prompt lengths and best-of-``repeats`` prefill seconds (one forward pass over the prompt) of CLaRa's prompt with
    ``memories`` ``[k, n, H]`` and of the same base decoder reading ``texts`` (adapters off, same template)."""
    text_rag = TextRAG.from_clara(model)
    batch = model.build_prompts([question], [memories.shape[0]])
    embeds = model.embed_with_memories(batch["input_ids"], memories)

    def clara() -> None:
        with torch.inference_mode(), model.use_role("generator"):
            model.base_lm(inputs_embeds=embeds, attention_mask=batch["attention_mask"])
        if embeds.is_cuda:  # GPU kernels run asynchronously: wait for them, as .cpu() does for the text side
            torch.cuda.synchronize(embeds.device)

    def text() -> None:
        text_rag.next_token_logits([question], [texts])

    clara(), text()  # warm-up
    return PromptCost(
        chunks=memories.shape[0],
        slots_per_chunk=model.n_mem + 1,
        clara_tokens=int(batch["attention_mask"].sum()),
        text_tokens=text_rag.prompt_lengths([question], [texts])[0],
        clara_prefill_s=_best_s(clara, repeats),
        text_prefill_s=_best_s(text, repeats),
    )


def ask_one(rag: Any, q: dict[str, Any], bm25: BM25, chunk_doc_ids: list[str], note: str | None) -> DemoQuestion:
    """Retrieve, rank the gold passage both ways, measure the two prompts and generate for one question."""
    ranked = rag.search(q["question"], k=len(chunk_doc_ids))
    hits: list[Hit] = ranked[: rag.default_k]
    memories = rag.memories_for(hits)
    generated = rag.model.generate([q["question"]], [memories])[0]
    return DemoQuestion(
        question=q["question"],
        reference_answer=q["answer"],
        gold_doc_id=q["doc_id"],
        hits=[{**asdict(h), "gold": h.doc_id == q["doc_id"]} for h in hits],
        gold_rank_clara=gold_rank([h.doc_id for h in ranked], q["doc_id"]),
        gold_rank_bm25=bm25_rank(bm25, chunk_doc_ids, q["question"], q["doc_id"]),
        prompt=prompt_cost(rag.model, q["question"], memories, [h.text for h in hits]),
        generated_text=generated,
        generated_text_is_answer=note is None,
    )


def stored_chunks(store: Any) -> tuple[list[str], list[str]]:
    """``(texts, doc_ids)`` of every chunk in the store."""
    hits = list(store.iter_records())
    return [h.text for h in hits], [h.doc_id for h in hits]


def run_demo(
    rag: Any,
    rows: list[dict[str, Any]],
    asked: list[dict[str, Any]],
    model_name: str,
    passages_total: int,
    show_progress: bool = True,
) -> DemoReport:
    """Index ``rows`` (compress once; stored chunks are reused), then answer ``asked`` as :class:`DemoQuestion`."""
    records = [{"id": r["id"], "text": r["text"], "metadata": {"title": r.get("title") or r["id"]}} for r in rows]
    res = rag.index(records, show_progress=show_progress)
    texts, doc_ids = stored_chunks(rag.store)
    note = TINY_NOTE if model_name == "tiny" else None
    bm25 = BM25(texts)
    return DemoReport(
        model=model_name,
        passages_indexed=len(rows),
        passages_total=passages_total,
        chunks=len(texts),
        chunks_compressed=res.chunks_added - res.chunks_reused,
        compress_s=res.compress_s,
        threads=torch.get_num_threads(),
        note=note,
        questions=[ask_one(rag, q, bm25, doc_ids, note) for q in asked],
    )
