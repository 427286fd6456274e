"""The ``shared`` layout's candidate generator: an exact scan of every chunk's projection, held in each client.

Why not Chroma's HNSW alone: over these projections it misses a growing share of the exact top 10 as the store
grows (9 % at 100k chunks of the bundled model, ``scan.py``), and a shared store is meant to grow. So each writer
also puts, beside each shard, a small scan file ``scans/<shard>.scan`` (the chunk ids, their rows, and their fp16
projections, ``ann_dim`` x 2 bytes per chunk) before the Chroma records exist. A client loads every scan file once
(they are immutable), lists the folder for new ones at most every ``refresh_s`` seconds (and sees its own writes
at once), and scans all rows with one matrix product. A row is a candidate only if its Chroma record still points
at that shard and row, so rows of deleted, re-indexed or never-committed chunks drop out.

Scan files are derived data: a damaged one is a ``StoreError`` naming it; ``clara check --repair`` writes it again
from its shard's memories and Chroma's records.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from clara_plugins.errors import StoreError

logger = logging.getLogger(__name__)

SCANS = "scans"


def scan_name(shard: str) -> str:
    """The scan file of a shard (``shards/x.shard`` -> ``scans/x.scan``)."""
    return f"{SCANS}/{shard.rsplit('/', 1)[-1].removesuffix('.shard')}.scan"


def list_scan_files(shards: Any) -> list[str]:
    """Names (relative to the root) of every scan file of a store's ``ObjectShards``, listed afresh."""
    fs, folder = shards.fs, f"{shards.root}/{SCANS}"
    fs.invalidate_cache(folder)  # other clients add scan files: never answer from a cached listing
    try:
        found = fs.find(folder)
    except FileNotFoundError:
        return []
    prefix = len(shards.root) + 1 if shards.root else 0
    return sorted(p[prefix:] for p in found if p.endswith(".scan"))


def shard_of_scan(name: str) -> str:
    """The shard of a scan file (``scans/x.scan`` -> ``shards/x.shard``)."""
    return f"shards/{name.rsplit('/', 1)[-1].removesuffix('.scan')}.shard"


def scan_bytes(ids: Sequence[str], rows: Sequence[int], vectors: np.ndarray, key: str) -> bytes:
    """A scan file: ids, shard rows and fp16 projections ``[N, d]`` of one shard, for projection ``key``."""
    buf = io.BytesIO()
    np.savez(
        buf,
        ids=np.frombuffer(json.dumps(list(ids)).encode(), dtype=np.uint8),
        rows=np.asarray(rows, dtype=np.int64),
        vectors=np.asarray(vectors, dtype=np.float16),
        key=np.frombuffer(key.encode(), dtype=np.uint8),
    )
    return buf.getvalue()


def read_scan(data: bytes, where: str) -> tuple[list[str], np.ndarray, np.ndarray, str]:
    """``(ids, rows, vectors, key)`` of a scan file; damage (zip CRC, shapes) is a StoreError naming ``where``."""
    try:
        with np.load(io.BytesIO(data)) as z:
            ids = json.loads(z["ids"].tobytes().decode())
            rows, vectors, key = z["rows"], z["vectors"], z["key"].tobytes().decode()
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        msg = f"scan file {where} is damaged ({err}); it is derived data: `clara check --repair` writes it again"
        raise StoreError(msg) from err
    if not (len(ids) == len(rows) == len(vectors)):
        msg = f"scan file {where} is damaged (ids, rows and vectors disagree); `clara check --repair` rewrites it"
        raise StoreError(msg)
    return ids, rows, vectors, key


class SharedScan:
    """Every scan file under a shared store's root, in memory, searched exactly.

    Args:
        shards: The store's ``ObjectShards`` (its filesystem and root).
        key: The store's projection key (scan files for another projection are refused).
        width: Projection width.
        refresh_s: List the folder for new scan files at most this often.
    """

    def __init__(self, shards: Any, key: str, width: int, refresh_s: float = 1.0) -> None:
        import torch

        self.shards, self.key, self.width, self.refresh_s = shards, key, width, refresh_s
        self._seen: set[str] = set()
        self._ids: list[str] = []
        self._shard: list[str] = []
        self._rows: list[int] = []
        self._vectors = torch.zeros((0, width), dtype=torch.float16)
        self._refreshed = float("-inf")
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, shard: str, ids: Sequence[str], rows: Sequence[int], vectors: np.ndarray) -> None:
        """Rows this client just wrote (its own writes are searchable at once)."""
        import torch

        with self._lock:
            name = scan_name(shard)
            if name in self._seen:
                return
            self._seen.add(name)
            self._ids += list(ids)
            self._shard += [shard] * len(ids)
            self._rows += [int(r) for r in rows]
            new = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float16))
            self._vectors = torch.cat([self._vectors, new])

    def refresh(self, force: bool = False) -> None:
        """Load the scan files other clients wrote since the last refresh (at most every ``refresh_s``)."""
        with self._lock:
            if not force and time.monotonic() - self._refreshed < self.refresh_s:
                return
            names = [n for n in list_scan_files(self.shards) if n not in self._seen]
            self._refreshed = time.monotonic()
            if not names:
                return
            fs, root = self.shards.fs, self.shards.root
            blobs = fs.cat([f"{root}/{n}" for n in names], on_error="return")
            for name in names:
                data = blobs.get(f"{root}/{name}")
                if isinstance(data, FileNotFoundError) or data is None:
                    continue  # listed, then gone: a repair is rewriting it
                if isinstance(data, BaseException):
                    msg = f"cannot read scan file {self.shards.url}/{name}: {data}"
                    raise StoreError(msg) from data
                self._load(name, data)
            logger.debug("loaded %d new scan files (%d rows in all)", len(names), len(self._ids))

    def _load(self, name: str, data: bytes) -> None:
        where = f"{self.shards.url}/{name}"
        ids, rows, vectors, key = read_scan(data, where)
        if key != self.key or vectors.shape[1:] != (self.width,):
            msg = f"scan file {where} was made for another projection ({key}, not {self.key}); rewrite it with --repair"
            raise StoreError(msg)
        self.add(shard_of_scan(name), ids, rows, vectors)

    def top(self, queries: np.ndarray, n: int) -> list[list[tuple[str, str, int]]]:
        """Per projected query ``[B, width]``: ``(id, shard, row)`` of the ``n`` rows with the largest inner product."""
        import torch

        with self._lock:
            if not self._ids:
                return [[] for _ in queries]
            scores = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float16)) @ self._vectors.T
            top = scores.topk(min(n, len(self._ids)), dim=1).indices.tolist()
            return [[(self._ids[r], self._shard[r], self._rows[r]) for r in row] for row in top]
