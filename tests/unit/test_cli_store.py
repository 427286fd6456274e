"""The store subcommands of ``clara``, run in-process on real files, the tiny model and a real Chroma folder."""

from __future__ import annotations

import json

import pytest

from clara_plugins.cli import main
from clara_plugins.corpus import read_corpus
from clara_plugins.errors import InputError


@pytest.fixture
def corpus(tmp_path, passages):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text(passages[0])
    (root / "sub" / "b.md").write_text("# Notes\n\n" + passages[1])
    rows = [{"_id": f"r{i}", "title": f"T{i}", "text": p} for i, p in enumerate(passages[2:5])]
    (root / "sub" / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (root / "ignored.csv").write_text("x,y\n")
    return root


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_read_corpus(corpus):
    records = read_corpus([corpus])
    assert [r["id"] for r in records[-3:]] == ["r0", "r1", "r2"]
    assert records[-1]["metadata"]["title"] == "T2" and records[0]["metadata"]["source"].endswith("a.txt")
    assert len(records) == 5


@pytest.mark.parametrize(
    ("content", "name", "pattern"),
    [
        ("{not json", "x.jsonl", "not valid JSON"),
        ('{"body": "x"}', "x.jsonl", "no string field 'text'"),
        ('{"text": "  "}', "x.jsonl", "empty 'text'"),
        ("   ", "x.txt", "is empty"),
        ("a,b", "x.csv", "supported files"),
    ],
)
def test_read_corpus_bad_files(tmp_path, content, name, pattern):
    (tmp_path / name).write_text(content)
    with pytest.raises(InputError, match=pattern):
        read_corpus([tmp_path / name])
    with pytest.raises(InputError, match="does not exist"):
        read_corpus([tmp_path / "nope.txt"])


def test_index_info_search_ask(capsys, tmp_path, corpus, model_dir, passages):
    db = str(tmp_path / "db")
    code, out, _ = _run(capsys, "index", "--db", db, "--model", model_dir, "--no-progress", str(corpus))
    assert code == 0 and "indexed 5 documents" in out
    code, out, _ = _run(capsys, "index", "--db", db, "--no-progress", str(corpus))  # recorded model, no duplicates
    assert code == 0 and "skipped 5 already stored" in out
    code, out, _ = _run(capsys, "info", "--db", db, "--json")
    info = json.loads(out)
    assert (info["n_docs"], info["model_source"], info["layout"]) == (5, model_dir, "full")
    assert info["n_chunks"] >= 5
    code, out, _ = _run(capsys, "search", "--db", db, "-k", "3", "--json", "Who is the editor?")
    hits = json.loads(out)["hits"]
    assert code == 0 and len(hits) == 3 and hits[0]["score"] >= hits[2]["score"]
    code, out, _ = _run(capsys, "ask", "--db", db, "-k", "2", "--max-new-tokens", "4", "--json", "Who?")
    answer = json.loads(out)
    assert code == 0 and isinstance(answer["answer"], str) and len(answer["sources"]) == 2
    code, out, _ = _run(capsys, "ask", "--db", db, "-k", "1", "--max-new-tokens", "4", "Who?")
    assert code == 0 and "sources:" in out and "[1]" in out


def test_ask_without_store_is_a_clear_error(capsys, tmp_path):
    code, _, err = _run(capsys, "ask", "--db", str(tmp_path / "none"), "Who?")
    assert code == 1 and "no CLaRa store" in err and "clara index" in err
    assert not (tmp_path / "none").exists()
    code, _, err = _run(capsys, "info", "--db", str(tmp_path / "none"))
    assert code == 1 and "no CLaRa store" in err


def test_index_bad_input_keeps_store(capsys, tmp_path, corpus, model_dir):
    db = str(tmp_path / "db")
    assert _run(capsys, "index", "--db", db, "--model", model_dir, "--no-progress", str(corpus / "a.txt"))[0] == 0
    (corpus / "bad.jsonl").write_text('{"text": ""}\n')
    code, _, err = _run(capsys, "index", "--db", db, "--no-progress", str(corpus))
    assert code == 1 and "bad.jsonl:1" in err
    code, out, _ = _run(capsys, "info", "--db", db, "--json")
    assert json.loads(out)["n_docs"] == 1


def test_a_shared_store_from_the_command_line(capsys, tmp_path, corpus, model_dir):
    """--memories makes a "shared" store; the other commands find the memories through the store; bad options fail."""
    db, mem = str(tmp_path / "db"), str(tmp_path / "shards")
    code, out, _ = _run(
        capsys, "index", "--db", db, "--model", model_dir, "--memories", mem, "--no-progress", str(corpus)
    )
    assert code == 0 and "indexed 5 documents" in out
    code, out, _ = _run(capsys, "info", "--db", db, "--json")
    info = json.loads(out)
    assert (info["layout"], info["memories_url"], info["n_docs"]) == ("shared", mem, 5) and info["memories_bytes"] > 0
    code, out, _ = _run(capsys, "search", "--db", db, "-k", "2", "--json", "Who is the editor?")
    assert code == 0 and len(json.loads(out)["hits"]) == 2
    code, out, _ = _run(capsys, "check", "--db", db)
    assert code == 0 and "OK" in out
    code, _, err = _run(capsys, "index", "--db", db, "--memories", str(tmp_path / "other"), str(corpus))
    assert code != 0 and "keeps its memories in" in err
    code, _, err = _run(capsys, "search", "--db", db, "--storage-option", "novalue", "question?")
    assert code != 0 and "KEY=VALUE" in err
