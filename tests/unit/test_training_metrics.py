"""EM / F1 / cover-EM over all aliases, Recall@k, nDCG@10, and the BM25 baseline."""

from __future__ import annotations

import math

import pytest

from clara_plugins.training.bm25 import BM25Retriever
from clara_plugins.training.metrics import (
    cover_exact_match,
    exact_match,
    f1_score,
    ndcg_at_k,
    normalize_answer,
    qa_metrics,
    recall_at_k,
    retrieval_metrics,
)


def test_squad_normalisation() -> None:
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an Apple a day") == "apple day"


def test_qa_metrics_use_every_alias() -> None:
    golds = ["Barack Obama", "Obama"]
    assert exact_match("obama.", golds) == 1.0  # second alias
    assert exact_match("President Obama", golds) == 0.0
    assert cover_exact_match("It was President Obama.", golds) == 1.0
    assert cover_exact_match("Obamacare", golds) == 0.0  # whole words only
    # "president obama" vs "obama": precision 1/2, recall 1 -> F1 2/3
    assert f1_score("President Obama", golds) == pytest.approx(2 / 3)
    m = qa_metrics(["Obama", "Paris"], [golds, ["London"]])
    assert m == {"em": 50.0, "f1": 50.0, "cover_em": 50.0}


def test_recall_and_ndcg() -> None:
    ranked = ["d3", "d1", "d7", "d2"]
    assert recall_at_k(ranked, ["d1", "d2"], 1) == 0.0
    assert recall_at_k(ranked, ["d1", "d2"], 3) == 0.5
    assert recall_at_k(ranked, ["d1", "d2"], 5) == 1.0
    # gains 2 at rank 2 and 1 at rank 4; ideal [2, 1] at ranks 1, 2
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(ranked, {"d1": 2, "d2": 1}, 10) == pytest.approx(dcg / idcg)
    out = retrieval_metrics([ranked, ["x"]], [["d3"], []])
    assert out["recall@1"] == 100.0 and out["ndcg@10"] == 100.0  # the query without judgements is skipped


def test_bm25_ranks_lexical_match_first() -> None:
    texts = ["the cat sat on the mat", "dogs chase cats in parks", "quantum chromodynamics of gluons", ""]
    bm25 = BM25Retriever(texts)
    assert bm25.search("gluons quantum", k=2)[0] == 2
    assert bm25.rank("cat mat", [1, 0, 2])[0] == 0
    assert len(bm25.scores("anything")) == 4
