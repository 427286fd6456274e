"""Two ``clara index`` processes writing different files into one embedded store at the same time: the folder lock
serialises their batches, every record ends up stored once and a ``where`` search on each file finds its chunks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_PROBE = """
import json, sys
import numpy as np
from clara_plugins.store import ClaraStore
store = ClaraStore(path=sys.argv[1])
col = store.client.get_collection("clara")
res = col.get(include=["metadatas"])
by_source = {}
for cid, meta in zip(res["ids"], res["metadatas"]):
    by_source.setdefault(meta["source"], set()).add(cid)
width = int(col.metadata["clara_ann_dim"]) + (1 if store.layout == "pca" else 0)
found = {}
for source, ids in by_source.items():
    got = col.query(query_embeddings=np.ones((1, width)), n_results=len(ids), where={"source": source}, include=[])
    found[source] = sorted(got["ids"][0]) == sorted(ids)
print(json.dumps({"ids": res["ids"], "found": found, "ok": store.verify().ok}))
"""


@pytest.mark.parametrize("layout", ["pca", "full"])
def test_two_writers_into_one_store(tmp_path, passages, model_dir, tiny_model, layout):
    folders = []
    for w in range(2):
        folder = tmp_path / f"corpus{w}"
        folder.mkdir()
        for i in range(12):
            (folder / f"doc{i}.txt").write_text(passages[40 * w + i])
        folders.append(folder)
    db = tmp_path / "db"
    cli = [sys.executable, "-m", "clara_plugins.cli", "index", "--db", str(db), "--model", model_dir]
    procs = [
        subprocess.Popen([*cli, "--batch-size", "4", "--layout", layout, str(f)], stderr=subprocess.PIPE, text=True)
        for f in folders
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    out = subprocess.run([sys.executable, "-c", _PROBE, str(db)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    expected = {
        f"{p.resolve()}#{i}" for f in folders for p in f.iterdir() for i in range(len(tiny_model.chunk(p.read_text())))
    }
    assert sorted(got["ids"]) == sorted(expected)  # every chunk of both writers, once
    assert len(got["found"]) == 24 and all(got["found"].values()), got["found"]
    assert got["ok"]
