"""ClaraStore on a real embedded Chroma, with synthetic memories (no model needed)."""

from __future__ import annotations

import json

import chromadb
import numpy as np
import pytest

from clara_plugins.errors import InputError, ModelMismatchError, StoreError
from clara_plugins.store import ChunkRecord, ClaraStore, validate_metadata
from clara_plugins.store.checks import text_hash

DIM, N_MEM, HIDDEN = 256, 4, 64


def _records(n: int, doc: str = "d", offset: int = 0, meta: dict | None = None) -> list[ChunkRecord]:
    return [
        ChunkRecord(
            id=f"{doc}{offset + i}#0",
            text=f"text {offset + i}",
            doc_id=f"{doc}{offset + i}",
            start=0,
            end=6,
            index=0,
            n_chunks=1,
            doc_hash=f"h{offset + i}",
            hash=text_hash(f"text {offset + i}"),
            metadata=dict(meta or {}),
        )
        for i in range(n)
    ]


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((16, DIM)).astype(np.float32)  # low-rank structure plus noise, like real memories
    return rng.standard_normal((n, 16)).astype(np.float32) @ basis + 0.1 * rng.standard_normal((n, DIM)).astype(
        np.float32
    )


def _exact_top(q: np.ndarray, x: np.ndarray, k: int) -> list[int]:
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    return list(np.argsort(-(xn @ (q / np.linalg.norm(q))))[:k])


def _open(tmp_path, **kw) -> ClaraStore:
    store = ClaraStore(path=tmp_path / "db", **kw)
    store.bind("fp-a", DIM, N_MEM, HIDDEN, "model-a")
    return store


@pytest.mark.parametrize("layout", ["full", "pca"])
def test_search_ranks_like_exact_cosine(tmp_path, layout):
    store = _open(tmp_path, layout=layout, ann_dim=32)
    x = _vectors(300)
    store.add(_records(300), x)
    assert store.layout == layout
    assert store.count() == 300
    rng = np.random.default_rng(1)
    for qi in range(5):
        q = x[qi * 7] + 0.2 * rng.standard_normal(DIM).astype(np.float32)
        hits = store.search(q[None], k=5)[0]
        assert [int(h.doc_id[1:]) for h in hits] == _exact_top(q, x, 5)
        exact = float(x[int(hits[0].doc_id[1:])] @ q / np.linalg.norm(x[int(hits[0].doc_id[1:])]) / np.linalg.norm(q))
        assert hits[0].score == pytest.approx(exact, abs=2e-3)  # fp16 rows in the pca layout


@pytest.mark.parametrize("layout", ["full", "pca"])
def test_memories_round_trip_and_records(tmp_path, layout):
    store = _open(tmp_path, layout=layout, ann_dim=32)
    x = _vectors(20)
    store.add(_records(20, meta={"lang": "en"}), x)
    got = store.get_memories(["d3#0", "d0#0"])
    tol = 1e-2 if layout == "pca" else 1e-6
    np.testing.assert_allclose(got, x[[3, 0]], rtol=tol, atol=tol)
    hit = store.get_records(["d3#0"])["d3#0"]
    assert (hit.text, hit.doc_id, hit.metadata) == ("text 3", "d3", {"lang": "en"})
    assert set(store.memories_by_hash([text_hash("text 5"), "nope"])) == {text_hash("text 5")}
    with pytest.raises(StoreError, match="not in the store"):
        store.get_memories(["missing#0"])


def test_writes_are_batched_within_client_limit(tmp_path):
    store = _open(tmp_path)
    store.max_batch = 7  # a server with a small max batch size
    store.add(_records(30), _vectors(30))
    assert store.count() == 30
    assert store.doc_status(["d0", "d29", "zz"]) == {"d0": ("h0", 1, 1), "d29": ("h29", 1, 1)}


def test_model_mismatch_names_both_models(tmp_path):
    store = _open(tmp_path)
    store.add(_records(3), _vectors(3))
    other = ClaraStore(path=tmp_path / "db")
    with pytest.raises(ModelMismatchError, match=r"model-a.*model-b"):
        other.bind("fp-b", DIM, N_MEM, HIDDEN, "model-b")
    assert other.count() == 3


def test_metadata_validation():
    assert validate_metadata({"a": 1, "b": "x", "c": True, "d": 0.5, "e": ["x", "y"]}, "text 0")["a"] == 1
    assert validate_metadata(None, "text 0") == {}
    for bad, pattern in [
        ({"a": {"nested": 1}}, "not accepted by Chroma"),
        ({"clara_doc": "x"}, "reserved prefix"),
        ({"a": None}, "cannot store"),
        ([("a", 1)], "must be a dict"),
    ]:
        with pytest.raises(InputError, match=pattern):
            validate_metadata(bad, "text 3")


def test_search_where_filter_and_delete(tmp_path):
    store = _open(tmp_path)
    x = _vectors(10)
    store.add(_records(5, meta={"lang": "en"}), x[:5])
    store.add(_records(5, offset=5, meta={"lang": "fr"}), x[5:])
    hits = store.search(x[7][None], k=10, where={"lang": "fr"})[0]
    assert {h.metadata["lang"] for h in hits} == {"fr"} and len(hits) == 5
    store.delete(ids=["d0#0"], doc_ids=["d1", "d2"])
    assert store.count() == 7


def test_empty_store_search_and_missing_store(tmp_path):
    store = _open(tmp_path)
    assert store.search(_vectors(1), k=3) == [[]]
    with pytest.raises(InputError, match="query width"):
        store.search(np.zeros((1, 10), dtype=np.float32), k=3)
    missing = ClaraStore(path=tmp_path / "other")
    with pytest.raises(StoreError, match="clara index"):
        missing.count()


def test_pca_recovers_after_crash_before_chroma_write(tmp_path):
    store = _open(tmp_path, layout="pca", ann_dim=32)
    store.add(_records(10), _vectors(10))
    side = store._layout_of().sidecar
    side.append(_vectors(5, seed=3))  # rows written, process "dies" before the Chroma records exist
    with open(side.data_path, "ab") as f:
        f.write(b"\x00" * 7)  # and a half-written row
    reopened = _open(tmp_path)
    assert reopened._layout_of().sidecar.file_rows() == 10 == reopened._layout_of().sidecar.committed
    reopened.add(_records(2, offset=10), _vectors(2, seed=4))
    assert reopened.count() == 12
    np.testing.assert_allclose(reopened.get_memories(["d11#0"]), _vectors(2, seed=4)[1:], atol=1e-2)


def test_pca_recovers_after_crash_before_commit(tmp_path):
    store = _open(tmp_path, layout="pca", ann_dim=32)
    store.add(_records(10), _vectors(10))
    state = json.loads(store._layout_of().sidecar.state_path.read_text())
    store.add(_records(4, offset=10), _vectors(4, seed=2))
    store._layout_of().sidecar.state_path.write_text(json.dumps(state))  # Chroma has the rows, the commit was lost
    reopened = _open(tmp_path)
    assert reopened._layout_of().sidecar.committed == 14
    np.testing.assert_allclose(reopened.get_memories(["d13#0"]), _vectors(4, seed=2)[3:], atol=1e-2)


def test_damaged_pca_store_is_reported(tmp_path):
    store = _open(tmp_path, layout="pca", ann_dim=32)
    store.add(_records(10), _vectors(10))
    store._layout_of().sidecar.data_path.write_bytes(b"")
    with pytest.raises(StoreError, match="damaged"):
        _open(tmp_path).count()


def test_pca_layout_needs_a_local_client():
    store = ClaraStore(client=chromadb.EphemeralClient(), collection="eph-pca", layout="pca")
    with pytest.raises(StoreError, match="PersistentClient"):
        store.bind("fp", DIM, N_MEM, HIDDEN, "m")


def test_foreign_collection_is_refused(tmp_path):
    client = chromadb.PersistentClient(path=str(tmp_path / "db"))
    client.create_collection("clara", embedding_function=None)
    with pytest.raises(StoreError, match="not made by clara-plugins"):
        ClaraStore(client=client).exists()


def test_pca_projection_is_refitted_as_the_store_grows(tmp_path):
    store = _open(tmp_path, layout="pca", ann_dim=32, candidates=20)
    x = _vectors(200)
    for start in range(0, 200, 10):  # small batches: the first fit sees only 10 chunks
        store.add(_records(10, offset=start), x[start : start + 10])
    assert store._layout_of().projection().fit_rows >= 100
    rng = np.random.default_rng(5)
    for qi in range(5):
        q = x[qi * 11] + 0.2 * rng.standard_normal(DIM).astype(np.float32)
        assert [int(h.doc_id[1:]) for h in store.search(q[None], k=5)[0]] == _exact_top(q, x, 5)


def test_pca_interrupted_refit_is_finished_on_open(tmp_path):
    from clara_plugins.store.projection import Projection

    store = _open(tmp_path, layout="pca", ann_dim=32)
    x = _vectors(50)
    store.add(_records(50), x)
    folder = store._layout_of().sidecar.folder
    Projection.fit(x[:5], 32).save(folder / "projection.next.npz")  # the process died inside a refit
    reopened = _open(tmp_path)
    assert not (folder / "projection.next.npz").exists()
    assert reopened._layout_of().projection().fit_rows == 5
    assert len(reopened.search(x[:1], k=3)[0]) == 3


def test_damaged_chroma_folder_is_a_store_error(tmp_path):
    folder = tmp_path / "db"
    folder.mkdir()
    (folder / "chroma.sqlite3").write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match="damaged"):
        ClaraStore(path=folder)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        ClaraStore(path=tmp_path / "file")


def test_augmented_projection_turns_inner_product_into_cosine():
    """Every indexed document has norm R, so cosine ranking of [z, r] equals inner-product ranking of z."""
    from clara_plugins.store.projection import Projection

    x = _vectors(400, seed=3)
    proj = Projection.fit(x, 32, augment=True)
    docs, plain = proj.docs(x), Projection(proj.mean, proj.basis, proj.fit_rows).docs(x)
    assert docs.shape == (400, 33) and proj.width == 33
    np.testing.assert_allclose(np.linalg.norm(docs, axis=1), Projection.RADIUS, rtol=1e-5)
    q = proj.queries(x[:5] + 0.3)
    assert np.all(q[:, -1] == 0)
    cosine = (q @ docs.T) / np.linalg.norm(docs, axis=1)
    for row_cos, row_ip in zip(cosine, q[:, :-1] @ plain.T):
        assert list(np.argsort(-row_cos)[:10]) == list(np.argsort(-row_ip)[:10])


def test_format_1_projection_without_augmentation_still_loads(tmp_path):
    from clara_plugins.store.projection import Projection

    x = _vectors(50)
    old = Projection.fit(x, 16, augment=False)
    path = tmp_path / "projection.npz"
    np.savez(path, mean=old.mean, basis=old.basis, fit_rows=np.array(old.fit_rows))  # what format 1 wrote
    loaded = Projection.load(path)
    assert not loaded.augment and loaded.docs(x).shape == (50, 16)


def test_refit_pages_through_every_record(tmp_path, monkeypatch):
    """Re-projection reads the records page by page (one get of 100k records exceeds SQLite's variable limit)."""
    import clara_plugins.store.chroma as chroma_module

    store = _open(tmp_path, layout="pca", ann_dim=32)
    x = _vectors(60)
    store.add(_records(60), x)
    monkeypatch.setattr(chroma_module, "GET_BATCH", 7)
    col = store._collection()
    with store._layout_of().sidecar.write_lock():
        store._layout_of()._refit()
    proj = store._layout_of().projection()
    got = col.get(ids=[f"d{i}#0" for i in range(60)], include=["embeddings"])
    expected = proj.docs(store.get_memories(got["ids"]))
    np.testing.assert_allclose(np.asarray(got["embeddings"]), expected, atol=1e-5)


def _ids(hits) -> list[str]:
    return [h.id for h in hits]


def test_pca_search_scans_exactly_and_skips_stale_rows(tmp_path):
    """Search scans the projections of every row; deleted and overwritten chunks' old rows are never returned."""
    store = _open(tmp_path, layout="pca", ann_dim=32)
    x = _vectors(120)
    store.add(_records(120), x)
    assert store._layout_of().scan is not None and store._layout_of().scan.state()["rows"] == 120
    q = x[3]
    assert _ids(store.search(q[None], k=1)[0]) == ["d3#0"]
    store.delete(ids=["d3#0"])
    assert "d3#0" not in _ids(store.search(q[None], k=5)[0])
    store.add(_records(1, offset=7), x[50:51])  # chunk d7 now holds the memory of d50
    hits = store.search(x[50][None], k=2)[0]
    assert sorted(_ids(hits)) == ["d50#0", "d7#0"] and len(set(_ids(hits))) == 2
    assert "d7#0" not in _ids(store.search(x[7][None], k=1)[0])  # its old row is stale


def test_pca_scan_is_rebuilt_when_missing_and_cut_after_a_crash(tmp_path):
    store = _open(tmp_path, layout="pca", ann_dim=32)
    x = _vectors(80)
    store.add(_records(80), x)
    folder = store._layout_of().sidecar.folder
    expected = [_ids(store.search(x[i][None], k=3)[0]) for i in range(5)]
    for name in ("scan.json", "scan_ids.jsonl", "scan_vectors.bin"):  # a store from before the scan existed
        (folder / name).unlink()
    reopened = _open(tmp_path)
    assert [_ids(reopened.search(x[i][None], k=3)[0]) for i in range(5)] == expected
    # a batch whose scan rows were written but whose Chroma records never were (killed in between)
    scan = reopened._layout_of().scan
    scan.append(80, ["ghost#0"], np.zeros((1, 32), dtype=np.float32), reopened._layout_of().projection().key)
    assert scan.state()["rows"] == 81
    again = _open(tmp_path)
    assert again._layout_of().scan.state()["rows"] == 80
    assert [_ids(again.search(x[i][None], k=3)[0]) for i in range(5)] == expected


def test_pca_search_falls_back_to_hnsw_when_most_scanned_rows_are_stale(tmp_path):
    store = _open(tmp_path, layout="pca", ann_dim=32, candidates=20)
    x = _vectors(100)
    store.add(_records(100), x)
    store.delete(ids=[f"d{i}#0" for i in range(95)])
    hits = store.search(x[97][None], k=3)[0]
    assert _ids(hits)[0] == "d97#0" and set(_ids(hits)) <= {f"d{i}#0" for i in range(95, 100)}


def test_pca_reader_in_another_process_sees_a_rebuilt_scan(tmp_path):
    """A second store object (as in another process) re-reads the scan ids after a refit rewrote them."""
    writer = _open(tmp_path, layout="pca", ann_dim=32)
    x = _vectors(90)
    writer.add(_records(40), x[:40])
    reader = _open(tmp_path)
    assert _ids(reader.search(x[5][None], k=1)[0]) == ["d5#0"]
    writer.delete(ids=["d5#0"])
    writer.add(_records(50, offset=40), x[40:90])  # doubles the store: refit, scan rebuilt with "" for row 5
    assert writer._layout_of().projection().fit_rows > 40
    for i in (7, 45, 88):
        assert _ids(reader.search(x[i][None], k=1)[0]) == [f"d{i}#0"]


def test_pca_store_opened_empty_uses_rows_another_process_added(tmp_path):
    early = _open(tmp_path, layout="pca", ann_dim=32)
    assert early.count() == 0 and early._layout_of().scan is None
    other = _open(tmp_path)
    x = _vectors(30)
    other.add(_records(30), x)
    assert _ids(early.search(x[4][None], k=1)[0]) == ["d4#0"]
    early.add(_records(5, offset=30), _vectors(5, seed=9))
    assert early.count() == 35 and early._layout_of().scan.state()["rows"] == 35


def test_pca_search_uses_hnsw_while_the_scan_is_rebuilt_for_a_new_projection(tmp_path):
    store = _open(tmp_path, layout="pca", ann_dim=32)
    x = _vectors(60)
    store.add(_records(60), x)
    pca = store._layout_of()
    state = pca.scan.state()
    pca.scan._write_state(state["rows"], "another-projection")  # the moment between projection and scan swap
    assert pca._scan_candidates(store._collection(), x[:1], pca.projection(), 20) == [None]
    assert _ids(store.search(x[9][None], k=1)[0]) == ["d9#0"]
