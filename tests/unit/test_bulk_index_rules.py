"""``clara index`` with many workers, the fast parts: the shard rule, the launcher's variables, the worker spec and
every refusal (each one before anything is read or written)."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys

import pytest

from clara_plugins import bulk_index as bulk
from clara_plugins.cli import build_parser, main
from clara_plugins.errors import InputError, MissingExtraError


def test_shard_rule_is_stable_and_partitions():
    ids = [f"doc-{i}" for i in range(2000)]
    # pinned values: the rule must not change between processes, machines, Python runs (hash() would) or releases
    assert [bulk.shard_of(i, 4) for i in ids[:12]] == [0, 1, 2, 2, 3, 3, 2, 1, 0, 3, 0, 1]
    assert bulk.shard_of("/data/a.txt", 7) == 2
    for world in (1, 2, 3, 8):
        shards = [bulk.shard_of(i, world) for i in ids]
        assert set(shards) == set(range(world))
        mean, sd = len(ids) / world, (len(ids) * (1 / world) * (1 - 1 / world)) ** 0.5
        assert all(abs(shards.count(r) - mean) <= 5 * sd for r in range(world))  # balanced like a fair die


def test_shard_rule_is_the_same_in_another_process():
    code = "from clara_plugins.bulk_index import shard_of; print([shard_of(f'd{i}', 5) for i in range(50)])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str([bulk.shard_of(f"d{i}", 5) for i in range(50)])


def test_launcher_rank(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert bulk.launcher_rank() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert bulk.launcher_rank() is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert bulk.launcher_rank() == (3, 4, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(InputError, match="RANK=4 is outside WORLD_SIZE=4"):
        bulk.launcher_rank()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(InputError, match="RANK='x'"):
        bulk.launcher_rank()


def test_worker_spec_pickles_and_rebuilds_the_options(tmp_path):
    args = build_parser().parse_args(["index", "--db", str(tmp_path / "db"), "--engine", "ray", "--workers", "2", "x"])
    spec = bulk.WorkerSpec.from_args(args, device="cpu")
    back = pickle.loads(pickle.dumps(spec))
    ns = back.namespace()
    assert ns.db == str(tmp_path / "db") and ns.device == "cpu" and ns.collection == "clara"
    assert ns.layout == "auto" and back.batch_size == 64 and not hasattr(ns, "func")


def test_counts_add_index_results_and_rows():
    from clara_plugins.rag import IndexResult

    total = bulk.BulkCounts()
    total.add(IndexResult(docs_added=2, chunks_added=5, compress_s=0.5))
    total.add({"docs_added": 1, "docs_skipped": 3, "chunks_added": 2, "chunks_reused": 1, "chunk_s": 0, "compress_s": 0,
               "store_s": 0})  # fmt: skip
    assert (total.docs_added, total.docs_skipped, total.chunks_added, total.chunks_reused) == (3, 3, 7, 1)


def test_docs_per_batch():
    assert bulk.docs_per_batch(1, 4) == 1
    assert bulk.docs_per_batch(80, 2) == 10  # four batches per worker
    assert bulk.docs_per_batch(10**6, 2) == bulk.MAX_DOCS_PER_BATCH


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a", "text": "Paris is the capital of France."}\n')
    return path


def _refused(capsys, argv: list[str], pattern: str) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "clara index: error:" in err and re.search(pattern, err), err


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--engine", "ray", "--workers", "0"], r"--workers must be >= 1, got 0"),
        (["--engine", "ray", "--gpus-per-worker", "-1"], r"--gpus-per-worker must be >= 0, got -1"),
        (["--workers", "2"], r"--workers, --gpus-per-worker and --ray-address need --engine ray"),
        (["--engine", "ray", "--workers", "2", "--sync"], r"--sync runs in one process"),
    ],
)
def test_refusals_write_nothing(capsys, tmp_path, corpus, extra, pattern):
    db = tmp_path / "db"
    _refused(capsys, ["index", "--db", str(db), "--model", "tiny", *extra, str(corpus)], pattern)
    assert not db.exists()


@pytest.mark.parametrize("db", [":memory:", ""])
def test_in_memory_store_is_refused(capsys, corpus, db):
    _refused(capsys, ["index", "--db", db, "--engine", "ray", "--workers", "2", str(corpus)], "not an in-memory one")


def test_ray_under_a_launcher_is_refused(capsys, monkeypatch, tmp_path, corpus):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    db = tmp_path / "db"
    _refused(capsys, ["index", "--db", str(db), "--engine", "ray", str(corpus)], r"--engine ray under a launcher")
    _refused(capsys, ["index", "--db", str(db), "--sync", str(corpus)], r"--sync runs in one process")
    assert not db.exists()


def test_ray_missing_names_the_extra(capsys, monkeypatch, tmp_path, corpus):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when ray is not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'clara-plugins\[distributed\]'"):
        bulk.import_ray()
    db = tmp_path / "db"
    _refused(capsys, ["index", "--db", str(db), "--engine", "ray", str(corpus)], r"ray\[data\] is not installed")
    assert not db.exists()


def test_bad_records_fail_before_any_worker(capsys, tmp_path):
    corpus = tmp_path / "dup.jsonl"
    corpus.write_text('{"id": "a", "text": "one"}\n{"id": "a", "text": "two"}\n')
    db = tmp_path / "db"
    _refused(capsys, ["index", "--db", str(db), "--engine", "ray", "--workers", "2", str(corpus)], r"duplicate id 'a'")
    assert not db.exists()


def test_clara_error_in_a_ray_error():
    from clara_plugins.errors import ModelMismatchError, StoreError

    text = "ActorDiedError: ...\nclara_plugins.errors.ModelMismatchError: store 'clara' was built by model 'tiny'\n"
    found = bulk.clara_error_in(RuntimeError(text))
    assert isinstance(found, ModelMismatchError) and str(found) == "store 'clara' was built by model 'tiny'"
    try:
        try:
            raise StoreError("disk full")
        except StoreError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert str(bulk.clara_error_in(outer)) == "disk full"
    assert bulk.clara_error_in(RuntimeError("clara_plugins.errors.Nope: x")) is None
    assert bulk.clara_error_in(RuntimeError("a node died")) is None


def test_driver_leaves_out_only_documents_stored_whole(tiny_model, passages):
    from clara_plugins.rag import ClaraRAG

    rag = ClaraRAG(tiny_model)  # an in-memory store of its own
    records = [{"id": f"d{i}", "text": passages[i], "metadata": {}} for i in range(4)]
    assert bulk.pending_records(rag.store, records) == (records, 0)  # nothing stored yet
    rag.index(records[:3], show_progress=False)
    n_chunks = len(tiny_model.chunk(passages[1]))
    assert n_chunks > 1
    rag.store.delete(ids=[f"d1#{n_chunks - 1}"])  # d1 cut short, as by a killed worker
    changed = {**records[2], "text": passages[2] + " One more sentence."}
    todo, skipped = bulk.pending_records(rag.store, [records[0], records[1], changed, records[3]])
    assert [r["id"] for r in todo] == ["d1", "d2", "d3"] and skipped == 1  # partial, changed and new go to workers
    source = rag.store.meta["clara_model"]
    assert bulk.pending_records(rag.store, records, model=source)[1] == 2  # the store's own model: d0, d2 whole
    assert bulk.pending_records(rag.store, records, model="another/model") == (records, 0)  # workers' bind decides
