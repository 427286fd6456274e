"""``clara index`` as two workers, in real processes, on the bundled tiny model: Ray Data actors (``--engine ray
--workers 2``) and two ranks of ``accelerate launch``, into a local folder and into a ``chroma run`` server.

Each run must leave exactly the store a single-process ``clara index`` of the same file leaves (the same chunk ids
once each, the same memories, the same search results, every document complete, ``verify()`` clean): a clean run
into a server, and into a folder a run in which one worker is killed with SIGKILL part-way. Under Ray that run
itself completes (Ray Data restarts the actor and retries its batch); under accelerate the launcher stops the other
rank and fails, and the same command run again completes the store. Either way every chunk is stored exactly once.
"""

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

from clara_plugins.bulk_index import PID_DIR_ENV
from clara_plugins.rag import ClaraRAG
from clara_plugins.store import ClaraStore
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CORPUS = Path(__file__).resolve().parents[2] / "clara_plugins" / "assets" / "demo_corpus.jsonl"
QUESTIONS = ["Who is the editor-in-chief?", "When was the album released?", "Which river flows through the city?"]
N_BIG = 200  # passages of the kill tests: enough that a worker can be killed part-way
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


needs_ray = pytest.mark.skipif(not _has("ray.data"), reason="ray[data] is not installed (pip install '.[distributed]')")
needs_accelerate = pytest.mark.skipif(
    not _has("accelerate"), reason="accelerate is not installed (pip install '.[train]')"
)


def _corpus(folder: Path, n: int) -> Path:
    path = folder / f"corpus{n}.jsonl"
    path.write_text("".join(CORPUS.read_text().splitlines(keepends=True)[:n]))
    return path


def _index_cmd(db: str, corpus: Path, *extra: str) -> list[str]:
    cli = [sys.executable, "-m", "clara_plugins.cli", "index", "--db", db, "--model", "tiny", "--no-progress"]
    return [*cli, "--json", *extra, str(corpus)]


def _ray(db: str, corpus: Path, *extra: str) -> list[str]:
    return _index_cmd(db, corpus, "--engine", "ray", "--workers", "2", *extra)


def _accelerate(db: str, corpus: Path, *extra: str) -> list[str]:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(free_port())]
    return [*launch, "-m", *_index_cmd(db, corpus, *extra)[2:]]


def _run(cmd: list[str], env: dict | None = None) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env or ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, proc.stdout  # one line of totals (rank 0 only under a launcher)
    return json.loads(lines[0])


def _open(db: str, collection: str = "clara") -> ClaraStore:
    if db.startswith("http://"):
        host, port = db.removeprefix("http://").split(":")
        return ClaraStore(client=chromadb.HttpClient(host=host, port=int(port)), collection=collection)
    return ClaraStore(path=db, collection=collection)


def _snapshot(store: ClaraStore, model) -> dict:
    """What a user checks: the chunk ids, each chunk's memory, and the search results for a few questions."""
    rag = ClaraRAG(model, store)
    ids = store._collection().get(include=[])["ids"]
    hits = [[(h.id, h.score) for h in rag.search(q, k=5)] for q in QUESTIONS]
    return {"ids": ids, "memories": dict(zip(sorted(ids), store.get_memories(sorted(ids)))), "hits": hits}


@pytest.fixture(scope="module")
def model():
    from clara_plugins.model import ClaraModel

    return ClaraModel.from_pretrained("tiny", device="cpu")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return _corpus(tmp_path_factory.mktemp("corpus"), 60)


@pytest.fixture(scope="module")
def single(tmp_path_factory, corpus, model) -> dict:
    """The single-process ``clara index`` of the corpus, to compare with."""
    db = str(tmp_path_factory.mktemp("single") / "db")
    res = _run(_index_cmd(db, corpus))
    assert res["docs_added"] == 60
    return _snapshot(_open(db), model)


def _assert_same_store(store: ClaraStore, model, single: dict, n_docs: int) -> None:
    got = _snapshot(store, model)
    assert len(got["ids"]) == len(set(got["ids"])) == store.count()  # every chunk once
    assert sorted(got["ids"]) == sorted(single["ids"])
    for cid, mem in single["memories"].items():
        # fp16 rows of a compression run in batches of other sizes: a few ulps apart, far below any real difference
        assert np.abs(got["memories"][cid] - mem).max() <= 1e-3 * max(1.0, np.abs(mem).max()), cid
    for mine, theirs in zip(got["hits"], single["hits"]):
        assert [h[0] for h in mine] == [h[0] for h in theirs]
        np.testing.assert_allclose([h[1] for h in mine], [h[1] for h in theirs], atol=1e-3)
    docs = {cid.split("#")[0] for cid in got["ids"]}
    status = store.doc_status(sorted(docs))
    assert len(status) == n_docs and all(n == present for _, n, present in status.values())  # every doc complete
    report = store.verify()
    assert report.ok, report.lines()


@pytest.fixture(scope="module")
def server(chroma_port) -> str:
    return f"http://127.0.0.1:{chroma_port}"


@needs_ray
def test_ray_two_workers_into_a_server_equal_one_process(server, tmp_path, corpus, single, model):
    res = _run(_ray(server, corpus, "--collection", "ray_two", "--batch-size", "4"))
    assert (res["engine"], res["workers"], res["docs_added"], res["docs_skipped"]) == ("ray", 2, 60, 0)
    assert res["chunks_added"] == res["store_chunks"] == len(single["ids"])
    _assert_same_store(_open(server, "ray_two"), model, single, 60)
    again = _run(_ray(server, corpus, "--collection", "ray_two"))  # the driver leaves out every stored document
    assert (again["docs_added"], again["docs_skipped"], again["chunks_added"]) == (0, 60, 0)


@needs_accelerate
def test_accelerate_two_ranks_into_a_server_equal_one_process(server, tmp_path, corpus, single, model):
    res = _run(_accelerate(server, corpus, "--collection", "accelerate_two", "--batch-size", "4"))
    assert (res["engine"], res["workers"], res["counts_of"]) == ("launcher", 2, "all workers")
    assert (res["docs_added"], res["chunks_added"], res["store_chunks"]) == (60, len(single["ids"]), len(single["ids"]))
    _assert_same_store(_open(server, "accelerate_two"), model, single, 60)


@pytest.mark.parametrize(
    "engine", [pytest.param("ray", marks=needs_ray), pytest.param("accelerate", marks=needs_accelerate)]
)
def test_two_workers_into_a_shared_store_equal_one_process(engine, server, s3_bucket, corpus, single, model):
    """The "shared" layout (Chroma server + S3 on moto): the same store, and the projection fitted once on every
    chunk of this small corpus (Ray: one actor indexes a first batch alone; ranks: each first batch is large)."""
    collection = f"shared_{engine}"
    extra = ("--collection", collection, "--batch-size", "4", "--memories", f"{s3_bucket['url']}/{collection}")
    cmd = _ray(server, corpus, *extra) if engine == "ray" else _accelerate(server, corpus, *extra)
    res = _run(cmd, env={**s3_bucket["env"], **{k: ENV[k] for k in ("OMP_NUM_THREADS", "HF_HUB_OFFLINE")}})
    assert (res["docs_added"], res["chunks_added"]) == (60, len(single["ids"]))
    host, port = server.removeprefix("http://").split(":")
    client = chromadb.HttpClient(host=host, port=int(port))
    store = ClaraStore(client=client, collection=collection, storage_options=s3_bucket["storage_options"])
    assert store.layout == "shared"
    if engine == "ray":
        assert store._layout_of().projection().fit_rows == len(single["ids"])
    _assert_same_store(store, model, single, 60)


@needs_ray
def test_ray_refuses_another_model_like_one_process(tmp_path, corpus, tiny_model):
    """The driver loads no model: with another ``--model`` it leaves nothing out and the actors' ``bind`` refuses
    the store, as ``clara index`` does; the user sees one error line and the store is unchanged."""
    db = str(tmp_path / "db")
    before = _run(_index_cmd(db, corpus))["store_chunks"]
    other = tmp_path / "other"
    tiny_model.save_pretrained(other)
    cmd = _index_cmd(db, corpus, "--engine", "ray", "--workers", "2")
    cmd[cmd.index("tiny")] = str(other)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("clara index: error: store 'clara'") and "was built by model 'tiny'" in last, last
    store = _open(db)
    assert store.count() == before and store.meta["clara_model"] == "tiny"


@needs_ray
def test_ray_refuses_more_gpus_than_the_local_machine_has(tmp_path, corpus):
    proc = subprocess.run(
        _ray(str(tmp_path / "db"), corpus, "--gpus-per-worker", "1000"), capture_output=True, text=True, env=ENV
    )
    assert proc.returncode == 1  # instead of actors waiting forever for GPUs that are not there
    assert "clara index: error: --workers x --gpus-per-worker needs 2000 GPUs; this machine has" in proc.stderr


# ---------------------------------------------------------------------------------------------- kill -9
def _pids(folder: Path) -> dict[int, str]:
    return {int(p.name): p.read_text() for p in folder.iterdir()} if folder.is_dir() else {}


def _wait_for_progress(proc: subprocess.Popen, db: str, pid_dir: Path, total: int, want: str) -> int:
    """Wait until a worker whose role starts with ``want`` is up and the store holds some but not all chunks;
    returns that worker's pid."""
    deadline, store = time.monotonic() + 300, None
    while time.monotonic() < deadline and proc.poll() is None:
        pids = [p for p, role in _pids(pid_dir).items() if role.startswith(want)]
        if pids and (Path(db) / "chroma.sqlite3").exists():
            store = store or ClaraStore(path=db)
            count = store.count() if store.exists() else 0
            if count >= total // 5:
                assert count < total, "the run finished before a worker could be killed: give it more chunks"
                return pids[0]
        time.sleep(0.05)
    out = proc.communicate()[1][-3000:] if proc.poll() is not None else "timeout"
    pytest.fail(f"no progress to interrupt: {out}")


def _killed_run(cmd: list[str], db: str, pid_dir: Path, total: int, want: str) -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**ENV, PID_DIR_ENV: str(pid_dir)}
    )
    victim = _wait_for_progress(proc, db, pid_dir, total, want)
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    return proc, out, err


@pytest.fixture(scope="module")
def big(tmp_path_factory, model) -> tuple[Path, dict]:
    """A larger corpus (long enough to kill a worker part-way) and its single-process store."""
    corpus = _corpus(tmp_path_factory.mktemp("big"), N_BIG)
    db = str(tmp_path_factory.mktemp("big_single") / "db")
    _run(_index_cmd(db, corpus, "--batch-size", "16"))
    return corpus, _snapshot(_open(db), model)


def _repair_kill_holes(db: str) -> None:
    """A SIGKILL while Chroma persists a local folder's HNSW index can leave records out of it (docs/store.md,
    "Integrity"): that, and only that, is allowed after a kill; ``verify`` must detect it and ``repair`` fix it."""
    report = _open(db).verify()
    if not report.ok:
        assert report.not_in_hnsw and not (report.bad_texts or report.bad_memories or report.scan_problems)
        assert _open(db).verify(repair=True).ok


@needs_ray
def test_ray_worker_killed_run_still_completes(tmp_path, big, model):
    corpus, single = big
    db, pid_dir = str(tmp_path / "db"), tmp_path / "pids"
    proc, out, err = _killed_run(_ray(db, corpus, "--batch-size", "2"), db, pid_dir, len(single["ids"]), "ray-actor")
    # Ray Data restarts the dead actor (max_restarts=-1) and retries its batch: the run itself completes
    assert proc.returncode == 0, err[-3000:]
    res = json.loads(out.strip().splitlines()[-1])
    assert res["docs_added"] + res["docs_skipped"] == N_BIG and res["store_chunks"] == len(single["ids"])
    assert len(_pids(pid_dir)) >= 3  # two actors, and the one that replaced the killed actor
    _repair_kill_holes(db)
    _assert_same_store(_open(db), model, single, N_BIG)
    again = _run(_ray(db, corpus))
    assert (again["docs_added"], again["docs_skipped"]) == (0, N_BIG)
    _assert_same_store(_open(db), model, single, N_BIG)


@needs_accelerate
def test_accelerate_rank_killed_then_rerun_completes(tmp_path, big, model):
    corpus, single = big
    db, pid_dir = str(tmp_path / "db"), tmp_path / "pids"
    cmd = _accelerate(db, corpus, "--batch-size", "2")
    proc, _, _ = _killed_run(cmd, db, pid_dir, len(single["ids"]), "rank-1")
    # torchrun (behind accelerate launch) stops the other rank when one dies: the run fails, the store is partial
    assert proc.returncode != 0
    partial = _open(db).count()
    assert 0 < partial < len(single["ids"])
    again = _run(_accelerate(db, corpus, "--batch-size", "2"))  # the same command (another port) finishes the job
    assert 0 < again["docs_added"] < N_BIG and again["docs_added"] + again["docs_skipped"] == N_BIG
    _repair_kill_holes(db)
    _assert_same_store(_open(db), model, single, N_BIG)
