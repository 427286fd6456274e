"""Evaluation: held-out loss during training, and ``clara eval`` tables (CLaRa next to BM25 on the same data).

QA metrics are EM, F1 and cover-EM against every gold alias; retrieval metrics are Recall@1/3/5 and nDCG@10.
Data: official stage 1 / 2 / 3 JSONL (format detected from the first row) or a BEIR folder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from clara_plugins.errors import InputError
from clara_plugins.training.bm25 import BM25Retriever
from clara_plugins.training.config import TrainConfig
from clara_plugins.training.data import QARow, Stage1Row, load_beir, load_stage1, load_stage2, read_jsonl
from clara_plugins.training.metrics import qa_metrics, retrieval_metrics

if TYPE_CHECKING:
    from clara_plugins.model import ClaraModel
    from clara_plugins.training.stages import Stage

logger = logging.getLogger(__name__)
KS = (1, 3, 5)


def encode_texts(
    model: ClaraModel, texts: Sequence[str], role: str = "compressor", batch_size: int = 32, progress: bool = False
) -> torch.Tensor:
    """Memories ``(N, n, H)`` (fp32, CPU) of texts with one adapter, truncating over-long texts (for evaluation)."""
    out = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(texts), batch_size), desc=f"encode ({role})", disable=not progress):
            batch = model.tokenize_documents(list(texts[start : start + batch_size]), truncate=True)
            out.append(model.memories_from_batch(batch, role).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.n_mem, model.hidden_size)


def rank_candidates(model: ClaraModel, rows: Sequence[QARow]) -> list[list[int]]:
    """Each row's candidate positions ranked by the query reasoner (cosine, best first)."""
    unique = list(dict.fromkeys(d for r in rows for d in r.docs))
    memory = encode_texts(model, unique).flatten(1)  # (U, D)
    position = {t: i for i, t in enumerate(unique)}
    queries = encode_texts(model, [r.question for r in rows], "query_reasoner").flatten(1)  # (B, D)
    ranked = []
    for q, r in zip(queries, rows):
        cands = memory[[position[d] for d in r.docs]]
        scores = torch.nn.functional.cosine_similarity(q.unsqueeze(0), cands, dim=-1)
        ranked.append(sorted(range(len(r.docs)), key=lambda i: (-scores[i].item(), i)))
    return ranked


def bm25_rank_candidates(rows: Sequence[QARow]) -> list[list[int]]:
    """Each row's candidate positions ranked by BM25 fitted on all candidate texts of ``rows``."""
    unique = list(dict.fromkeys(d for r in rows for d in r.docs))
    position = {t: i for i, t in enumerate(unique)}
    bm25 = BM25Retriever(unique)
    out = []
    for r in rows:
        order = bm25.rank(r.question, [position[d] for d in r.docs])
        back = {position[d]: i for i, d in reversed(list(enumerate(r.docs)))}
        out.append([back[o] for o in order])
    return out


def answer_from(
    model: ClaraModel, rows: Sequence[QARow], chosen: Sequence[Sequence[int]], max_new_tokens: int
) -> list[str]:
    """Generate each row's answer from the memories of its ``chosen`` candidate positions (in that order)."""
    unique = list(dict.fromkeys(r.docs[i] for r, c in zip(rows, chosen) for i in c))
    memory = encode_texts(model, unique)
    position = {t: i for i, t in enumerate(unique)}
    mems = [memory[[position[r.docs[i]] for i in c]] for r, c in zip(rows, chosen)]
    return model.generate([r.question for r in rows], mems, max_new_tokens=max_new_tokens)


def stage1_questions(rows: Sequence[Stage1Row]) -> list[QARow]:
    """Stage-1 QA rows as one question per row with its document (for answer metrics on held-out questions)."""
    return [QARow(q, r.docs, [a]) for r in rows if r.data_type == "qa" for q, a in zip(r.questions, r.answers)]


def stage_metrics(model: ClaraModel, stage: Stage, rows: Sequence[Any], config: TrainConfig) -> dict[str, float]:
    """Held-out metrics of a stage: the training loss without gradient, recall and answer quality where they apply."""
    out: dict[str, float] = {}
    logs: list[dict[str, float]] = []
    losses = []
    with torch.no_grad():
        for start in range(0, len(rows), config.batch_size):
            chunk = rows[start : start + config.batch_size]
            loss, log = stage.loss(model, chunk)
            losses.append((loss.item(), len(chunk)))
            logs.append(log)
    out["loss"] = sum(v * n for v, n in losses) / sum(n for _, n in losses)
    if "ce" in logs[0]:
        out["ce"] = sum(log["ce"] for log in logs) / len(logs)
    qa_rows = stage1_questions(rows) if isinstance(rows[0], Stage1Row) else list(rows)
    qa_rows = qa_rows[: config.eval_max_examples]
    if stage.name in ("3", "retrieval") and any(r.pos_index for r in qa_rows):
        ranked = rank_candidates(model, qa_rows)
        labelled = [(rk, r.pos_index) for rk, r in zip(ranked, qa_rows) if r.pos_index]
        out.update(retrieval_metrics([a for a, _ in labelled], [b for _, b in labelled], KS))
    if config.eval_generate and stage.name != "retrieval":
        if stage.name == "3":
            chosen = [rk[: config.top_k] for rk in rank_candidates(model, qa_rows)]
        else:
            chosen = [list(range(min(len(r.docs), config.max_docs))) for r in qa_rows]
        preds = answer_from(model, qa_rows, chosen, config.max_new_tokens)
        out.update(qa_metrics(preds, [r.answers for r in qa_rows]))
    return out


# ---------------------------------------------------------------------- clara eval
def detect_format(path: str | Path) -> str:
    """``"beir"`` for a folder, else ``"stage1"`` or ``"qa"`` from the first JSONL row."""
    path = Path(path)
    if path.is_dir():
        return "beir"
    for _, obj in read_jsonl(path):
        return "stage1" if "data_type" in obj or isinstance(obj.get("question"), list) else "qa"
    msg = f"data file is empty: {str(path)!r}"
    raise InputError(msg)


def evaluate(
    model: ClaraModel,
    data: str | Path,
    split: str = "test",
    k: int = 5,
    max_examples: int | None = None,
    generate: bool = True,
    max_new_tokens: int = 32,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate ``model`` on official JSONL or a BEIR folder, with BM25 on the same data; returns table rows.

    - BEIR folder: full-corpus retrieval with the query reasoner vs BM25 (Recall@1/3/5, nDCG@10).
    - stage-3-style JSONL (``pos_index``): candidates ranked by the query reasoner vs BM25, and answers generated
      from each ranking's top ``k`` (EM / F1 / cover-EM).
    - stage-2 JSONL: answers from the given documents; stage-1 JSONL: each question answered from its document.
    """
    fmt = detect_format(data)
    if fmt == "beir":
        return evaluate_beir(model, load_beir(data, split), max_examples, progress)
    rows = stage1_questions(load_stage1(data)) if fmt == "stage1" else load_stage2(data)
    rows = rows[:max_examples] if max_examples else rows
    table = []
    labelled = any(r.pos_index for r in rows)
    rankings = {"clara": rank_candidates(model, rows), "bm25": bm25_rank_candidates(rows)} if labelled else {}
    for method, ranked in rankings.items():
        rel = [r.pos_index for r in rows]
        entry: dict[str, Any] = {"method": method, **retrieval_metrics(ranked, rel, KS)}
        if generate:
            preds = answer_from(model, rows, [rk[:k] for rk in ranked], max_new_tokens)
            entry.update(qa_metrics(preds, [r.answers for r in rows]))
        table.append(entry)
    if not labelled and generate:
        preds = answer_from(model, rows, [list(range(min(len(r.docs), k))) for r in rows], max_new_tokens)
        table.append({"method": "clara (given docs)", **qa_metrics(preds, [r.answers for r in rows])})
    for entry in table:
        entry["n"] = len(rows)
    return table


def evaluate_beir(model: ClaraModel, data: Any, max_examples: int | None = None, progress: bool = True) -> list[dict]:
    """Full-corpus retrieval on a BEIR split: CLaRa (query reasoner vs compressed corpus) and BM25."""
    doc_ids = list(data.corpus)
    texts = [data.corpus[d] for d in doc_ids]
    qids = list(data.qrels)[:max_examples] if max_examples else list(data.qrels)
    questions = [data.queries[q] for q in qids]
    rel = [data.qrels[q] for q in qids]
    memory = encode_texts(model, texts, progress=progress).flatten(1)
    queries = encode_texts(model, questions, "query_reasoner").flatten(1)
    _, top = model.rank(queries, memory, k=10)
    clara = [[doc_ids[i] for i in row] for row in top.tolist()]
    bm25 = BM25Retriever(texts)
    lexical = [[doc_ids[i] for i in bm25.search(q, 10)] for q in questions]
    return [
        {"method": "clara", **retrieval_metrics(clara, rel, KS), "n": len(qids)},
        {"method": "bm25", **retrieval_metrics(lexical, rel, KS), "n": len(qids)},
    ]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table (markdown pipes) of evaluation rows; missing cells are blank."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    cell = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r[k]) if k in r else "" for k in keys) + " |" for r in rows]
    return "\n".join(lines)
