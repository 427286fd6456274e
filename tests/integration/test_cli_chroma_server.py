"""The ``clara`` store commands with ``--db http://127.0.0.1:PORT``: a real ``chroma run`` server, a tenant and a
database of its own, and the life cycle (index, search, ask, sync, delete, info) through it."""

from __future__ import annotations

import json

import chromadb
import pytest
from chromadb.config import Settings

from clara_plugins.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def port(chroma_port):
    return chroma_port


def _json(capsys, *argv: str) -> dict:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_cli_life_cycle_on_a_server(capsys, port, model_dir, passages, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    admin = chromadb.AdminClient(
        Settings(
            chroma_api_impl="chromadb.api.fastapi.FastAPI", chroma_server_host="127.0.0.1", chroma_server_http_port=port
        )
    )
    admin.create_tenant("team")
    admin.create_database("docs", tenant="team")
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(4):
        (docs / f"p{i}.txt").write_text(passages[i])
    url = f"http://127.0.0.1:{port}"
    server = ["--db", url, "--tenant", "team", "--database", "docs"]

    res = _json(capsys, "index", *server, "--model", model_dir, "--no-progress", "--json", str(docs))
    assert res["docs_added"] == 4
    ours = chromadb.HttpClient(host="127.0.0.1", port=port, tenant="team", database="docs")
    assert ours.get_collection("clara").count() == res["store_chunks"]
    assert "clara" not in [c.name for c in chromadb.HttpClient(host="127.0.0.1", port=port).list_collections()]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs"]  # no local folder named "http:"

    hits = _json(capsys, "search", *server, "-k", "3", "--json", "Who is the editor-in-chief?")["hits"]
    assert len(hits) == 3 and hits[0]["score"] >= hits[-1]["score"]
    answer = _json(capsys, "ask", *server, "-k", "2", "--max-new-tokens", "3", "--json", "Who?")
    assert len(answer["sources"]) == 2

    (docs / "p3.txt").unlink()
    res = _json(capsys, "sync", *server, "--no-progress", "--json", str(docs))
    assert res["removed_ids"] == [str((docs / "p3.txt").resolve())] and res["unchanged"] == 3
    res = _json(capsys, "delete", *server, "--json", str((docs / "p0.txt").resolve()))
    info = _json(capsys, "info", *server, "--json")
    assert info["n_docs"] == 2 and info["n_chunks"] == res["store_chunks"] == ours.get_collection("clara").count()
    assert info["path"] is None and info["layout"] == "full"

    # the default database of the same server holds no store: a clear error, nothing created
    assert main(["info", "--db", url]) == 1
    assert "no collection 'clara'" in capsys.readouterr().err
    assert main(["index", *server, "--collection", "wide", "--layout", "pca", "--no-progress", str(docs)]) == 1
    assert "local PersistentClient" in capsys.readouterr().err
