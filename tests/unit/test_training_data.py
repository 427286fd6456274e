"""Data readers: official stage 1/2/3 JSONL, BEIR layout, and config files; errors name file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clara_plugins.errors import ConfigError, InputError
from clara_plugins.training.config import TrainConfig, load_config
from clara_plugins.training.data import load_beir, load_stage1, load_stage2, load_stage3, write_jsonl

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_the_official_stage1_example() -> None:
    path = SHARED / "clara_example" / "pretrain_data.jsonl"
    if not path.exists():
        pytest.skip("shared example data not present")
    rows = load_stage1(path)
    assert len(rows) == 1000
    assert all(r.data_type == "qa" and len(r.questions) == len(r.answers) >= 1 and len(r.docs) == 1 for r in rows)


def test_stage1_errors_name_file_and_line(tmp_path: Path) -> None:
    good = json.dumps({"data_type": "qa", "question": ["q"], "answers": ["a"], "docs": ["d"]})
    bad = json.dumps({"data_type": "qa", "question": ["q1", "q2"], "answers": ["a"], "docs": ["d"]})
    path = _write(tmp_path / "s1.jsonl", [good, "", bad])
    with pytest.raises(InputError, match=r"s1\.jsonl:3: .*2 questions, 1 answers"):
        load_stage1(path)
    _write(path, [good, "{not json"])
    with pytest.raises(InputError, match=r"s1\.jsonl:2: not valid JSON"):
        load_stage1(path)
    _write(path, [json.dumps({"data_type": "summary", "docs": ["d"]})])
    with pytest.raises(InputError, match=r"s1\.jsonl:1: field 'data_type'"):
        load_stage1(path)


def test_paraphrase_row_defaults_to_the_document(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.jsonl", [json.dumps({"data_type": "paraphrase", "docs": ["a text"]})])
    (row,) = load_stage1(path)
    assert row.answers == ["a text"] and row.questions == []


def test_stage2_and_stage3_rows_round_trip(tmp_path: Path) -> None:
    rows = [
        {"question": "q?", "docs": ["a", "b"], "answer": "x"},
        {"question": "r?", "docs": ["c", "d", "e"], "answers": ["y", "why"], "pos_index": [2]},
    ]
    path = _write(tmp_path / "s3.jsonl", [json.dumps(r) for r in rows])
    loaded = load_stage3(path)
    assert loaded[0].answers == ["x"] and loaded[1].answers == ["y", "why"] and loaded[1].pos_index == [2]
    write_jsonl(tmp_path / "again.jsonl", loaded)
    assert load_stage2(tmp_path / "again.jsonl") == loaded
    _write(path, [json.dumps({"question": "q", "docs": ["a"], "answer": "x", "pos_index": [3]})])
    with pytest.raises(InputError, match=r"s3\.jsonl:1: field 'pos_index'"):
        load_stage3(path)
    with pytest.raises(InputError, match="not found"):
        load_stage2(tmp_path / "missing.jsonl")


def test_beir_layout(tmp_path: Path) -> None:
    _write(
        tmp_path / "corpus.jsonl",
        [json.dumps({"_id": "d1", "title": "T", "text": "x"}), json.dumps({"_id": "d2", "text": "y"})],
    )
    _write(
        tmp_path / "queries.jsonl", [json.dumps({"_id": "q1", "text": "x?"}), json.dumps({"_id": "q2", "text": "y?"})]
    )
    (tmp_path / "qrels").mkdir()
    _write(tmp_path / "qrels" / "test.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q1\td2\t0"])
    data = load_beir(tmp_path, "test")
    assert data.corpus == {"d1": "T\nx", "d2": "y"}
    assert data.queries == {"q1": "x?"} and data.qrels == {"q1": {"d1": 1}}
    _write(tmp_path / "qrels" / "test.tsv", ["query-id\tcorpus-id\tscore", "q1\td9\t1"])
    with pytest.raises(InputError, match=r"test\.tsv:2: unknown document id 'd9'"):
        load_beir(tmp_path, "test")


def test_reads_shared_scifact() -> None:
    folder = SHARED / "scifact"
    if not folder.exists():
        pytest.skip("shared scifact not present")
    data = load_beir(folder, "test")
    assert len(data.corpus) == 5183 and len(data.qrels) == 300


def test_config_validation_names_field_and_value(tmp_path: Path) -> None:
    cfg = TrainConfig(stage=3, train_file="x.jsonl")
    assert cfg.stage == "3" and cfg.learning_rate == 5e-6 and cfg.schedule == "constant"
    assert TrainConfig(stage="1", train_file="x").schedule == "cosine"
    with pytest.raises(ConfigError, match=r"TrainConfig.precision must be .* got 'fp8'"):
        TrainConfig(train_file="x", precision="fp8")
    with pytest.raises(ConfigError, match=r"TrainConfig.batch_size .* got 0"):
        TrainConfig(train_file="x", batch_size=0)
    (tmp_path / "c.yaml").write_text("stage: 2\ntrain_file: a.jsonl\nmax_steps: 5\n")
    assert load_config(tmp_path / "c.yaml", seed=3).max_steps == 5
    (tmp_path / "c.json").write_text(json.dumps({"train_file": "a", "learning_rat": 1}))
    with pytest.raises(ConfigError, match=r"unknown config key.*learning_rat"):
        load_config(tmp_path / "c.json")
