"""Exact scan over the projections of every sidecar row: the ``"pca"`` layout's candidate generator.

Why not Chroma's HNSW: on 100k chunks of the bundled tiny model, HNSW over the 256-d projections (ef_search 512,
M 32) missed 9 % of the exact top 10 while an exact scan of the same projections missed 0.05 %
(``bench/bench_store.py``); raising ef_search to 2,048 only reached 97.5 %. A scan of 100k x 256 fp32 rows is
one matrix-vector product (a few ms), so the store scans and keeps HNSW for ``where``-filtered searches only.

Files, next to the sidecar memories (same row numbers):

- ``scan_ids.jsonl``: the chunk id of each row, one JSON string per line;
- ``scan_vectors.bin``: fp16 projections ``[rows, d]`` (only candidates come from them; the final scores are exact,
  and a CPU scans fp16 rows 5x faster than fp32: 1.5 vs 7.7 ms for 100k x 256);
- ``scan.json``: ``{"rows": n, "projection": key, "dtype": "float16"}``, written last.

They are derived data. A writer appends a batch's rows here before the Chroma records exist (like the memories),
so the scan never has fewer rows than the sidecar has committed; rows past the committed count are cut off when a
store is opened. A scan built for another projection (a refit cut short), or missing (stores from before it
existed), is rebuilt from Chroma's records and the sidecar memories.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clara_plugins.errors import StoreError

logger = logging.getLogger(__name__)

_DTYPE = np.float16
_ITEM = np.dtype(_DTYPE).itemsize


class ScanIndex:
    """Row ids and projected vectors of a sidecar, searched by an exact inner-product scan.

    Args:
        folder: The sidecar's folder.
        width: Width of the projections (the store's ``ann_dim``).
    """

    def __init__(self, folder: str | Path, width: int) -> None:
        self.folder = Path(folder)
        self.width = width
        self.ids_path = self.folder / "scan_ids.jsonl"
        self.vectors_path = self.folder / "scan_vectors.bin"
        self.state_path = self.folder / "scan.json"
        self._lock = threading.RLock()
        self._state_mtime: int | None = None
        self._ids: list[str] = []
        self._ids_offset = 0  # bytes of scan_ids.jsonl read into _ids
        self._ids_inode: int | None = None
        self._vectors = None  # torch tensor over a memmap of scan_vectors.bin

    # ---- state ---------------------------------------------------------------------------------------------
    def state(self) -> dict | None:
        """``{"rows", "projection"}`` or None when there is no scan (or it is unreadable)."""
        try:
            state = json.loads(self.state_path.read_text())
            if state.get("dtype") != np.dtype(_DTYPE).name:
                return None  # written by another version: rebuilt
            return {"rows": int(state["rows"]), "projection": str(state["projection"])}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_state(self, rows: int, key: str) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"rows": rows, "projection": key, "dtype": np.dtype(_DTYPE).name}))
        os.replace(tmp, self.state_path)

    def usable(self, committed: int, key: str) -> bool:
        """Whether the files cover the ``committed`` rows for projection ``key``."""
        state = self.state()
        if state is None or state["projection"] != key or state["rows"] < committed:
            return False
        size = self.vectors_path.stat().st_size if self.vectors_path.exists() else 0
        return size >= state["rows"] * self.width * _ITEM

    # ---- writing (callers hold the sidecar's write lock) ----------------------------------------------------
    def append(self, first_row: int, ids: Sequence[str], vectors: np.ndarray, key: str) -> None:
        """Write rows ``first_row ...`` (dropping any rows at or past it from an earlier, failed batch)."""
        data = np.ascontiguousarray(vectors, dtype=_DTYPE)
        if data.shape != (len(ids), self.width):
            msg = f"scan rows must have shape [{len(ids)}, {self.width}], got {list(data.shape)}"
            raise StoreError(msg)
        state = self.state()
        if state is None or state["projection"] != key or state["rows"] < first_row:
            msg = f"scan index in {self.folder} is behind the memories; reopen the store to rebuild it"
            raise StoreError(msg)
        self.truncate(first_row)
        with open(self.vectors_path, "ab") as f:
            f.write(data.tobytes())
            f.flush()
            os.fsync(f.fileno())
        with open(self.ids_path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(i) + "\n" for i in ids))
            f.flush()
            os.fsync(f.fileno())
        self._write_state(first_row + len(ids), key)

    def truncate(self, rows: int) -> None:
        """Keep only the first ``rows`` rows (after a crash, or before overwriting a failed batch)."""
        state = self.state()
        if state is None or (state["rows"] <= rows and self._file_rows() <= rows):
            return
        with open(self.vectors_path, "r+b") as f:
            f.truncate(rows * self.width * _ITEM)
        lines = self.ids_path.read_text(encoding="utf-8").splitlines(keepends=True)[:rows]
        tmp = self.ids_path.with_suffix(".tmp")
        tmp.write_text("".join(lines), encoding="utf-8")
        os.replace(tmp, self.ids_path)
        self._write_state(min(rows, state["rows"]), state["projection"])
        self._reset()

    def _file_rows(self) -> int:
        return self.vectors_path.stat().st_size // (self.width * _ITEM) if self.vectors_path.exists() else 0

    def rebuild(self, ids_by_row: dict[int, str], n_rows: int, project, read_rows, key: str) -> None:
        """Write the whole scan again: ``project(read_rows(rows))`` for every row below ``n_rows``.

        Rows that no Chroma record points at (deleted or overwritten chunks) get the id ``""``: a scan may still
        return them, and the store then drops them as not live.
        """
        tmp_vectors = self.vectors_path.with_suffix(".next")
        with open(tmp_vectors, "wb") as f:
            for start in range(0, n_rows, 2048):
                rows = list(range(start, min(n_rows, start + 2048)))
                f.write(np.ascontiguousarray(project(read_rows(rows)), dtype=_DTYPE).tobytes())
            f.flush()
            os.fsync(f.fileno())
        tmp_ids = self.ids_path.with_suffix(".next")
        tmp_ids.write_text("".join(json.dumps(ids_by_row.get(r, "")) + "\n" for r in range(n_rows)), encoding="utf-8")
        os.replace(tmp_vectors, self.vectors_path)
        os.replace(tmp_ids, self.ids_path)
        self._write_state(n_rows, key)
        self._reset()
        logger.info("rebuilt the scan index of %s (%d rows)", self.folder, n_rows)

    def _reset(self) -> None:
        with self._lock:
            self._ids, self._ids_offset, self._vectors, self._state_mtime = [], 0, None, None
            self._ids_inode = None

    # ---- reading -------------------------------------------------------------------------------------------
    def _refresh(self, rows: int) -> None:
        """Map the vectors and read the ids of the first ``rows`` rows (new lines only, when the files grew)."""
        import torch

        mtime = self.state_path.stat().st_mtime_ns
        if mtime != self._state_mtime:
            inode = self.ids_path.stat().st_ino
            if inode != self._ids_inode:  # rewritten (truncated or rebuilt, here or in another process): read again
                self._ids, self._ids_offset, self._ids_inode = [], 0, inode
            self._vectors, self._state_mtime = None, mtime
        if len(self._ids) < rows:
            with open(self.ids_path, "rb") as f:
                f.seek(self._ids_offset)
                tail = f.read()
            complete = tail[: tail.rfind(b"\n") + 1]  # a line being written is read next time
            self._ids.extend(json.loads(line) for line in complete.decode("utf-8").splitlines())
            self._ids_offset += len(complete)
        if self._vectors is None or self._vectors.shape[0] < rows:
            n = self._file_rows()
            mapped = np.memmap(self.vectors_path, dtype=_DTYPE, mode="c", shape=(n, self.width)) if n else None
            self._vectors = torch.from_numpy(mapped) if mapped is not None else torch.zeros(0, self.width).half()

    def top_rows(self, queries: np.ndarray, rows: int, k: int) -> tuple[list[list[int]], list[list[str]]]:
        """Per query ``[B, width]``: the ``k`` rows among the first ``rows`` with the largest inner product."""
        import torch

        with self._lock:
            self._refresh(rows)
            rows = min(rows, len(self._ids), self._vectors.shape[0])
            if rows == 0:
                return [[] for _ in queries], [[] for _ in queries]
            scores = torch.from_numpy(np.ascontiguousarray(queries, dtype=_DTYPE)) @ self._vectors[:rows].T
            top = scores.topk(min(k, rows), dim=1).indices.tolist()
            return top, [[self._ids[r] for r in row] for row in top]
