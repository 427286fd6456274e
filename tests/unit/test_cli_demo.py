"""``clara demo`` on the bundled tiny model and corpus, run in-process (--json) and as installed (``clara``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clara_plugins.cli import main
from clara_plugins.demo import BM25, demo_records, pick_sample
from clara_plugins.training.bm25 import BM25Retriever


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """``clara demo`` sets torch's thread count (a process-wide setting): give the other tests theirs back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_demo_corpus_is_real_passages():
    rows, questions = demo_records()
    ids = {r["id"] for r in rows}
    assert len(rows) >= 24 and len(ids) == len(rows)
    assert all(len(r["text"]) >= 50 for r in rows)
    assert len(questions) >= 3 and all(q["question"].strip() and q["answer"] and q["doc_id"] in ids for q in questions)


def test_sample_holds_the_gold_passages():
    rows, questions = demo_records()
    sample, asked = pick_sample(rows, questions, 10, 3)
    assert len(sample) == 10 and len(asked) == 3
    assert len({q["doc_id"] for q in asked}) == 3 and {q["doc_id"] for q in asked} <= {r["id"] for r in sample}
    # a budget smaller than the questions still keeps every gold passage; None is the whole corpus
    assert {r["id"] for r in pick_sample(rows, questions, 1, 3)[0]} == {q["doc_id"] for q in asked}
    assert len(pick_sample(rows, questions, None, 3)[0]) == len(rows)


def test_bm25_scores_like_rank_bm25():
    rows, questions = demo_records()
    texts = [r["text"] for r in rows[:150]] + ["the of and"]  # a text of stop words only
    ours, reference = BM25(texts), BM25Retriever(texts)  # rank_bm25.BM25Okapi underneath
    for q in questions[:25]:
        np.testing.assert_allclose(ours.scores(q["question"]), reference.scores(q["question"]), rtol=1e-9)


def test_demo_json_compresses_once(capsys, tmp_path):
    argv = ["demo", "--passages", "30", "--questions", "2", "--db", str(tmp_path / "db"), "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "tiny" and report["passages_indexed"] == 30 and report["threads"] == 1
    assert report["chunks"] == report["chunks_compressed"] > 30 and "NOT an answer" in report["note"]
    for q in report["questions"]:
        assert len(q["hits"]) == 5 and not q["generated_text_is_answer"]
        assert [h["gold"] for h in q["hits"]] == [h["doc_id"] == q["gold_doc_id"] for h in q["hits"]]
        first_gold = next((i for i, h in enumerate(q["hits"], 1) if h["gold"]), None)
        assert first_gold is None or q["gold_rank_clara"] == first_gold
        assert 1 <= q["gold_rank_bm25"] <= report["chunks"]
        p = q["prompt"]
        assert p["chunks"] == 5 and p["slots_per_chunk"] == 17  # the bundled model: 16 memories + <SEP>
        assert p["chunks"] * p["slots_per_chunk"] < p["clara_tokens"] < p["text_tokens"]
        assert p["clara_prefill_s"] > 0 and p["text_prefill_s"] > 0
    # the second run finds every chunk stored: nothing is compressed again
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["chunks_compressed"] == 0 and again["chunks"] == report["chunks"]
    assert [h["id"] for h in again["questions"][0]["hits"]] == [h["id"] for h in report["questions"][0]["hits"]]


def test_demo_refuses_bad_arguments(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--passages", "0"]) == 1
    assert "--passages must be >= 1" in capsys.readouterr().err
    assert main(["demo", "--db", "http://127.0.0.1:8000"]) == 1
    assert "clara demo --db takes a folder" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def _clara() -> list[str]:
    script = Path(sys.executable).with_name("clara")
    return [str(script)] if script.exists() else [sys.executable, "-m", "clara_plugins.cli"]


@pytest.mark.slow
def test_demo_as_installed(tmp_path):
    run = subprocess.run(
        [*_clara(), "demo", "--passages", "40", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "Compressing 40 of 1000 demo passages once" in out
    assert out.count("generated text (tiny model, NOT an answer):") == 3 and "A: " not in out
    assert "NOTE: The bundled tiny model" in out and "official checkpoint on a GPU" in out and "clara train" in out
    assert "<== GOLD passage" in out and out.count("gold passage rank: CLaRa") == 3
    assert out.count("5 x 17 memory slots") == 3 and "prefill on this machine" in out
    assert "Loading weights" not in run.stderr and "indexing" not in run.stderr  # --no-progress is quiet
    assert list(tmp_path.iterdir()) == []  # the temporary store is gone
