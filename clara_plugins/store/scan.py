"""Exact scan over the projections of every sidecar row: the ``"pca"`` layout's candidate generator.

Why not Chroma's HNSW: on 100k chunks of the bundled tiny model, HNSW over the 256-d projections (ef_search 512,
M 32) missed 9 % of the exact top 10 while an exact scan of the same projections missed 0.05 %
(``bench/bench_store.py``); raising ef_search to 2,048 only reached 97.5 %. A scan of 100k x 256 fp32 rows is
one matrix-vector product (a few ms), so the store scans and keeps HNSW for ``where``-filtered searches only.

Files, next to the sidecar memories (same row numbers):

- ``scan_ids.jsonl``: the chunk id of each row, one JSON string per line;
- ``scan_vectors.bin``: fp16 projections ``[rows, d]`` (only candidates come from them; the final scores are exact,
  and a CPU scans fp16 rows 5x faster than fp32: 1.5 vs 7.7 ms for 100k x 256);
- ``scan_vectors.crc``: a CRC-32 per row of ``scan_vectors.bin`` (``checks.py``), checked when rows are loaded;
- ``scan.json``: ``{"rows": n, "projection": key, "dtype": "float16"}``, written last.

They are derived data. A writer appends a batch's rows here before the Chroma records exist (like the memories),
so the scan never has fewer rows than the sidecar has committed; rows past the committed count are cut off when a
store is opened. A scan built for another projection (a refit cut short), or missing (stores from before it
existed), is rebuilt from Chroma's records and the sidecar memories; so are missing, short or unreadable id or
checksum files. Vector rows that fail their checksum are a ``StoreError`` (the bytes changed after they were
written: ``clara check --repair`` rebuilds the scan), never a different ranking.
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
from clara_plugins.store.checks import RowChecksums, row_crcs

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
        self.crc = RowChecksums(self.folder / "scan_vectors.crc", self.vectors_path)
        self.verify = True
        self._lock = threading.RLock()
        self._state_mtime: int | None = None
        self._ids: list[str] = []
        self._ids_offset = 0  # bytes of scan_ids.jsonl read into _ids
        self._ids_inode: int | None = None
        self._vectors = None  # torch tensor of the checked rows of scan_vectors.bin

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
        """Whether the files cover the ``committed`` rows for projection ``key`` (ids readable, checksums present).

        Raises:
            StoreError: vector rows fail their checksum.
        """
        state = self.state()
        if state is None or state["projection"] != key or state["rows"] < committed:
            return False
        size = self.vectors_path.stat().st_size if self.vectors_path.exists() else 0
        if size < state["rows"] * self.width * _ITEM or self.crc.rows() < committed:
            return False
        try:
            with self._lock:
                self._reset()
                self._refresh(committed)
                return len(self._ids) >= committed and self._vectors.shape[0] >= committed
        except OSError as err:
            logger.warning("scan file unreadable (%s); rebuilding the scan", err)
            return False
        except StoreError as err:
            if "ids file" in str(err):
                logger.warning("%s; rebuilding the scan", err)
                return False
            raise

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
        self.crc.append(first_row, row_crcs(data))
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
        self.crc.truncate(rows)
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
        crcs = []
        with open(tmp_vectors, "wb") as f:
            for start in range(0, n_rows, 2048):
                rows = list(range(start, min(n_rows, start + 2048)))
                block = np.ascontiguousarray(project(read_rows(rows)), dtype=_DTYPE)
                f.write(block.tobytes())
                crcs.append(row_crcs(block))
            f.flush()
            os.fsync(f.fileno())
        self.crc.write_all(np.concatenate(crcs) if crcs else np.zeros(0, dtype=np.uint32))
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
        """Load the ids and the checked vectors of the first ``rows`` rows (new rows only, when the files grew)."""
        mtime = self.state_path.stat().st_mtime_ns
        if mtime != self._state_mtime:
            inode = self.ids_path.stat().st_ino
            if inode != self._ids_inode:  # rewritten (truncated or rebuilt, here or in another process): read again
                self._ids, self._ids_offset, self._ids_inode = [], 0, inode
                self._vectors = None
            self._state_mtime = mtime
        if len(self._ids) < rows:
            self._read_ids()
        if self._vectors is None or self._vectors.shape[0] < rows:
            self._load_vectors()

    def _read_ids(self) -> None:
        with open(self.ids_path, "rb") as f:
            f.seek(self._ids_offset)
            tail = f.read()
        complete = tail[: tail.rfind(b"\n") + 1]  # a line being written is read next time
        try:
            new = [json.loads(line) for line in complete.decode("utf-8").splitlines()]
        except ValueError as err:  # UnicodeDecodeError, JSONDecodeError
            msg = f"scan ids file {self.ids_path} is unreadable ({err}); reopen the store or run `clara check --repair`"
            raise StoreError(msg) from err
        if not all(isinstance(i, str) for i in new):
            msg = f"scan ids file {self.ids_path} holds non-string ids; reopen the store or run `clara check --repair`"
            raise StoreError(msg)
        self._ids.extend(new)
        self._ids_offset += len(complete)

    def _load_vectors(self) -> None:
        """Read the rows added since the last load, check them against their CRCs, keep them in memory."""
        import torch

        if self._vectors is None:
            self._vectors = torch.zeros(0, self.width, dtype=torch.float16)
        have = self._vectors.shape[0]
        n = min(self._file_rows(), self.crc.rows()) if self.verify else self._file_rows()
        if n <= have:
            return
        with open(self.vectors_path, "rb") as f:
            f.seek(have * self.width * _ITEM)
            new = np.fromfile(f, dtype=_DTYPE, count=(n - have) * self.width).reshape(-1, self.width)
        if self.verify:
            self.crc.check(np.arange(have, have + len(new)), new)
        self._vectors = torch.cat([self._vectors, torch.from_numpy(new)])

    def top_rows(self, queries: np.ndarray, rows: int, k: int) -> tuple[list[list[int]], list[list[str]]]:
        """Per query ``[B, width]``: the ``k`` rows among the first ``rows`` with the largest inner product."""
        import torch

        with self._lock:
            self._refresh(rows)
            if rows > min(len(self._ids), self._vectors.shape[0]):
                msg = f"the scan files in {self.folder} have fewer rows than the store's {rows}; reopen the store"
                raise StoreError(msg)
            if rows == 0:
                return [[] for _ in queries], [[] for _ in queries]
            scores = torch.from_numpy(np.ascontiguousarray(queries, dtype=_DTYPE)) @ self._vectors[:rows].T
            top = scores.topk(min(k, rows), dim=1).indices.tolist()
            return top, [[self._ids[r] for r in row] for row in top]
