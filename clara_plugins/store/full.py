"""The ``full`` layout: each Chroma vector is the flattened memory itself (cosine space), so Chroma's distances are
the exact CLaRa cosine and any client works. For memories up to ``full_max_dim`` numbers (Chroma keeps every
vector in fp32 in its in-memory HNSW graph, which is why wide memories use ``pca`` or ``shared``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from clara_plugins.store.chroma import get_by_ids
from clara_plugins.store.layout import Candidate
from clara_plugins.store.records import MEMORY_DIM, ChunkRecord
from clara_plugins.store.verify import complete_filtered


class FullLayout:
    """Memories as Chroma vectors."""

    name = "full"

    def __init__(self, where: str) -> None:
        self.where = where  # the store's folder or collection, for error messages

    def add(self, col: Any, records: Sequence[ChunkRecord], memories: np.ndarray, metas: list[dict]) -> None:
        """Upsert the records with their memories as vectors."""
        col.upsert(
            ids=[r.id for r in records], embeddings=memories, documents=[r.text for r in records], metadatas=metas
        )

    def memories(self, col: Any, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors, as float32."""
        found = get_by_ids(col, ids, ["embeddings"])
        return {cid: np.asarray(vec, dtype=np.float32) for cid, (vec,) in found.items()}

    def search(self, col: Any, queries: np.ndarray, k: int, where: dict | None) -> list[list[Candidate]]:
        """Chroma's own search: its cosine distance is the exact CLaRa cosine."""
        res = col.query(
            query_embeddings=queries, n_results=k, where=where, include=["documents", "metadatas", "distances"]
        )
        complete_filtered(col, queries, res, k, where, self.where)
        return [
            [(cid, meta, doc, 1.0 - float(d)) for cid, doc, meta, d in zip(*cols)]
            for cols in zip(res["ids"], res["documents"], res["metadatas"], res["distances"])
        ]

    def index_width(self, col: Any) -> int:
        """The memory width."""
        return int(col.metadata[MEMORY_DIM])

    def bad_memories(self, records: dict[str, tuple[dict, str | None]]) -> list[str]:
        """Chroma keeps the vectors itself (no checksum of ours to check)."""
        return []

    def scan_problems(self, records: dict[str, tuple[dict, str | None]]) -> list[str]:
        """No scan in this layout."""
        return []

    def repair_scan(self, records: dict[str, tuple[dict, str | None]]) -> str:
        """No scan in this layout."""
        return ""

    def index_vectors(self, metas: list[dict]) -> np.ndarray | None:
        """None: the Chroma vector is the only copy of the memory."""
        return None
