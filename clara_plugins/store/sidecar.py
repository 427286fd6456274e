"""Append-only memory-mapped file of compressed memories, kept next to a local Chroma folder.

At the official width (65,536 numbers per chunk for 7B at compression 16) Chroma is slow to add full vectors and
returns them as float64 lists, so in the ``"pca"`` store mode the full memories live here as fp16 rows and Chroma
indexes a short projection of them (see ``docs/store.md``).

Crash safety: rows are written and flushed *before* the Chroma records that point at them, and ``state.json``
holds the number of committed rows. ``memories.crc`` holds a CRC-32 per row (``checks.py``), written with the
row and checked on every read (``verify``). On open, rows past the committed count are either adopted (when Chroma
records point at them: the process died after Chroma's commit) or cut off (it died before).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import filelock
import numpy as np

from clara_plugins.errors import InputError, StoreError
from clara_plugins.quantize import bytes_per_row, dequantize_rows, quantize_rows
from clara_plugins.store.checks import RowChecksums, row_crcs

logger = logging.getLogger(__name__)

_DTYPES = {"float16": np.float16, "float32": np.float32, "int8": np.uint8}  # int8 rows are stored as packed bytes


def _atomic_write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class SidecarMemories:
    """Rows of flattened memories ``[dim]`` in one raw file, read through a numpy memmap.

    Args:
        folder: Folder of this collection's files (created if missing).
        dim: Length of one flattened memory.
        dtype: ``"float16"`` (default, half the bytes of float32), ``"float32"``, or ``"int8"`` (a quarter, plus one
            float32 scale per memory vector: each row is ``dim`` int8 codes then ``dim // group`` scales, see
            :mod:`clara_plugins.quantize`).
        group: Values per int8 scale (the model's hidden size: one scale per memory vector); int8 only.
    """

    def __init__(self, folder: str | Path, dim: int, dtype: str = "float16", group: int | None = None) -> None:
        if dtype not in _DTYPES:
            msg = f"memory_dtype must be one of {sorted(_DTYPES)}, got {dtype!r}"
            raise StoreError(msg)
        if dtype == "int8" and (not group or dim % group):
            msg = f"int8 memories need a group (the hidden size) that divides the memory width {dim}, got {group}"
            raise StoreError(msg)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dim = dim
        self.quantized = dtype == "int8"
        self.group = group if self.quantized else None
        self.dtype = np.dtype(_DTYPES[dtype])
        # a row of the file, in units of dtype (bytes for int8: codes then float32 scales)
        self.row_width = bytes_per_row(dim, group) if self.quantized else dim
        self.row_bytes = self.row_width * self.dtype.itemsize
        self.data_path = self.folder / "memories.bin"
        self.state_path = self.folder / "state.json"
        self.crc = RowChecksums(self.folder / "memories.crc", self.data_path)
        self.verify = True  # check each row read against its CRC (ClaraStore(verify=False) turns it off)
        self._lock = threading.RLock()
        self._write_mutex = threading.RLock()  # threads of this process; flock serializes processes
        self._write_depth = 0
        self._map: np.memmap | None = None
        self.committed = self._read_state()

    # ---- state -------------------------------------------------------------------------------------------
    def _read_state(self) -> int:
        if not self.state_path.exists():
            return 0
        try:
            state = json.loads(self.state_path.read_text())
            rows, dim = int(state["rows"]), int(state["dim"])
        except (ValueError, KeyError, TypeError) as err:
            msg = f"store file {self.state_path} is damaged ({err}); re-index into a new --db folder"
            raise StoreError(msg) from err
        if dim != self.dim or state.get("dtype", "float16") != self.dtype.name:
            msg = f"store file {self.state_path} holds {state.get('dtype')} rows of {dim}, expected {self.dim}"
            raise StoreError(msg)
        return rows

    def _write_state(self) -> None:
        _atomic_write_json(self.state_path, {"rows": self.committed, "dim": self.dim, "dtype": self.dtype.name})

    def file_rows(self) -> int:
        """Whole rows present in the data file (committed or not)."""
        return self.data_path.stat().st_size // self.row_bytes if self.data_path.exists() else 0

    def recover(self, referenced_end: Callable[[int], int]) -> None:
        """Make the file agree with Chroma after a crash.

        Args:
            referenced_end: Given the committed row count, returns 1 + the largest row that Chroma records point
                at among rows >= that count (or the count itself when none do).
        """
        with self._lock, self.write_lock():
            rows = self.file_rows()
            if rows < self.committed:
                msg = (
                    f"memories file {self.data_path} has {rows} rows but {self.committed} are committed: the store "
                    "is damaged (a file was truncated or removed); re-index into a new --db folder"
                )
                raise StoreError(msg)
            size = self.data_path.stat().st_size if self.data_path.exists() else 0
            if rows == self.committed and size == rows * self.row_bytes:
                self._complete_checksums()
                return
            end = max(self.committed, referenced_end(self.committed))
            if end > rows:
                msg = f"Chroma records point past the end of {self.data_path}: the store is damaged; re-index"
                raise StoreError(msg)
            logger.warning(
                "store recovery: keeping %d rows of %s, dropping %d unfinished", end, self.data_path, rows - end
            )
            with open(self.data_path, "r+b") as f:
                f.truncate(end * self.row_bytes)
            self.committed = end
            self._write_state()
            self._map = None
            self._complete_checksums()

    def _complete_checksums(self) -> None:
        """Cut checksums of dropped rows; compute the missing ones of committed rows (stores written before
        checksums existed get them from the bytes as they are now: earlier damage cannot be detected)."""
        have = self.crc.rows()
        if have > self.committed:
            self.crc.truncate(self.committed)
        elif have < self.committed:
            logger.warning(
                "%s has row checksums for %d of its %d committed rows (none: a store from before checksums): "
                "computing the rest from the bytes as they are",
                self.data_path,
                have,
                self.committed,
            )
            rows = np.arange(have, self.committed)
            sums = [row_crcs(self._read_unchecked(rows[i : i + 4096])) for i in range(0, len(rows), 4096)]
            self.crc.append(have, np.concatenate(sums))

    # ---- writing -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """An exclusive lock across processes (``filelock``) for one append + Chroma write + commit.

        Re-entrant within a thread: a second ``flock`` on a new handle of the same file would wait for the first.
        """
        with self._write_mutex:
            if self._write_depth:
                self._write_depth += 1
                try:
                    yield
                finally:
                    self._write_depth -= 1
                return
            with filelock.FileLock(self.folder / "write.lock"):  # flock on POSIX, msvcrt on Windows
                self._write_depth = 1
                try:
                    yield
                finally:
                    self._write_depth = 0

    def append(self, rows: np.ndarray) -> int:
        """Write ``rows [N, dim]`` after the committed rows (call inside ``write_lock``); returns the first row index.

        The rows are flushed to the file but not committed: call ``commit`` once the Chroma records exist.
        """
        if np.ndim(rows) != 2 or np.shape(rows)[1] != self.dim:
            msg = f"memories must have shape [N, {self.dim}], got {list(np.shape(rows))}"
            raise StoreError(msg)
        data = self._pack(rows) if self.quantized else np.ascontiguousarray(rows, dtype=self.dtype)
        if not self.quantized and not np.isfinite(data).all():
            msg = (
                f"memories are not finite in {self.dtype.name} (overflow?); open the store with memory_dtype='float32'"
            )
            raise StoreError(msg)
        with self._lock:
            start = self.refresh_committed()  # another process may have committed rows meanwhile
            self._complete_checksums()  # the CRC file must reach row `start` before this batch's CRCs follow it
            with open(self.data_path, "ab") as f:
                f.truncate(start * self.row_bytes)  # drop rows of an earlier failed batch
                f.write(data.tobytes())
                f.flush()
                os.fsync(f.fileno())
            self.crc.append(start, row_crcs(data))
            return start

    def refresh_committed(self) -> int:
        """The committed row count, re-read from ``state.json`` (another process may have added rows)."""
        with self._lock:
            self.committed = self._read_state()
            return self.committed

    def commit(self, end: int) -> None:
        """Record that rows ``< end`` are referenced by Chroma."""
        with self._lock:
            self.committed = end
            self._write_state()

    def _pack(self, rows: np.ndarray) -> np.ndarray:
        """int8 codes and float32 scales of ``rows``, side by side as bytes ``[N, row_width]``."""
        try:
            codes, scales = quantize_rows(rows, self.group)
        except InputError as err:  # NaN or infinite values
            msg = f"memories cannot be stored as int8: {err}; nothing was stored"
            raise StoreError(msg) from err
        return np.concatenate([codes.view(np.uint8), scales.view(np.uint8)], axis=1)

    def _unpack(self, raw: np.ndarray) -> np.ndarray:
        codes = np.ascontiguousarray(raw[:, : self.dim]).view(np.int8)
        scales = np.ascontiguousarray(raw[:, self.dim :]).view(np.float32)
        return dequantize_rows(codes, scales)

    # ---- reading -----------------------------------------------------------------------------------------
    def read(self, rows: np.ndarray | list[int]) -> np.ndarray:
        """Rows as a float32 array ``[len(rows), dim]`` (int8 rows dequantized)."""
        raw = self.read_raw(rows)
        return self._unpack(raw) if self.quantized else np.asarray(raw, dtype=np.float32)

    def read_values(self, rows: np.ndarray | list[int]) -> np.ndarray:
        """Rows as numbers ``[len(rows), dim]``: the file's floats as they are (no float32 copy), int8 dequantized."""
        raw = self.read_raw(rows)
        return self._unpack(raw) if self.quantized else raw

    def read_raw(self, rows: np.ndarray | list[int]) -> np.ndarray:
        """Rows as stored ``[len(rows), row_width]`` (floats, or int8 packed bytes), each checked against its CRC
        (when ``verify``).

        Raises:
            StoreError: a row is missing, or its bytes fail their checksum (the message names the file and rows).
        """
        idx = np.asarray(rows, dtype=np.int64)
        out = self._read_unchecked(idx)
        if self.verify and idx.size:
            self.crc.check(idx, out)
        return out

    def _read_unchecked(self, idx: np.ndarray) -> np.ndarray:
        if idx.size == 0:
            return np.zeros((0, self.row_width), dtype=self.dtype)
        with self._lock:
            if self._map is None or self._map.shape[0] <= int(idx.max()):
                n = self.file_rows()
                if n <= int(idx.max()):
                    msg = f"row {int(idx.max())} is missing from {self.data_path} ({n} rows): the store is damaged"
                    raise StoreError(msg)
                self._map = np.memmap(self.data_path, dtype=self.dtype, mode="r", shape=(n, self.row_width))
            view = self._map
        return view[idx]

    def nbytes(self) -> int:
        """Bytes on disk of every file in the folder."""
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())
