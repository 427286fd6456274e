"""A store kept in step with a real folder: edit, delete, rename and sync, ``clara delete``, and ``--db`` options."""

from __future__ import annotations

import argparse
import http.server
import json
import socket
import threading

import numpy as np
import pytest

from clara_plugins.cli import main
from clara_plugins.cli.store_options import TOKEN_ENV, _headers
from clara_plugins.rag import ClaraRAG


@pytest.fixture
def folder(tmp_path, passages):
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("\n\n".join(passages[0:3]))  # several chunks of the test model (64 tokens)
    (root / "b.txt").write_text(passages[3])
    (root / "sub" / "c.md").write_text(passages[4])
    rows = [{"id": f"r{i}", "text": p} for i, p in enumerate(passages[5:7])]
    (root / "sub" / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def _json(capsys, *argv: str) -> dict:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def _search(capsys, db: str, question: str) -> dict[str, tuple[float, str]]:
    hits = _json(capsys, "search", "--db", db, "-k", "100", "--json", question)["hits"]
    return {h["id"]: (h["score"], h["text"]) for h in hits}


def test_folder_life_cycle(capsys, tmp_path, folder, model_dir, tiny_model):
    db = str(tmp_path / "db")
    first = _json(capsys, "index", "--db", db, "--model", model_dir, "--no-progress", "--json", str(folder))
    assert first["docs_added"] == 5 and first["chunks_reused"] == 0
    question = "Who is the editor-in-chief?"
    before = _search(capsys, db, question)
    a = folder / "a.txt"
    old_chunks = [c.text for c in tiny_model.chunk(a.read_text())]

    # edit: one sentence appended to a.txt recompresses only the chunks whose text changed
    a.write_text(a.read_text() + " The magazine was sold in 2020.")
    new_chunks = [c.text for c in tiny_model.chunk(a.read_text())]
    unchanged = sum(c in old_chunks for c in new_chunks)
    assert len(old_chunks) >= 3 and unchanged >= len(old_chunks) - 1
    res = _json(capsys, "sync", "--db", db, "--no-progress", "--json", str(folder))
    assert (res["added"], res["changed"], res["unchanged"], res["removed"]) == (0, 1, 4, 0)
    assert res["chunks_reused"] == unchanged and res["chunks_compressed"] == len(new_chunks) - unchanged
    after = _search(capsys, db, question)
    for cid, (score, text) in after.items():  # every chunk whose text is untouched scores exactly as before
        if cid in before and before[cid][1] == text:
            assert score == pytest.approx(before[cid][0], abs=1e-6)
    assert sum(1 for cid in after if cid in before and before[cid][1] == after[cid][1]) >= len(before) - 1

    # delete a file: its document leaves the store and the search results
    c_id = str((folder / "sub" / "c.md").resolve())
    assert any(h.startswith(c_id + "#") for h in after)
    (folder / "sub" / "c.md").unlink()
    res = _json(capsys, "index", "--sync", "--db", db, "--no-progress", "--json", str(folder))
    assert res["removed_ids"] == [c_id] and res["unchanged"] == 4
    assert not any(h.startswith(c_id + "#") for h in _search(capsys, db, question))
    assert _json(capsys, "info", "--db", db, "--json")["n_docs"] == 4

    # rename: one removed, one added, every chunk reused (nothing compressed)
    (folder / "b.txt").rename(folder / "b2.txt")
    res = _json(capsys, "sync", "--db", db, "--no-progress", "--json", str(folder))
    assert (res["added"], res["removed"], res["chunks_compressed"]) == (1, 1, 0) and res["chunks_reused"] >= 1
    assert res["added_ids"] == [str((folder / "b2.txt").resolve())]
    assert res["removed_ids"] == [str((folder / "b.txt").resolve())]
    info = _json(capsys, "info", "--db", db, "--json")
    assert info["n_docs"] == 4 and info["n_chunks"] == res["store_chunks"]


def test_delete_by_id_and_source(capsys, tmp_path, folder, model_dir):
    db = str(tmp_path / "db")
    _json(capsys, "index", "--db", db, "--model", model_dir, "--no-progress", "--json", str(folder))
    n_chunks = _json(capsys, "info", "--db", db, "--json")["n_chunks"]

    # an unknown id is an error and deletes nothing, not even the known ids given with it
    assert main(["delete", "--db", db, "r0", "nope"]) == 1
    assert "nope" in capsys.readouterr().err
    assert _json(capsys, "info", "--db", db, "--json")["n_chunks"] == n_chunks

    res = _json(capsys, "delete", "--db", db, "--json", "--source", str(folder / "sub" / "d.jsonl"))
    assert res["deleted"] == ["r0", "r1"] and res["store_chunks"] == n_chunks - res["chunks_deleted"]
    a_id = str((folder / "a.txt").resolve())
    res = _json(capsys, "delete", "--db", db, "--json", a_id)
    assert res["deleted"] == [a_id]
    info = _json(capsys, "info", "--db", db, "--json")
    assert info["n_docs"] == 2 and info["n_chunks"] == res["store_chunks"]
    assert main(["delete", "--db", db, "--source", str(folder / "sub" / "d.jsonl")]) == 1
    assert "no stored document was read from it" in capsys.readouterr().err


def test_index_reuses_unchanged_chunks(tiny_model, passages):
    rag = ClaraRAG(tiny_model)
    texts = {"x": "\n\n".join(passages[10:13]), "y": "\n\n".join(passages[13:15])}
    rag.index([{"id": d, "text": t} for d, t in texts.items()], show_progress=False, batch_size=2)
    old = {d: [c.text for c in tiny_model.chunk(t)] for d, t in texts.items()}
    assert min(len(c) for c in old.values()) >= 3  # documents span several batches
    mems = {d: rag.store.get_memories([f"{d}#{i}" for i in range(len(old[d]))]) for d in texts}
    edited = {d: t + " One more sentence." for d, t in texts.items()}
    new = {d: [c.text for c in tiny_model.chunk(t)] for d, t in edited.items()}
    same = {d: [i for i, c in enumerate(new[d]) if i < len(old[d]) and c == old[d][i]] for d in texts}
    assert all(len(same[d]) >= len(old[d]) - 1 for d in texts)
    again = rag.index([{"id": d, "text": t} for d, t in edited.items()], show_progress=False, batch_size=2)
    assert again.docs_added == 2 and again.chunks_added == sum(map(len, new.values())) == rag.store.count()
    assert again.chunks_reused == sum(c in old[d] for d in texts for c in new[d])
    for d in texts:  # the unchanged chunks kept their memories (Chroma's float32 round trip moves the last bit)
        kept = rag.store.get_memories([f"{d}#{i}" for i in same[d]])
        np.testing.assert_allclose(kept, mems[d][same[d]], atol=1e-6)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_db_url_and_server_options_are_checked(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = f"http://127.0.0.1:{_closed_port()}"
    assert main(["info", "--db", url]) == 1
    assert f"cannot use the Chroma server at {url}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no local folder named "http:"
    for argv, message in (
        (["info", "--db", "ftp://host:1"], "must be http://HOST[:PORT]"),
        (["info", "--db", "http://127.0.0.1:1/prefix"], "paths, queries and user info are not supported"),
        (["info", "--db", "local", "--tenant", "t"], "--tenant only apply to a Chroma server URL"),
        (["info", "--db", url, "--header", "novalue"], "--header must be KEY=VALUE"),
        (["index", "--db", "local", "--threads", "0", "x.txt"], "--threads must be >= 1"),
    ):
        assert main(argv) == 1
        assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_headers_and_token(monkeypatch):
    args = argparse.Namespace(header=["X-Team=search", "X-Empty="], token_env=TOKEN_ENV)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert _headers(args) == {"X-Team": "search", "X-Empty": ""}
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    assert _headers(args)["Authorization"] == "Bearer s3cret"
    args.header.append("authorization=Basic abc")  # an explicit header wins over the variable
    assert _headers(args)["authorization"] == "Basic abc" and "Authorization" not in _headers(args)


def test_headers_reach_the_server(capsys, monkeypatch):
    """A real HTTP server on 127.0.0.1 records what the CLI's HttpClient sends, then refuses it."""
    seen: list[dict[str, str]] = []

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(dict(self.headers))
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MY_TOKEN", "tok-123")
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        code = main(["info", "--db", url, "--header", "X-Team=search", "--token-env", "MY_TOKEN"])
    finally:
        server.shutdown()
    assert code == 1 and f"cannot use the Chroma server at {url}" in capsys.readouterr().err
    assert seen and seen[0]["X-Team"] == "search" and seen[0]["Authorization"] == "Bearer tok-123"


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("clara 0.")


def test_jsonl_text_field(capsys, tmp_path, model_dir, passages):
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps({"id": f"b{i}", "body": p}) for i, p in enumerate(passages[:3])) + "\n")
    db = str(tmp_path / "db")
    assert main(["index", "--db", db, "--model", model_dir, "--no-progress", str(data)]) == 1
    assert "no string field 'text' (name the field with --text-field)" in capsys.readouterr().err
    res = _json(
        capsys, "index", "--db", db, "--model", model_dir, "--no-progress", "--json", "--text-field", "body", str(data)
    )
    assert res["docs_added"] == 3
    hit = _json(capsys, "search", "--db", db, "-k", "1", "--json", passages[1][:80])["hits"][0]
    assert hit["doc_id"] == "b1" and hit["text"] in passages[1]


def test_eval_json_is_a_flag_like_elsewhere(capsys, tmp_path, model_dir, passages):
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    docs = [p[:100] for p in passages[:6]]
    (beir / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "text": d}) + "\n" for i, d in enumerate(docs))
    )
    (beir / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": d[:40]}) + "\n" for i, d in enumerate(docs))
    )
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(6))
    )
    base = ["eval", "--model", model_dir, "--data", str(beir), "--no-generate"]
    rows = json.loads(_run_out(capsys, *base, "--json"))
    assert {r["method"] for r in rows} >= {"bm25", "clara"} and "recall@5" in rows[0]
    out = _run_out(capsys, *base, "--output", str(tmp_path / "t.json"))
    assert "| bm25 |" in out and json.loads((tmp_path / "t.json").read_text()) == rows


def _run_out(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_ask_with_the_tiny_model_says_it_is_not_an_answer(capsys, tmp_path, passages):
    (tmp_path / "p.txt").write_text(passages[0])
    db = str(tmp_path / "db")
    assert main(["index", "--db", db, "--model", "tiny", "--no-progress", str(tmp_path / "p.txt")]) == 0
    capsys.readouterr()
    assert main(["ask", "--db", db, "-k", "1", "--max-new-tokens", "3", "Who is the editor?"]) == 0
    out = capsys.readouterr()
    assert "sources:" in out.out and "not an answer" in out.err and "not an answer" not in out.out
    answer = _json(capsys, "ask", "--db", db, "-k", "1", "--max-new-tokens", "3", "--json", "Who?")
    assert "cannot answer" in answer["note"]


def test_quiet_and_no_empty_progress_bar(capsys, tmp_path, folder, model_dir):
    db = str(tmp_path / "db")
    assert main(["index", "--db", db, "--model", model_dir, "--no-progress", str(folder)]) == 0
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "indexing" not in err
    assert main(["index", "--db", db, str(folder)]) == 0  # progress on, but nothing to index: no empty bar
    out = capsys.readouterr()
    assert "skipped 5 already stored" in out.out and "indexing" not in out.err
