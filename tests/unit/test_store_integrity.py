"""Fault injection on a real embedded Chroma store: damaged bytes raise StoreError (never other results), derived
files heal, stores from before checksums still open."""

from __future__ import annotations

import os
import sqlite3

import numpy as np
import pytest

from clara_plugins.errors import StoreError
from clara_plugins.store import ChunkRecord, ClaraStore
from clara_plugins.store.checks import text_hash

DIM, N = 256, 300


def _records(n: int) -> list[ChunkRecord]:
    texts = [f"passage number {i} about topic {i % 7}" for i in range(n)]
    return [
        ChunkRecord(f"d{i}#0", t, f"d{i}", 0, len(t), 0, 1, text_hash(t), text_hash(t)) for i, t in enumerate(texts)
    ]


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((16, DIM)).astype(np.float32)
    return rng.standard_normal((n, 16)).astype(np.float32) @ basis + 0.1 * rng.standard_normal((n, DIM)).astype(
        np.float32
    )


def _open(path, **kw) -> ClaraStore:
    store = ClaraStore(path=path, layout="pca", ann_dim=32, **kw)
    store.bind("fp-a", DIM, 4, 64, "model-a")
    return store


@pytest.fixture
def built(tmp_path):
    """``(path, memories, queries, results)``: a pca store of 300 chunks and the top-5 ids of 6 questions."""
    path = tmp_path / "db"
    x = _vectors(N)
    store = _open(path)
    store.add(_records(N), x)
    queries = x[[3, 50, 120, 199, 250, 299]] + 0.05 * _vectors(6, seed=1)
    results = [[h.id for h in row] for row in store.search(queries, 5)]
    return path, x, queries, results


def _folder(path) -> object:
    return next((path / "clara_memories").iterdir())


def _ids(store: ClaraStore, queries: np.ndarray, where=None) -> list[list[str]]:
    return [[h.id for h in row] for row in store.search(queries, 5, where=where)]


def _rows_of(store: ClaraStore, ids: list[str]) -> list[int]:
    got = store.client.get_collection("clara").get(ids=ids, include=["metadatas"])
    by_id = {cid: int(m["clara_row"]) for cid, m in zip(got["ids"], got["metadatas"])}
    return [by_id[i] for i in ids]


def test_reopened_store_gives_the_same_results(built):
    path, _, queries, results = built
    assert _ids(ClaraStore(path=path), queries) == results


def test_overwritten_memory_rows_raise_naming_file_and_rows(built):
    path, x, queries, results = built
    store = ClaraStore(path=path)
    top = sorted({cid for row in results for cid in row[:2]})
    rows = _rows_of(store, top)
    data = np.memmap(_folder(path) / "memories.bin", dtype=np.float16, mode="r+", shape=(N, DIM))
    data[rows] = np.asarray(x[: len(rows)] * 0.5, dtype=np.float16)  # other finite values
    data.flush()
    del data
    for fresh in (store, ClaraStore(path=path)):  # the open store and a reopened one
        with pytest.raises(StoreError, match=r"memories\.bin.*rows") as err:
            fresh.search(queries, 5)
        assert str(min(rows)) in str(err.value)
        with pytest.raises(StoreError, match="memories.bin"):
            fresh.get_memories(top)
    after = ClaraStore(path=path)
    assert after.count() == N and set(after.get_records([f"d{i}#0" for i in range(N)])) == {f"d{i}#0" for i in range(N)}
    assert (_folder(path) / "memories.bin").stat().st_size == N * DIM * 2  # nothing rewritten or cut
    # with verification off the damage goes through: the check is what stops it
    assert _ids(ClaraStore(path=path, verify=False), queries) != results


def test_random_bytes_in_scan_vectors_raise(built):
    path, _, queries, _ = built
    scan = _folder(path) / "scan_vectors.bin"
    size = scan.stat().st_size
    scan.write_bytes(np.random.default_rng(5).integers(0, 256, size, dtype=np.uint8).tobytes())
    store = ClaraStore(path=path)
    assert store.count() == N  # the store still opens (for clara check --repair)
    with pytest.raises(StoreError, match=r"scan_vectors\.bin"):
        store.search(queries, 5)


def test_altered_chunk_text_in_sqlite_raises(built):
    path, _, queries, results = built
    victim = results[0][0]
    store = ClaraStore(path=path)
    del store
    con = sqlite3.connect(path / "chroma.sqlite3")
    (emb_id,) = con.execute("SELECT id FROM embeddings WHERE embedding_id = ?", (victim,)).fetchone()
    (text,) = con.execute(
        "SELECT string_value FROM embedding_metadata WHERE id = ? AND key = 'chroma:document'", (emb_id,)
    ).fetchone()
    con.execute(
        "UPDATE embedding_metadata SET string_value = ? WHERE id = ? AND key = 'chroma:document'",
        (text[:5] + text[5:45][::-1] + text[45:], emb_id),
    )
    con.commit()
    con.close()
    store = ClaraStore(path=path)
    with pytest.raises(StoreError, match=rf"chroma\.sqlite3.*{victim}"):
        store.search(queries[:1], 5)
    with pytest.raises(StoreError, match="content hash"):
        store.get_records([victim])
    others = [f"d{i}#0" for i in range(N) if f"d{i}#0" != victim]
    assert store.count() == N and len(store.get_records(others)) == N - 1  # the rest is served, nothing removed
    assert [cid for cid in ClaraStore(path=path).verify().bad_texts] == [victim]


@pytest.mark.parametrize("damage", ["delete", "garble", "truncate"])
@pytest.mark.parametrize("name", ["scan_ids.jsonl", "scan_vectors.bin", "scan_vectors.crc", "scan.json"])
def test_damaged_derived_scan_files_are_rebuilt(built, name, damage):
    path, _, queries, results = built
    target = _folder(path) / name
    if damage == "delete":
        target.unlink()
    elif damage == "truncate":
        os.truncate(target, target.stat().st_size // 2)
    elif name != "scan_vectors.bin":  # garbled vectors are damage, not loss: tested above
        target.write_bytes(b"\xff\xfe garbage \x00" * 10)
    else:
        pytest.skip("random bytes in scan_vectors.bin raise (test_random_bytes_in_scan_vectors_raise)")
    assert _ids(ClaraStore(path=path), queries) == results


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_damaged_projection_is_refitted(built, damage):
    path, x, queries, _ = built
    target = _folder(path) / "projection.npz"
    target.unlink() if damage == "delete" else os.truncate(target, target.stat().st_size // 3)
    store = ClaraStore(path=path)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    for q, row in zip(queries, store.search(queries, 5)):
        exact = [f"d{i}#0" for i in np.argsort(-(xn @ (q / np.linalg.norm(q))))[:5]]
        assert [h.id for h in row] == exact
    # filtered searches (HNSW over the re-projected records) still find every record
    assert [h.id for h in store.search(x[7:8], 1, where={"clara_doc": "d7"})[0]] == ["d7#0"]


def test_store_without_checksums_still_opens_and_gets_them(built):
    path, _, queries, results = built
    folder = _folder(path)
    (folder / "memories.crc").unlink()
    (folder / "scan_vectors.crc").unlink()
    assert _ids(ClaraStore(path=path), queries) == results
    assert (folder / "memories.crc").stat().st_size == 4 * N
    assert (folder / "scan_vectors.crc").stat().st_size == 4 * N


def test_add_refuses_a_record_whose_hash_is_not_its_text_hash(tmp_path):
    from clara_plugins.errors import InputError

    store = _open(tmp_path / "db")
    rec = _records(1)[0]
    rec.hash = "not-the-hash"
    with pytest.raises(InputError, match="text_hash"):
        store.add([rec], _vectors(1))
    assert store.count() == 0


def test_verify_reports_a_clean_store_ok(built):
    path, *_ = built
    report = ClaraStore(path=path).verify()
    assert report.ok and report.records == N and report.documents == N, report.lines()


def test_verify_finds_damaged_memory_and_text_and_repairs_the_scan(built):
    path, x, queries, results = built
    folder = _folder(path)
    data = np.memmap(folder / "memories.bin", dtype=np.float16, mode="r+", shape=(N, DIM))
    data[[10, 11]] = np.asarray(x[[20, 21]], dtype=np.float16)
    data.flush()
    del data
    report = ClaraStore(path=path).verify()
    assert sorted(report.bad_memories) == ["d10#0", "d11#0"] and not report.ok
    scan = folder / "scan_vectors.bin"
    scan.write_bytes(np.random.default_rng(5).integers(0, 256, scan.stat().st_size, dtype=np.uint8).tobytes())
    data = np.memmap(folder / "memories.bin", dtype=np.float16, mode="r+", shape=(N, DIM))
    data[[10, 11]] = np.asarray(x[[10, 11]], dtype=np.float16)  # the original bytes back
    data.flush()
    del data
    store = ClaraStore(path=path)
    assert store.verify().scan_problems
    repaired = store.verify(repair=True)
    assert repaired.ok and repaired.repaired, repaired.lines()
    assert _ids(ClaraStore(path=path), queries) == results


def test_check_cli_exit_codes(built, capsys):
    from clara_plugins.cli import main

    path, *_ = built
    assert main(["check", "--db", str(path)]) == 0
    assert "OK" in capsys.readouterr().out
    scan = _folder(path) / "scan_vectors.bin"
    scan.write_bytes(np.random.default_rng(5).integers(0, 256, scan.stat().st_size, dtype=np.uint8).tobytes())
    assert main(["check", "--db", str(path)]) == 1
    assert "scan_vectors.bin" in capsys.readouterr().out
    assert main(["check", "--db", str(path), "--repair"]) == 0
    assert main(["check", "--db", str(path)]) == 0


def _close(store: ClaraStore) -> None:
    from clara_plugins.store.lock import drop_system

    drop_system(store.client)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["pca", "full"])
def test_records_lost_from_hnsw_are_found_reported_and_repaired(tmp_path, layout):
    """An HNSW segment older than the records (as a stale writer or a crash mid-persist leaves it): filtered
    searches raise instead of missing records, verify lists them, repair makes every filtered search whole."""
    import shutil

    path, hnsw = tmp_path / "db", {"sync_threshold": 100, "batch_size": 100}
    x = _vectors(400)
    recs = _records(400)
    store = ClaraStore(path=path, layout=layout, ann_dim=32, hnsw=hnsw)
    store.bind("fp-a", DIM, 4, 64, "model-a")
    store.add(recs[:200], x[:200])
    _close(store)
    (segment,) = [d for d in path.iterdir() if d.is_dir() and d.name != "clara_memories"]
    shutil.copytree(segment, tmp_path / "old-segment")
    store = ClaraStore(path=path)
    store.add(recs[200:], x[200:])
    _close(store)
    shutil.rmtree(segment)
    shutil.copytree(tmp_path / "old-segment", segment)

    store = ClaraStore(path=path)
    report = store.verify()
    lost = report.not_in_hnsw
    assert lost and set(lost) <= {r.id for r in recs[200:]} and not report.ok
    doc = lost[0].split("#")[0]
    with pytest.raises(StoreError):  # never a silently short result
        store.search(x[:1], 5, where={"clara_doc": doc})
    repaired = store.verify(repair=True)
    assert repaired.ok, repaired.lines()
    _close(store)
    store = ClaraStore(path=path)
    if layout == "pca":  # the vectors are projections of the sidecar memories: every record is back
        assert store.count() == 400
        for r in recs[::7]:
            assert [h.id for h in store.search(x[:1], 5, where={"clara_doc": r.doc_id})[0]] == [r.id]
    else:  # the vector was the memory and only HNSW had it: those chunks are deleted for a re-index
        assert store.count() == 400 - len(lost)
        assert store.get_records(lost) == {} and store.verify().ok
