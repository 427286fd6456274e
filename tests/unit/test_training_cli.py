"""``clara train`` / ``clara eval`` / ``python -m clara_plugins.training`` end to end on the tiny model, and the
import guard of the remapped package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clara_plugins.cli import main
from clara_plugins.training.data import QARow, write_jsonl

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def saved_model(fresh_tiny_model, tmp_path) -> Path:
    return fresh_tiny_model.save_pretrained(tmp_path / "start")


@pytest.fixture
def stage3_file(passages, tmp_path) -> Path:
    docs = [p[:120] for p in passages[:6]]
    rows = [
        QARow(d.split(".")[0][:60] + "?", [docs[(i + j) % 6] for j in range(4)], [d[:20]], [0])
        for i, d in enumerate(docs)
    ]
    write_jsonl(tmp_path / "s3.jsonl", rows)
    return tmp_path / "s3.jsonl"


def test_clara_train_from_yaml_config(saved_model, stage3_file, tmp_path, capsys) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(
        f"stage: 2\nmodel: {saved_model}\ntrain_file: {stage3_file}\noutput_dir: {tmp_path / 'out'}\n"
        "max_steps: 2\nbatch_size: 3\nmax_docs: 2\nprogress: false\nplot: true\neval_generate: false\n"
    )
    assert main(["train", "--config", str(config), "--stage", "3", "--seed", "1"]) == 0
    assert "stage 3 done" in capsys.readouterr().out
    out = tmp_path / "out"
    assert (out / "final" / "clara_config.json").is_file() and (out / "metrics.png").stat().st_size > 1000
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["stage"] == "3" and records[-1]["step"] == 2


def test_clara_train_reports_config_errors(tmp_path, capsys) -> None:
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"train_file": "x.jsonl", "precision": "fp8"}))
    assert main(["train", "--config", str(config)]) == 1
    assert "TrainConfig.precision" in capsys.readouterr().err


def test_clara_eval_table_has_bm25(saved_model, stage3_file, tmp_path, capsys) -> None:
    out = tmp_path / "table.json"
    args = [
        "eval",
        "--model",
        str(saved_model),
        "--data",
        str(stage3_file),
        "--max-new-tokens",
        "4",
        "--json",
        str(out),
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "| method |" in text and "| bm25 |" in text and "| clara |" in text
    table = json.loads(out.read_text())
    assert {"recall@1", "recall@3", "recall@5", "ndcg@10", "em", "f1", "cover_em"} <= set(table[0])


def test_clara_eval_on_beir_folder(saved_model, passages, tmp_path, capsys) -> None:
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    docs = [p[:100] for p in passages[:10]]
    (beir / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "text": d}) + "\n" for i, d in enumerate(docs))
    )
    (beir / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": d[:40]}) + "\n" for i, d in enumerate(docs))
    )
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(10))
    )
    assert main(["eval", "--model", str(saved_model), "--data", str(beir)]) == 0
    text = capsys.readouterr().out
    bm25_row = next(line for line in text.splitlines() if line.startswith("| bm25 |"))
    assert float(bm25_row.split("|")[2]) > 50  # BM25 finds passages from their own first words


def test_module_entry_point_help() -> None:
    proc = subprocess.run([sys.executable, "-m", "clara_plugins.training", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--config" in proc.stdout


def test_top_level_import_is_refused() -> None:
    proc = subprocess.run([sys.executable, "-c", "import training"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0
    assert "import clara_plugins.training" in proc.stderr


def _beir(folder: Path, passages: list[str]) -> Path:
    (folder / "qrels").mkdir(parents=True)
    docs = [p[:100] for p in passages[:10]]
    corpus = "".join(json.dumps({"_id": f"d{i}", "text": d}) + "\n" for i, d in enumerate(docs))
    (folder / "corpus.jsonl").write_text(corpus)
    queries = "".join(json.dumps({"_id": f"q{i}", "text": d[:40]}) + "\n" for i, d in enumerate(docs))
    (folder / "queries.jsonl").write_text(queries)
    qrels = "".join(f"q{i}\td{i}\t1\n" for i in range(10))
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    return folder


def test_retrieval_stage_trains_from_a_beir_folder(saved_model, passages, tmp_path) -> None:
    from clara_plugins.training.stages import beir_training_rows

    folder = _beir(tmp_path / "beir", passages)
    rows = beir_training_rows(folder, "train", n_candidates=4)
    assert len(rows) == 10 and all(len(r.docs) == 4 and len(r.pos_index) == 1 for r in rows)
    assert all(r.docs[r.pos_index[0]].startswith(r.question) for r in rows)  # the judged document is the positive
    config = tmp_path / "ret.json"
    settings = {
        "stage": "retrieval",
        "model": str(saved_model),
        "train_file": str(folder),
        "n_candidates": 4,
        "output_dir": str(tmp_path / "out"),
        "max_steps": 2,
        "batch_size": 5,
        "progress": False,
        "plot": False,
    }
    config.write_text(json.dumps(settings))
    assert main(["train", "--config", str(config)]) == 0
    assert (tmp_path / "out" / "final").is_dir()


def test_clara_eval_on_stage2_rows_answers_from_given_docs(saved_model, passages, tmp_path, capsys) -> None:
    rows = [QARow(p[:30] + "?", [p[:100]], [p[:10]]) for p in passages[:3]]
    write_jsonl(tmp_path / "s2.jsonl", rows)
    assert (
        main(["eval", "--model", str(saved_model), "--data", str(tmp_path / "s2.jsonl"), "--max-new-tokens", "3"]) == 0
    )
    assert "| clara (given docs) |" in capsys.readouterr().out
