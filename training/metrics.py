"""Answer and retrieval metrics: EM, F1, cover-EM (SQuAD normalisation, max over all gold aliases), Recall@k, nDCG@k.

Unlike the official code, QA metrics use every gold alias, not only the first one (reference section 8.9).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and the articles a/an/the, collapse white space."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def cover_exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when any normalised gold answer appears in the normalised prediction (as whole words)."""
    pred = f" {normalize_answer(prediction)} "
    return float(any(normalize_answer(g) and f" {normalize_answer(g)} " in pred for g in golds))


def f1_score(prediction: str, golds: Sequence[str]) -> float:
    """Best token-level F1 between the prediction and any gold answer."""
    return max((_token_f1(prediction, g) for g in golds), default=0.0)


def _token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def qa_metrics(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean EM, F1 and cover-EM (in percent) over questions."""
    if len(predictions) != len(golds):
        msg = f"predictions and golds differ in length: {len(predictions)} vs {len(golds)}"
        raise ValueError(msg)
    n = max(len(predictions), 1)
    return {
        "em": 100 * sum(exact_match(p, g) for p, g in zip(predictions, golds)) / n,
        "f1": 100 * sum(f1_score(p, g) for p, g in zip(predictions, golds)) / n,
        "cover_em": 100 * sum(cover_exact_match(p, g) for p, g in zip(predictions, golds)) / n,
    }


def recall_at_k(ranked: Sequence[object], relevant: Mapping[object, int] | Sequence[object], k: int) -> float:
    """Fraction of the relevant items found in the first ``k`` of ``ranked`` (BEIR definition).

    With one relevant item per query this is the hit rate used by CLaRa's Recall@k.
    """
    rel = {r for r in relevant if (relevant[r] if isinstance(relevant, Mapping) else 1) > 0}
    if not rel:
        return 0.0
    return len(rel.intersection(ranked[:k])) / len(rel)


def ndcg_at_k(ranked: Sequence[object], relevant: Mapping[object, int] | Sequence[object], k: int = 10) -> float:
    """nDCG@k with linear gains (graded relevance) and ``log2(rank + 1)`` discounts, as BEIR / trec_eval."""
    grades = dict(relevant) if isinstance(relevant, Mapping) else dict.fromkeys(relevant, 1)
    dcg = sum(grades.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sorted((g for g in grades.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def retrieval_metrics(
    rankings: Sequence[Sequence[object]],
    relevant: Sequence[Mapping[object, int] | Sequence[object]],
    ks: Sequence[int] = (1, 3, 5),
    ndcg_k: int = 10,
) -> dict[str, float]:
    """Mean Recall@k for each ``k`` and nDCG@``ndcg_k`` (in percent) over queries with at least one relevant item."""
    pairs = [(r, rel) for r, rel in zip(rankings, relevant, strict=True) if len(rel) > 0]
    n = max(len(pairs), 1)
    out = {f"recall@{k}": 100 * sum(recall_at_k(r, rel, k) for r, rel in pairs) / n for k in ks}
    out[f"ndcg@{ndcg_k}"] = 100 * sum(ndcg_at_k(r, rel, ndcg_k) for r, rel in pairs) / n
    return out
