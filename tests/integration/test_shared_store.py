"""The "shared" layout on real servers: a `chroma run` server and an S3-compatible server (moto) on 127.0.0.1.
Two `clara index` processes write one store at once, two `clara search` processes read it, one writer is killed
with SIGKILL mid-run and rerun. Each asserts what a user would check: every chunk stored once, memories equal to an
in-process compression, results equal to the exact CLaRa ranking, `clara check` clean."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import chromadb
import numpy as np
import pytest

from clara_plugins import ClaraModel
from clara_plugins.store import ClaraStore
from tests.unit.test_store import _exact_top

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    lines = (REPO / "clara_plugins/assets/demo_corpus.jsonl").read_text().splitlines()
    return [{"id": d["id"], "text": d["text"]} for d in map(json.loads, lines[:160])]


@pytest.fixture(scope="module")
def model() -> ClaraModel:
    return ClaraModel.from_pretrained("tiny", device="cpu")


def _files(tmp_path: Path, corpus: list[dict], parts: int) -> list[Path]:
    out = []
    tmp_path.mkdir(parents=True, exist_ok=True)
    for i in range(parts):
        path = tmp_path / f"part{i}.jsonl"
        path.write_text("".join(json.dumps(d) + "\n" for d in corpus[i::parts]))
        out.append(path)
    return out


def _clara(args: list[str], env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "clara_plugins.cli", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _index_args(port: int, collection: str, bucket: dict, path: Path) -> list[str]:
    return [
        "index", "--db", f"http://127.0.0.1:{port}", "--collection", collection, "--model", "tiny",
        "--memories", f"{bucket['url']}/{collection}", "--no-progress", "--threads", "1", str(path),
    ]  # fmt: skip


def _expected(model: ClaraModel, corpus: list[dict]) -> dict[str, str]:
    return {f"{d['id']}#{i}": c.text for d in corpus for i, c in enumerate(model.chunk(d["text"]))}


def _store(port: int, collection: str, bucket: dict) -> ClaraStore:
    client = chromadb.HttpClient(host="127.0.0.1", port=port)
    return ClaraStore(client=client, collection=collection, storage_options=bucket["storage_options"])


def test_two_writers_and_two_readers_share_one_store(chroma_port, s3_bucket, corpus, model, tmp_path):
    files = _files(tmp_path, corpus, 2)
    writers = [_clara(_index_args(chroma_port, "two-writers", s3_bucket, f), s3_bucket["env"]) for f in files]
    for w in writers:
        out, err = w.communicate(timeout=600)
        assert w.returncode == 0, err
    store = _store(chroma_port, "two-writers", s3_bucket)
    assert store.layout == "shared" and store.info().memories_url == f"{s3_bucket['url']}/two-writers"
    expected = _expected(model, corpus)
    stored = {h.id: h.text for h in store.iter_records()}
    assert stored == expected  # every chunk of both files, once, with its text
    ids = sorted(expected)
    mems = store.get_memories(ids)
    want = model.compress([expected[i] for i in ids]).flatten(1).numpy()
    np.testing.assert_allclose(mems, want, atol=2e-3 * np.abs(want).max())  # fp16 rows in S3
    shards = s3_bucket_listing(s3_bucket, "two-writers")
    assert len(shards) >= 2  # each writer wrote its own shards into the one prefix

    questions = ["Who founded Flip Skateboards?", "What is the capital of France?", "When did the war end?"]
    readers = [_clara(["search", "--db", f"http://127.0.0.1:{chroma_port}", "--collection", "two-writers", "--json",
                       "-k", "10", q], s3_bucket["env"]) for q in questions]  # fmt: skip
    q = model.encode_query(questions).numpy()
    for i, r in enumerate(readers):
        out, err = r.communicate(timeout=300)
        assert r.returncode == 0, err
        got = [h["id"] for h in json.loads(out)["hits"]]
        exact = [ids[j] for j in _exact_top(q[i], mems, 10)]
        assert len(set(got) & set(exact)) >= 9, (got, exact)
    check = subprocess.run(
        [sys.executable, "-m", "clara_plugins.cli", "check", "--db", f"http://127.0.0.1:{chroma_port}",
         "--collection", "two-writers"], env=s3_bucket["env"], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert check.returncode == 0 and "OK" in check.stdout, check.stdout + check.stderr


def test_a_writer_killed_mid_run_then_rerun_stores_every_chunk_once(chroma_port, s3_bucket, corpus, model, tmp_path):
    first, rest = _files(tmp_path / "a", corpus[:20], 1)[0], _files(tmp_path / "b", corpus[20:], 1)[0]
    seed = _clara(_index_args(chroma_port, "killed", s3_bucket, first), s3_bucket["env"])
    assert seed.wait(timeout=300) == 0  # the store and its projection exist; the next run adds batch by batch
    client = chromadb.HttpClient(host="127.0.0.1", port=chroma_port)
    seeded = client.get_collection("killed").count()
    args = [*_index_args(chroma_port, "killed", s3_bucket, rest), "--batch-size", "8"]
    proc = _clara(args, s3_bucket["env"])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if client.get_collection("killed").count() > seeded + 16:  # a few batches in: kill it mid-run
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the writer finished before it could be killed: use a larger corpus"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = client.get_collection("killed").count()
    expected = _expected(model, corpus)
    assert 0 < partial < len(expected)
    rerun = _clara(args, s3_bucket["env"])
    _out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    store = _store(chroma_port, "killed", s3_bucket)
    assert {h.id: h.text for h in store.iter_records()} == expected
    assert store.verify().ok
    ids = sorted(expected)
    want = model.compress([expected[i] for i in ids]).flatten(1).numpy()
    np.testing.assert_allclose(store.get_memories(ids), want, atol=2e-3 * np.abs(want).max())


def s3_bucket_listing(bucket: dict, prefix: str) -> list[str]:
    import s3fs

    fs = s3fs.S3FileSystem(**bucket["storage_options"])
    return fs.ls(f"{bucket['url'][5:]}/{prefix}/shards")
