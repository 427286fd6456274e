"""The ``shared`` layout: wide memories for many clients, processes and machines.

Chroma (usually a ``chroma run`` server) holds the records and a compact vector per chunk: the augmented
principal-component projection of its memory (``projection.py``, ``ann_dim`` + 1 numbers). The full memories live in
object storage reached through fsspec (``s3://``, ``gs://``, ``az://``, a shared filesystem path), packed in
append-only shard files (``object_shards.py``): each ``add`` writes one new shard, then the records that point at
its rows (shard, row, CRC-32). Nothing is ever overwritten, so any number of writers on any machines can add at
once, and a writer killed between the two steps leaves only an unreferenced shard.

A search takes ``max(candidates, 4k)`` candidates from an exact scan of every chunk's projection that each client
holds in memory (``shared_scan.py``: writers put a small scan file beside each shard; HNSW alone loses recall as the
store grows), or from Chroma's HNSW index when a ``where`` filter is given, reads their memories by byte range (one
request per shard, concurrent) and re-ranks them by exact CLaRa cosine.

The projection is fitted once, on the first batch added (``ClaraRAG.index`` makes that batch ``REFIT_MAX_ROWS``
chunks, see ``fit_rows_wanted``), and never refitted: refitting would rewrite every vector while other machines add.
Several first writers race for it through Chroma itself: the winner creates the collection
``clara-projection-<collection id>`` whose metadata names the projection file; the others use that one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from clara_plugins.errors import InputError, StoreError
from clara_plugins.store.chroma import get_by_ids
from clara_plugins.store.layout import Candidate, live_candidates, rerank, with_hnsw_fallback
from clara_plugins.store.local import REFIT_MAX_ROWS, ann_candidates
from clara_plugins.store.object_shards import HEADER_SIZE, ObjectShards, RowLocation
from clara_plugins.store.projection import Projection, torch_float
from clara_plugins.store.records import (
    ANN_DIM,
    CRC,
    HIDDEN_SIZE,
    MEMORIES_URL,
    MEMORY_DIM,
    MEMORY_DTYPE,
    ROW,
    SHARD,
    ChunkRecord,
)
from clara_plugins.store.shared_scan import (
    SharedScan,
    list_scan_files,
    read_scan,
    scan_bytes,
    scan_name,
    shard_of_scan,
)

logger = logging.getLogger(__name__)

PROJECTION_KEY = "clara_projection"  # metadata key of the claim collection: the projection file's key
SHARD_ROWS = 256  # rows per shard file at most: 32 MB at 7B width in fp16 (objects stay easy to copy and cache)


class SharedLayout:
    """Memories in object-storage shards, projections in Chroma.

    Args:
        store: The ``ClaraStore`` (its client, candidate count and ``verify_reads``).
        col: The Chroma collection.
        shards: The shard files of the collection's memories.
    """

    name = "shared"

    def __init__(self, store: Any, col: Any, shards: ObjectShards) -> None:
        self.store, self.col, self.shards = store, col, shards
        self._projection: Projection | None = None
        self._scan: SharedScan | None = None
        self.refresh_s = 1.0  # how stale the view of other clients' writes may be (unfiltered searches)

    @classmethod
    def open(cls, store: Any, col: Any) -> SharedLayout:
        """The layout of an existing collection, on the memories URL it records."""
        meta = col.metadata
        url = str(meta[MEMORIES_URL])
        if store.memories_url is not None and store.memories_url.rstrip("/") != url.rstrip("/"):
            msg = (
                f"store {store.name!r} keeps its memories in {url!r}, not in {store.memories_url!r}: "
                "open it without memories= (or with its own URL)"
            )
            raise InputError(msg)
        dtype, dim = str(meta[MEMORY_DTYPE]), int(meta[MEMORY_DIM])
        group = int(meta[HIDDEN_SIZE]) if dtype == "int8" else None  # one scale per memory vector
        shards = ObjectShards(url, dim, dtype, group, storage_options=store.storage_options, verify=store.verify_reads)
        return cls(store, col, shards)

    # ------------------------------------------------------------------ projection
    @property
    def _claim_name(self) -> str:
        return f"clara-projection-{self.col.id}"

    def projection(self) -> Projection | None:
        """The store's projection (None until the first chunks are added)."""
        if self._projection is None:
            key = self._claimed_key()
            if key is not None:
                self._projection = self._load(key)
        return self._projection

    def _claimed_key(self) -> str | None:
        from chromadb.errors import NotFoundError

        try:
            claim = self.store.client.get_collection(self._claim_name)
        except (NotFoundError, ValueError):
            return None
        return str((claim.metadata or {})[PROJECTION_KEY])

    def _load(self, key: str) -> Projection:
        name = _blob_name(key)
        data = self.shards.get_blob(name)
        if data is None:
            msg = f"the projection file {self.shards.url}/{name} of store {self.store.name!r} is missing; re-index"
            raise StoreError(msg)
        return Projection.from_bytes(data, f"{self.shards.url}/{name}")

    def _claim(self, memories: np.ndarray) -> Projection:
        """Fit the projection on ``memories`` and make it the store's, unless another writer was first."""
        if self.col.count() > 0:
            msg = (
                f"store {self.store.name!r} holds chunks but its projection record ({self._claim_name}) is gone; "
                "its vectors cannot be matched to queries: re-index into a new collection"
            )
            raise StoreError(msg)
        proj = Projection.fit(memories, int(self.col.metadata[ANN_DIM]))
        self.shards.put_blob(_blob_name(proj.key), proj.to_bytes())
        try:
            self.store.client.create_collection(
                self._claim_name,
                metadata={PROJECTION_KEY: proj.key, "clara_fit_rows": proj.fit_rows},
                embedding_function=None,
            )
            logger.info("fitted the projection of store %r on %d chunks", self.store.name, proj.fit_rows)
        except Exception as err:  # chromadb raises several types for "exists"; the claim read below tells
            key = self._claimed_key()
            if key is None:
                raise
            logger.info("another writer fitted the projection of store %r first (%s)", self.store.name, err)
            proj = self._load(key)
        self._projection = proj
        return proj

    def fit_rows_wanted(self) -> int:
        """Chunks the first ``add`` should bring (the projection is fitted on them once); 0 once it exists."""
        return REFIT_MAX_ROWS if self.projection() is None else 0

    # ------------------------------------------------------------------ the layout protocol
    def scan(self) -> SharedScan | None:
        """This client's exact scan of every chunk's projection (None before the projection exists)."""
        proj = self.projection()
        if proj is None:
            return None
        if self._scan is None:
            self._scan = SharedScan(self.shards, proj.key, proj.basis.shape[1], self.refresh_s)
        return self._scan

    def add(self, col: Any, records: Sequence[ChunkRecord], memories: np.ndarray, metas: list[dict]) -> None:
        """Write the memories as shards of at most ``SHARD_ROWS`` rows, each with its scan file, then upsert the
        records pointing at their rows."""
        proj = self.projection() or self._claim(memories)
        for start in range(0, len(records), SHARD_ROWS):
            part = slice(start, start + SHARD_ROWS)
            self._add_shard(col, proj, records[part], memories[part], metas[part])

    def _add_shard(self, col: Any, proj: Projection, records: Sequence[ChunkRecord], mems: Any, metas: list) -> None:
        locations = self.shards.write(mems)
        shard, rows, ids = locations[0].shard, [loc.row for loc in locations], [r.id for r in records]
        z = proj.project(mems)
        self.shards.put_object(scan_name(shard), scan_bytes(ids, rows, z, proj.key))
        col.upsert(
            ids=ids,
            embeddings=proj.docs_from_projected(z),
            documents=[r.text for r in records],
            metadatas=[{**m, SHARD: loc.shard, ROW: loc.row, CRC: loc.crc} for m, loc in zip(metas, locations)],
        )
        scan = self.scan()
        assert scan is not None
        scan.add(shard, ids, rows, z)

    def memories(self, col: Any, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The records' memories, read by byte range from their shards."""
        found = get_by_ids(col, ids, ["metadatas"])
        if not found:
            return {}
        mems = self.shards.read([_location(meta) for (meta,) in found.values()])
        return {cid: mems[i] for i, cid in enumerate(found)}

    def search(self, col: Any, queries: np.ndarray, k: int, where: dict | None) -> list[list[Candidate]]:
        """Candidates from the exact scan (HNSW with a ``where`` filter), re-ranked by exact cosine of memories."""
        proj = self.projection()
        if proj is None:  # nothing added yet
            return [[] for _ in queries]
        n_cand = max(self.store.candidates, 4 * k)
        if where is None:
            candidates = with_hnsw_fallback(
                self._scan_candidates(col, queries, proj, n_cand),
                lambda idx: ann_candidates(col, proj.queries(queries[idx]), n_cand, None, self.store.where),
            )
        else:
            candidates = ann_candidates(col, proj.queries(queries), n_cand, where, self.store.where)
        wanted = list(dict.fromkeys(cid for cands in candidates for cid, _, _ in cands))
        metas = {cid: meta for cands in candidates for cid, meta, _ in cands}
        rows = self.shards.read([_location(metas[cid]) for cid in wanted]) if wanted else None
        pos = {cid: i for i, cid in enumerate(wanted)}
        out = []
        for qi, cands in enumerate(candidates):
            mems = torch_float(rows[[pos[cid] for cid, _, _ in cands]]) if cands else None
            out.append(rerank(cands, mems, queries[qi], k))
        return out

    def _scan_candidates(self, col: Any, q: np.ndarray, proj: Projection, n_cand: int) -> list[list | None]:
        """Per question the live ``(id, metadata, text)`` of the scan's top rows; None when too few are live."""
        scan = self.scan()
        assert scan is not None
        scan.refresh()
        tops = [[(cid, (shard, row)) for cid, shard, row in top] for top in scan.top(proj.project_queries(q), n_cand)]
        return live_candidates(col, tops, lambda meta, at: (meta[SHARD], int(meta[ROW])) == at, n_cand)

    # ------------------------------------------------------------------ verify and repair
    def scan_problems(self, records: dict[str, tuple[dict, str | None]]) -> list[str]:
        """Scan files that cannot be read, and records without their row in their shard's scan file."""
        damaged, missing = self._scan_damage(records)
        out = [f"damaged scan file {self.shards.url}/{name}" for name in damaged]
        if missing:
            out.append(f"{len(missing)} record(s) have no row in their shard's scan file: {missing[:10]}")
        return out

    def repair_scan(self, records: dict[str, tuple[dict, str | None]]) -> str:
        """Write again, from Chroma's records and the shards' memories, every scan file that is damaged or lacks
        a record (only rows of records that Chroma holds are kept)."""
        damaged, missing = self._scan_damage(records)
        shards = {str(records[c][0][SHARD]) for c in missing} | {shard_of_scan(n) for n in damaged}
        proj = self.projection()
        assert proj is not None
        for shard in sorted(shards):
            items = sorted((int(m[ROW]), cid, m) for cid, (m, _) in records.items() if m[SHARD] == shard)
            metas = [m for _, _, m in items]
            vectors = proj.project(self.shards.read([_location(m) for m in metas])) if metas else np.zeros((0, 1))
            data = scan_bytes([c for _, c, _ in items], [r for r, _, _ in items], vectors, proj.key)
            self.shards.put_object(scan_name(shard), data, create=False)
        self._scan = None  # reload every scan file
        return f"wrote {len(shards)} scan file(s) again from the shards' memories"

    def _scan_damage(self, records: dict[str, tuple[dict, str | None]]) -> tuple[list[str], list[str]]:
        """``(unreadable scan files, ids of records with no row in them)``."""
        if self.scan() is None:
            return [], []
        have: set[tuple[str, str, int]] = set()
        damaged: list[str] = []
        listing = list_scan_files(self.shards)
        blobs = self.shards.fs.cat([f"{self.shards.root}/{n}" for n in listing], on_error="return") if listing else {}
        for name in listing:
            data = blobs.get(f"{self.shards.root}/{name}")
            try:
                if isinstance(data, BaseException) or data is None:
                    raise StoreError(str(data))
                ids, rows, _, _ = read_scan(data, name)
            except StoreError:
                damaged.append(name)
                continue
            shard = shard_of_scan(name)
            have.update((cid, shard, int(r)) for cid, r in zip(ids, rows))
        missing = [c for c, (m, _) in records.items() if (c, str(m[SHARD]), int(m[ROW])) not in have]
        return damaged, missing

    def unreferenced_rows(self, referenced: int) -> tuple[int, int]:
        """``(rows, bytes)`` in the shards beyond the ``referenced`` rows that records point at (append-only
        shards keep the rows of deleted and re-indexed chunks)."""
        per_row = self.shards.row_bytes + 4  # the row and its CRC in the shard
        rows = sum((size - HEADER_SIZE) // per_row for size in self.shards.sizes().values())
        return max(rows - referenced, 0), max(rows - referenced, 0) * per_row

    def index_width(self, col: Any) -> int:
        """The augmented projection's width."""
        return int(col.metadata[ANN_DIM]) + 1

    def bad_memories(self, records: dict[str, tuple[dict, str | None]]) -> list[str]:
        """Records whose memory cannot be read back intact (missing shard, short shard, failed CRC)."""
        ids, bad = list(records), []
        for start in range(0, len(ids), 256):
            part = ids[start : start + 256]
            try:
                self.shards.read([_location(records[c][0]) for c in part])
            except StoreError:  # find which ones, one at a time
                for cid in part:
                    try:
                        self.shards.read([_location(records[cid][0])])
                    except StoreError:
                        bad.append(cid)
        return bad

    def index_vectors(self, metas: list[dict]) -> np.ndarray | None:
        """Projections of the records' memories."""
        proj = self.projection()
        if proj is None or not metas:
            return np.zeros((0, self.index_width(self.col)), dtype=np.float32)
        return proj.docs(self.shards.read([_location(m) for m in metas]))


def _location(meta: dict[str, Any]) -> RowLocation:
    return RowLocation(str(meta[SHARD]), int(meta[ROW]), int(meta[CRC]))


def _blob_name(key: str) -> str:
    return f"projection-{key}.npz"
