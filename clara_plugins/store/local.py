"""The ``pca`` layout: wide memories on one machine.

Full memories live as fp16 (or int8) rows in an append-only memory-mapped sidecar file next to the local Chroma
folder (``sidecar.py``); a search scans the 256-d principal-component projections of every row exactly
(``scan.py``) and re-ranks the top candidates by exact fp32 cosine over the sidecar memories. Chroma indexes the
same projections (augmented, cosine space: ``projection.py``) for ``where``-filtered searches. The projection is
refitted on a sample each time the store doubles, up to ``REFIT_MAX_ROWS`` chunks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clara_plugins.errors import StoreError
from clara_plugins.store.chroma import get_by_ids, pages
from clara_plugins.store.layout import Candidate, live_candidates, rerank, with_hnsw_fallback
from clara_plugins.store.projection import Projection, torch_float
from clara_plugins.store.records import ANN_DIM, FORMAT, HIDDEN_SIZE, MEMORY_DIM, MEMORY_DTYPE, ROW, ChunkRecord
from clara_plugins.store.scan import ScanIndex
from clara_plugins.store.sidecar import SidecarMemories
from clara_plugins.store.verify import complete_filtered

logger = logging.getLogger(__name__)

# the projection is refitted (on a sample of at most this many chunks) each time the store doubles past it
REFIT_MAX_ROWS = 2048


class PcaLayout:
    """Memories in a local sidecar file, an exact scan of their projections, projections in Chroma.

    Args:
        store: The ``ClaraStore`` (its write lock, ``verify_reads``, folder and candidate count).
        col: The Chroma collection.
    """

    name = "pca"

    def __init__(self, store: Any, col: Any) -> None:
        self.store, self.col = store, col
        self.sidecar: SidecarMemories | None = None
        self.scan: ScanIndex | None = None
        self._projection: Projection | None = None
        self._projection_mtime = 0

    @property
    def folder(self) -> Path:
        """The sidecar folder of the collection."""
        return self.store.local_folder / "clara_memories" / str(self.col.id)

    # ------------------------------------------------------------------ opening
    def open(self) -> None:
        """Open the sidecar, finish an interrupted refit, heal a lost projection and open the scan."""
        meta, folder = self.col.metadata, self.folder
        with self.store._writing(bump=False):
            dim, dtype = int(meta[MEMORY_DIM]), meta[MEMORY_DTYPE]
            group = int(meta[HIDDEN_SIZE]) if dtype == "int8" else None  # one scale per memory vector
            self.sidecar = SidecarMemories(folder, dim, dtype, group=group)
            self.sidecar.verify = self.store.verify_reads
            self.sidecar.recover(self._referenced_end)
            augment = int(meta.get(FORMAT, 1)) >= 2
            nxt = folder / "projection.next.npz"
            if nxt.exists():  # a refit was cut short: finish it (or redo it when its file is damaged)
                proj = _try_load(nxt)
                with self.store._writing(), self.sidecar.write_lock():
                    if proj is not None:
                        self._apply_projection(proj)
                    else:
                        nxt.unlink()
                        self._refit(augment=augment)
            if _try_load(folder / "projection.npz") is None and self.sidecar.committed > 0:
                logger.warning("projection file of %s is missing or damaged: refitting it from the memories", folder)
                with self.store._writing(), self.sidecar.write_lock():
                    self._refit(augment=augment)
            if (folder / "projection.npz").exists():
                try:
                    self.open_scan(self.projection())
                except StoreError as err:  # damaged scan rows: searches raise it; verify/repair can still open
                    logger.error("%s", err)

    def open_scan(self, projection: Projection) -> None:
        """Open the exact-scan index, cutting rows of an unfinished batch or rebuilding it when it is stale."""
        assert self.sidecar is not None
        scan = ScanIndex(self.sidecar.folder, projection.basis.shape[1])
        scan.verify = self.store.verify_reads
        with self.sidecar.write_lock():
            committed = self.sidecar.refresh_committed()  # another process may have committed rows since we opened
            if scan.usable(committed, projection.key):
                scan.truncate(committed)
            else:
                self.rebuild_scan(scan, projection, self.rows_to_ids())
        self.scan = scan

    def rows_to_ids(self) -> dict[int, str]:
        """Sidecar row -> chunk id of every Chroma record."""
        return {
            int(m[ROW]): cid for res in pages(self.col, ["metadatas"]) for cid, m in zip(res["ids"], res["metadatas"])
        }

    def rebuild_scan(self, scan: ScanIndex, projection: Projection, ids_by_row: dict[int, str]) -> None:
        """Write the scan files again from the memories."""
        assert self.sidecar is not None
        scan.rebuild(ids_by_row, self.sidecar.committed, projection.project, self.sidecar.read, projection.key)

    def projection(self) -> Projection:
        """The projection in use, reloaded when another process refitted it."""
        path = self.folder / "projection.npz"
        mtime = path.stat().st_mtime_ns
        if self._projection is None or mtime != self._projection_mtime:
            self._projection, self._projection_mtime = Projection.load(path), mtime
        return self._projection

    def _refit(self, augment: bool | None = None) -> None:
        """Fit the projection again on a sample of all stored memories and re-project every record."""
        assert self.sidecar is not None
        n = self.sidecar.committed
        rows = np.sort(np.random.default_rng(0).choice(n, size=min(n, REFIT_MAX_ROWS), replace=False))
        augment = self.projection().augment if augment is None else augment
        proj = Projection.fit(self.sidecar.read(rows), int(self.col.metadata[ANN_DIM]), augment=augment)
        proj.save(self.folder / "projection.next.npz")
        self._apply_projection(proj)

    def _apply_projection(self, proj: Projection) -> None:
        """Re-project every record with ``proj``, then make it the current projection (call under write lock)."""
        assert self.sidecar is not None
        ids_by_row: dict[int, str] = {}
        for res in pages(self.col, ["metadatas"]):
            rows = [int(m[ROW]) for m in res["metadatas"]]
            self.col.update(ids=res["ids"], embeddings=proj.docs(self.sidecar.read(rows)))
            ids_by_row.update(zip(rows, res["ids"]))
        # the new projection takes over first: until the scan is rebuilt for it, searches see the key mismatch and
        # use HNSW (already re-projected); during the long update loop above the old scan and projection still agree
        os.replace(self.folder / "projection.next.npz", self.folder / "projection.npz")
        self.projection()
        scan = self.scan or ScanIndex(self.sidecar.folder, proj.basis.shape[1])
        scan.verify = self.store.verify_reads
        self.rebuild_scan(scan, proj, ids_by_row)
        self.scan = scan
        logger.info("re-projected %d chunks on a projection fitted to %d", len(ids_by_row), proj.fit_rows)

    def _referenced_end(self, committed: int) -> int:
        res = self.col.get(where={ROW: {"$gte": committed}}, include=["metadatas"])
        rows = [int(m[ROW]) for m in res["metadatas"] or []]
        return max(rows) + 1 if rows else committed

    # ------------------------------------------------------------------ the layout protocol
    def add(self, col: Any, records: Sequence[ChunkRecord], memories: np.ndarray, metas: list[dict]) -> None:
        """Append the memories to the sidecar and the scan, then upsert the records pointing at their rows."""
        sidecar = self.sidecar
        assert sidecar is not None
        with sidecar.write_lock():
            path = self.folder / "projection.npz"
            if not path.exists():
                Projection.fit(memories, int(col.metadata[ANN_DIM])).save(path)
            projection = self.projection()
            if self.scan is None:  # a new store, or one that another process started after we opened it
                self.open_scan(projection)
            first = sidecar.append(memories)
            assert self.scan is not None
            self.scan.append(first, [r.id for r in records], projection.project(memories), projection.key)
            col.upsert(
                ids=[r.id for r in records],
                embeddings=projection.docs(memories),
                documents=[r.text for r in records],
                metadatas=[{**m, ROW: first + i} for i, m in enumerate(metas)],
            )
            sidecar.commit(first + len(records))
            if projection.fit_rows < min(REFIT_MAX_ROWS, sidecar.committed // 2):
                self._refit()

    def memories(self, col: Any, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Sidecar rows of the records, as float32."""
        assert self.sidecar is not None
        found = get_by_ids(col, ids, ["metadatas"])
        if not found:
            return {}
        mems = self.sidecar.read([int(meta[ROW]) for (meta,) in found.values()])
        return {cid: mems[i] for i, cid in enumerate(found)}

    def search(self, col: Any, queries: np.ndarray, k: int, where: dict | None) -> list[list[Candidate]]:
        """Candidates from the exact scan (HNSW with a ``where`` filter), then exact fp32 cosine of their memories."""
        assert self.sidecar is not None
        projection = self.projection()
        n_cand = max(self.store.candidates, 4 * k)
        if self.scan is None:  # opened while empty; another process has added chunks since
            self.open_scan(projection)
        if where is None and self.scan is not None:
            candidates = with_hnsw_fallback(
                self._scan_candidates(col, queries, projection, n_cand),
                lambda idx: self._ann_candidates(col, queries[idx], projection, n_cand, None),
            )
        else:
            candidates = self._ann_candidates(col, queries, projection, n_cand, where)
        out = []
        for qi, cands in enumerate(candidates):
            rows = [int(meta[ROW]) for _, meta, _ in cands]
            mems = torch_float(self.sidecar.read_values(rows)) if cands else None  # (C, D)
            out.append(rerank(cands, mems, queries[qi], k))
        return out

    def _scan_candidates(self, col: Any, q: np.ndarray, projection: Projection, n_cand: int) -> list[list | None]:
        """Per question the live ``(id, metadata, text)`` of the exact scan's top rows; None when too few are live."""
        assert self.sidecar is not None and self.scan is not None
        state = self.scan.state()
        if state is None or state["projection"] != projection.key:  # a refit is rebuilding the scan right now
            return [None] * len(q)
        committed = self.sidecar.refresh_committed()
        rows, ids = self.scan.top_rows(projection.project_queries(q), committed, n_cand)
        tops = [list(zip(row_ids, row_rows)) for row_ids, row_rows in zip(ids, rows)]
        return live_candidates(col, tops, lambda meta, row: int(meta[ROW]) == row, n_cand)

    def _ann_candidates(
        self, col: Any, q: np.ndarray, projection: Projection, n_cand: int, where: dict | None
    ) -> list[list]:
        """Per question ``(id, metadata, None)`` of Chroma's HNSW top candidates over the projections."""
        return ann_candidates(col, projection.queries(q), n_cand, where, self.store.where)

    def index_width(self, col: Any) -> int:
        """The augmented projection's width."""
        return int(col.metadata[ANN_DIM]) + 1

    def bad_memories(self, records: dict[str, tuple[dict, str | None]]) -> list[str]:
        """Records whose sidecar row is missing or fails its CRC."""
        sidecar = self.sidecar
        assert sidecar is not None
        row_of = {cid: int(meta[ROW]) for cid, (meta, _) in records.items()}
        ids, bad = list(row_of), []
        for start in range(0, len(ids), 4096):
            part = ids[start : start + 4096]
            rows = np.asarray([row_of[c] for c in part], dtype=np.int64)
            try:
                data = sidecar._read_unchecked(rows)
            except StoreError:
                bad += [c for c in part if row_of[c] >= sidecar.file_rows()]
                continue
            bad_rows = set(sidecar.crc.bad_rows(rows, data))
            bad += [c for c in part if row_of[c] in bad_rows]
        return bad

    def scan_problems(self, records: dict[str, tuple[dict, str | None]]) -> list[str]:
        """Problems of the exact scan: unreadable, rows failing their CRC, rows not holding their record's id."""
        try:
            self.open_scan(self.projection())
            scan = self.scan
            assert scan is not None and self.sidecar is not None
            with scan._lock:
                scan._reset()
                scan._refresh(self.sidecar.committed)
                ids = list(scan._ids)
        except StoreError as err:
            return [str(err)]
        wrong = [cid for cid, (meta, _) in records.items() if int(meta[ROW]) >= len(ids) or ids[int(meta[ROW])] != cid]
        return [f"{len(wrong)} record(s) not at their row of the scan: {wrong[:10]}"] if wrong else []

    def repair_scan(self, records: dict[str, tuple[dict, str | None]]) -> str:
        """Rebuild the scan files from the sidecar memories and Chroma's records (call under the write lock)."""
        assert self.sidecar is not None
        proj = self.projection()
        scan = ScanIndex(self.folder, proj.basis.shape[1])
        with self.sidecar.write_lock():
            self.rebuild_scan(scan, proj, self.rows_to_ids())
        self.scan = scan
        return f"rebuilt the scan files ({self.sidecar.committed} rows)"

    def index_vectors(self, metas: list[dict]) -> np.ndarray | None:
        """Projections of the records' sidecar memories."""
        assert self.sidecar is not None
        return self.projection().docs(self.sidecar.read([int(m[ROW]) for m in metas]))


def ann_candidates(col: Any, vectors: np.ndarray, n_cand: int, where: dict | None, store_where: str) -> list[list]:
    """Per query ``(id, metadata, None)`` of Chroma's HNSW top ``n_cand`` over projected vectors."""
    res = col.query(query_embeddings=vectors, n_results=n_cand, where=where, include=["metadatas"])
    complete_filtered(col, vectors, res, n_cand, where, store_where)
    return [[(c, meta, None) for c, meta in zip(ids, metas)] for ids, metas in zip(res["ids"], res["metadatas"])]


def _try_load(path: Path) -> Projection | None:
    """The projection at ``path``, or None when it is missing or damaged."""
    try:
        return Projection.load(path)
    except (StoreError, OSError):
        return None
