"""What every store layout does, and the exact re-ranking the wide layouts share.

A layout decides where a chunk's memory lives and how candidates are found; ``ClaraStore`` does the rest (the
collection, its model binding, locking, records, texts and their checks). Layouts:

- ``full`` (``full.py``): the Chroma vector *is* the memory. Narrow memories, any client.
- ``pca`` (``local.py``): memories in a sidecar file next to a local Chroma folder, exact scan of projections.
- ``shared`` (``shared.py``): memories in object storage shards, projections in Chroma (a server); many machines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from clara_plugins.store.records import ChunkRecord

# one search result before it becomes a Hit: (chunk id, record metadata, text or None when not fetched, score)
Candidate = tuple[str, dict[str, Any], "str | None", float]


class Layout(Protocol):
    """One way of keeping memories. Methods that write are called under the store's write lock."""

    name: str

    def add(self, col: Any, records: Sequence[ChunkRecord], memories: np.ndarray, metas: list[dict]) -> None:
        """Store one batch: its memories ``[N, memory_dim]`` and Chroma records (``metas`` without layout keys)."""

    def memories(self, col: Any, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Flattened float32 memories of the stored chunks among ``ids``."""

    def search(self, col: Any, queries: np.ndarray, k: int, where: dict | None) -> list[list[Candidate]]:
        """Top ``k`` per query vector, best first, scored by exact CLaRa cosine."""

    def index_width(self, col: Any) -> int:
        """Width of the vectors Chroma indexes (for probes that go through HNSW)."""

    def bad_memories(self, records: dict[str, tuple[dict, str | None]]) -> list[str]:
        """Ids of records whose stored memory is damaged or missing (``verify``)."""

    def scan_problems(self, records: dict[str, tuple[dict, str | None]]) -> list[str]:
        """Problems of the layout's exact scan, if it has one (``verify``)."""

    def repair_scan(self, records: dict[str, tuple[dict, str | None]]) -> str:
        """Rebuild the scan from the memories and the records; what was done (``verify --repair``)."""

    def index_vectors(self, metas: list[dict]) -> np.ndarray | None:
        """The Chroma vectors of records rebuilt from their memories (None: the vector is the only copy)."""


def exact_scores(memories: Any, query: np.ndarray) -> Any:
    """CLaRa cosine of each memory row ``[C, D]`` (a float32 torch tensor) with one query ``[D]``."""
    import torch.nn.functional as F

    from clara_plugins.store.projection import torch_float

    return (memories @ F.normalize(torch_float(query), dim=0)) / memories.norm(dim=1).clamp_min(1e-12)


def rerank(cands: list[tuple[str, dict, str | None]], memories: Any, query: np.ndarray, k: int) -> list[Candidate]:
    """The ``k`` best of ``cands`` by exact cosine of their memories (rows of ``memories``, same order)."""
    if not cands:
        return []
    scores = exact_scores(memories, query)
    top = scores.argsort(descending=True, stable=True)[:k].tolist()
    return [(*cands[i], float(scores[i])) for i in top]


def live_candidates(
    col: Any, tops: list[list[tuple[str, Any]]], still_at: Callable[[dict, Any], bool], n_cand: int
) -> list[list | None]:
    """Per question the live ``(id, metadata, text)`` among an exact scan's top ``(id, location)`` rows: the record
    exists and ``still_at(its metadata, location)`` (re-indexed chunks get new rows; rows of deleted or never
    committed chunks have no record). None for a question whose ``n_cand`` rows are mostly stale."""
    from clara_plugins.store.chroma import get_by_ids

    records = get_by_ids(col, [cid for top in tops for cid, _ in top if cid], ["metadatas", "documents"])
    out: list[list | None] = []
    for top in tops:
        live = [
            (cid, records[cid][0], records[cid][1] or "")
            for cid, where in top
            if cid in records and still_at(records[cid][0], where)
        ]
        out.append(live if len(top) < n_cand or len(live) >= n_cand // 2 else None)
    return out


def with_hnsw_fallback(candidates: list[list | None], hnsw: Callable[[list[int]], list[list]]) -> list[list]:
    """``candidates`` with the questions a scan could not answer (None) answered by ``hnsw(their indices)``."""
    missing = [i for i, cands in enumerate(candidates) if cands is None]
    if missing:  # too many stale rows among the scan's candidates: ask HNSW for those questions
        for i, cands in zip(missing, hnsw(missing)):
            candidates[i] = cands
    return candidates
