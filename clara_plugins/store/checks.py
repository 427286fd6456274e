"""Checksums of what the store writes: one CRC-32 per row of the memory and scan files, and the chunk text's hash.

A row file ``X.bin`` of fixed-width rows gets a companion ``X.crc``: one little-endian uint32 per row, written with
the row (before the Chroma records that point at it) and cut back with it. Reading a row recomputes its CRC and a
mismatch is a :class:`~clara_plugins.errors.StoreError` naming the file and the rows: damaged bytes never become a
different result. A chunk's text is checked against the content hash its record carries (``clara_hash``).
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clara_plugins.errors import StoreError

_CRC = np.dtype("<u4")


def text_hash(text: str) -> str:
    """Content address of a text (sha256, 32 hex digits); a chunk record's ``clara_hash``."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def row_crcs(rows: np.ndarray) -> np.ndarray:
    """CRC-32 of each row's bytes ``[N]`` (uint32)."""
    data = np.ascontiguousarray(rows)
    return np.fromiter((zlib.crc32(row.tobytes()) for row in data), dtype=_CRC, count=len(data))


def damaged_message(path: Path, rows: Sequence[int], what: str = "checksum") -> str:
    """The StoreError text for damaged rows of ``path``."""
    shown = ", ".join(str(r) for r in list(rows)[:10]) + (" ..." if len(rows) > 10 else "")
    return (
        f"store file {path} is damaged: {len(rows)} row(s) fail their {what} (rows {shown}); the bytes are not what "
        "the store wrote, so no result is served from them. Run `clara check --db DIR` (derived files are rebuilt "
        "by `--repair`; damaged memories need a re-index or a backup)"
    )


class RowChecksums:
    """The ``.crc`` companion of a row file: ``rows()``, ``append``, ``truncate``, ``check``.

    Args:
        path: The ``.crc`` file.
        data_path: The row file it covers (named in errors).
    """

    def __init__(self, path: Path, data_path: Path) -> None:
        self.path, self.data_path = Path(path), Path(data_path)
        self._cache = np.zeros(0, dtype=_CRC)
        self._key: tuple[int, int, int] | None = None

    def exists(self) -> bool:
        return self.path.exists()

    def rows(self) -> int:
        """Rows with a checksum on disk."""
        return self.path.stat().st_size // _CRC.itemsize if self.path.exists() else 0

    def load(self) -> np.ndarray:
        """Every checksum on disk (cached; re-read when the file changed)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return np.zeros(0, dtype=_CRC)
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if key != self._key:
            n = st.st_size // _CRC.itemsize
            self._cache = np.fromfile(self.path, dtype=_CRC, count=n) if n else np.zeros(0, dtype=_CRC)
            self._key = key
        return self._cache

    def append(self, first_row: int, crcs: np.ndarray) -> None:
        """Write checksums of rows ``first_row ...`` (dropping any at or past it), flushed to disk."""
        with open(self.path, "ab") as f:
            f.truncate(first_row * _CRC.itemsize)
            f.write(np.ascontiguousarray(crcs, dtype=_CRC).tobytes())
            f.flush()
            os.fsync(f.fileno())

    def truncate(self, rows: int) -> None:
        """Keep the checksums of the first ``rows`` rows."""
        if self.path.exists() and self.rows() > rows:
            with open(self.path, "r+b") as f:
                f.truncate(rows * _CRC.itemsize)

    def write_all(self, crcs: np.ndarray) -> None:
        """Replace the file atomically (a rebuild, or checksums computed for a store from before they existed)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        np.ascontiguousarray(crcs, dtype=_CRC).tofile(tmp)
        os.replace(tmp, self.path)

    def bad_rows(self, rows: np.ndarray, data: np.ndarray) -> list[int]:
        """Rows among ``rows`` whose bytes ``data`` do not match their checksum (rows past the file: unchecked)."""
        sums = self.load()
        idx = np.asarray(rows, dtype=np.int64)
        known = idx < len(sums)
        if not known.any():
            return []
        got = row_crcs(np.asarray(data)[known])
        return [int(r) for r in idx[known][got != sums[idx[known]]]]

    def check(self, rows: np.ndarray, data: np.ndarray) -> None:
        """Raise a StoreError naming the file and the rows whose bytes fail their checksum."""
        bad = self.bad_rows(rows, data)
        if bad:
            raise StoreError(damaged_message(self.data_path, sorted(set(bad))))
