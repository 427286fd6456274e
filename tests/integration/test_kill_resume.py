"""``clara index`` killed with SIGKILL part-way, then run again: the store is consistent and ends up complete."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from clara_plugins.store import ClaraStore

pytestmark = pytest.mark.integration


def _index_cmd(db, model_dir, corpus, layout):
    cli = [sys.executable, "-m", "clara_plugins.cli", "index", "--db", str(db), "--model", model_dir]
    return [*cli, "--batch-size", "4", "--layout", layout, str(corpus)]


# Chroma's PersistentClient caches a folder's index per process and does not see other processes' writes, so
# the killed store is inspected in its own process (as a user would, with `clara search`).
_INSPECT = """
import json, sys
from clara_plugins.rag import ClaraRAG
rag = ClaraRAG.from_pretrained(sys.argv[2], store=sys.argv[1])
print(json.dumps({"count": rag.store.count(), "hits": len(rag.search("Who is the editor?", k=3))}))
"""


def _run_and_kill(cmd, min_done: int) -> int:
    """Start ``cmd``, SIGKILL it once its progress bar shows at least ``min_done`` chunks; returns chunks shown."""
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env={**os.environ, "TQDM_MININTERVAL": "0"}
    )
    seen = [0]

    def reader() -> None:
        buf = b""
        while chunk := proc.stderr.read1(4096):
            buf = (buf + chunk)[-4096:]
            done = re.findall(rb"indexing:.*?\|\s*(\d+)/(\d+)", buf)
            if done:
                seen[0] = int(done[-1][0])

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    deadline = time.monotonic() + 240
    while seen[0] < min_done and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.fail(f"clara index ended (code {proc.returncode}) before it could be killed")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    thread.join(timeout=5)
    assert proc.returncode == -signal.SIGKILL
    return seen[0]


@pytest.mark.parametrize("layout", ["full", "pca"])
def test_kill_then_rerun_completes_exactly(tmp_path, tiny_model, model_dir, passages, layout):
    texts = passages[:30]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"id": f"p{i}", "text": t}) for i, t in enumerate(texts)) + "\n")
    expected = sum(len(tiny_model.chunk(t)) for t in texts)
    db = tmp_path / "db"

    done = _run_and_kill(_index_cmd(db, model_dir, corpus, layout), min_done=12)
    assert 12 <= done < expected

    inspect = subprocess.run([sys.executable, "-c", _INSPECT, str(db), model_dir], capture_output=True, text=True)
    assert inspect.returncode == 0, inspect.stderr[-2000:]
    partial = json.loads(inspect.stdout.strip().splitlines()[-1])  # the killed store opens (and recovers)
    assert 0 < partial["count"] < expected and partial["hits"] == 3

    rerun = subprocess.run(_index_cmd(db, model_dir, corpus, layout), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]

    store = ClaraStore(path=db)
    store.bind(tiny_model.fingerprint, tiny_model.memory_dim, tiny_model.n_mem, tiny_model.hidden_size, None)
    assert store.layout == layout
    records = store._collection().get(include=["metadatas"])
    assert len(records["ids"]) == len(set(records["ids"])) == expected == store.count()
    status = store.doc_status([f"p{i}" for i in range(len(texts))])
    assert all(n == present for _, n, present in status.values()) and len(status) == len(texts)
    # memories are intact: the stored memory of every chunk of one document equals a fresh compression
    chunk_ids = sorted(i for i in records["ids"] if i.startswith("p7#"))
    texts7 = store.get_records(chunk_ids)
    mems = store.get_memories(chunk_ids)
    fresh = tiny_model.compress([texts7[c].text for c in chunk_ids]).flatten(1).numpy()
    tol = 2e-2 if layout == "pca" else 1e-5
    assert abs(mems - fresh).max() < tol * max(1.0, abs(fresh).max())
