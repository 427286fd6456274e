"""``ClaraStore``: compressed CLaRa memories in Chroma, one record per chunk, ranked by exact CLaRa cosine.

The store owns the Chroma collection (created for one model and bound to its fingerprint), the records, their
texts and checks, and the locking of a local folder; where memories live and how candidates are found is the job of
its layout (``layout.py``), chosen when the collection is created and recorded in its metadata (numbers in
``docs/store.md``):

- ``"full"``: the Chroma vector is the memory; any client; memories up to ``full_max_dim`` numbers.
- ``"pca"``: wider memories on a local folder: a sidecar file and an exact scan of projections.
- ``"shared"``: wider memories for many clients and machines: shards in object storage (fsspec URL), projections
  in Chroma (usually a ``chroma run`` server).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clara_plugins.errors import InputError, ModelMismatchError, StoreError
from clara_plugins.store import records as keys
from clara_plugins.store.checks import text_hash
from clara_plugins.store.chroma import chroma_errors, client_folder, get_by_ids, get_where_in, open_client, pages
from clara_plugins.store.full import FullLayout
from clara_plugins.store.layout import Candidate, Layout
from clara_plugins.store.lock import FOLDER_GEN, FolderLock, drop_system, system_of
from clara_plugins.store.records import ChunkRecord, Hit, StoreInfo, hit_from, record_meta, user_where

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: the pca layout indexes augmented projections in cosine space (projection.Projection)
# HNSW settings measured by bench/bench_store.py (recall@10 vs exact ranking >= 0.98; docs/store.md)
DEFAULT_HNSW = {"ef_construction": 200, "ef_search": 512, "max_neighbors": 32}
LAYOUTS = ("auto", "full", "pca", "shared")
MEMORY_DTYPES = ("float16", "float32", "int8")


class ClaraStore:
    """Compressed memories of chunks in a Chroma collection.

    Args:
        path: Folder of an embedded ``chromadb.PersistentClient`` (created if missing). Ignored with ``client``.
        client: Any chromadb client (``HttpClient`` for a server). Default: a ``PersistentClient`` on ``path``,
            or an in-memory ``EphemeralClient`` when both are None.
        collection: Collection name.
        hnsw: HNSW settings (``ef_construction``, ``ef_search``, ``max_neighbors``) for a new collection.
        full_max_dim: Widest memory kept whole in Chroma; wider ones use the ``"pca"`` layout on local clients.
        ann_dim: Width of the projection Chroma indexes in the ``"pca"`` and ``"shared"`` layouts.
        candidates: ANN candidates re-ranked exactly per question in those layouts (at least ``4 * k``).
        memory_dtype: ``"float16"`` (default), ``"float32"`` or ``"int8"`` (one float32 scale per memory vector: about
            half the bytes of float16; ``bench/bench_int8.py`` measures the effect) for the memories of the
            ``"pca"`` and ``"shared"`` layouts. A new collection records it; an existing one keeps its own.
        layout: ``"auto"`` (default: ``"shared"`` when ``memories`` is given, else ``"pca"`` for memories wider than
            ``full_max_dim`` on a local client, else ``"full"``), ``"full"``, ``"pca"`` or ``"shared"``, for a new
            collection; an existing one keeps its own.
        memories: ``"shared"`` layout: fsspec URL of the folder holding the memory shards (``s3://bucket/prefix``,
            ``gs://...``, ``az://...``, a shared filesystem path). Recorded in the collection, so other clients
            find it; a different URL given for an existing store is refused.
        storage_options: fsspec options of that URL (credentials, ``endpoint_url``...); never recorded.
        verify: Check what is read against the checksums written with it (each memory and scan row's CRC-32, each
            chunk text's content hash); damage raises ``StoreError`` naming the file and rows. Checksums are always
            written; ``False`` only skips the checks on read (``bench/bench_store.py --part verify`` measures them).

    On a local folder every write holds an inter-process lock (``lock.py``), so several processes may index into one
    folder one batch at a time; a process reopens its Chroma client when another one wrote since.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        client: Any = None,
        collection: str = "clara",
        *,
        hnsw: dict[str, int] | None = None,
        full_max_dim: int = 1024,
        ann_dim: int = 256,
        candidates: int = 64,
        memory_dtype: str = "float16",
        layout: str = "auto",
        memories: str | None = None,
        storage_options: dict[str, Any] | None = None,
        verify: bool = True,
    ) -> None:
        _check_choice("memory_dtype", memory_dtype, MEMORY_DTYPES)
        _check_choice("layout", layout, LAYOUTS)
        if memories is not None and not isinstance(memories, str | Path):
            msg = f"memories must be an fsspec URL or path string, got {type(memories).__name__}"
            raise InputError(msg)
        self._own_client = client is None
        self._folder_lock: FolderLock | None = None
        if client is None:
            if path is not None and Path(path).exists() and not Path(path).is_dir():
                msg = f"store path {str(path)!r} is a file, not a folder"
                raise StoreError(msg)
            self._folder_lock = FolderLock(path) if path is not None else None
            with self._folder_lock.hold() if self._folder_lock else contextlib.nullcontext():
                client = open_client(path)  # two processes creating one folder race in Chroma's migrations
                if self._folder_lock:
                    FOLDER_GEN.setdefault(str(self._folder_lock.folder.resolve()), self._folder_lock.generation())
        self.client = client
        self.verify_reads = verify
        self.name = collection
        self.path = Path(path) if path is not None else client_folder(client)
        self.local_folder = client_folder(client)
        if self._folder_lock is None and self.local_folder is not None:
            self._folder_lock = FolderLock(self.local_folder)
            FOLDER_GEN.setdefault(str(self.local_folder.resolve()), self._folder_lock.generation())
        self._system = system_of(client)
        self.hnsw = {**DEFAULT_HNSW, **(hnsw or {})}
        self.full_max_dim, self.ann_dim, self.candidates = full_max_dim, ann_dim, candidates
        self.memory_dtype = memory_dtype
        self.requested_layout = layout
        self.memories_url = str(memories) if memories is not None else None
        self.storage_options = dict(storage_options or {})
        self.max_batch = int(client.get_max_batch_size())
        self._lock = threading.RLock()
        self._col: Any = None
        self._layout: Layout | None = None

    @property
    def where(self) -> str:
        """The store's folder, or its collection name, for messages."""
        return str(self.local_folder) if self.local_folder else f"collection {self.name!r}"

    # ------------------------------------------------------------------ collection
    @chroma_errors
    def exists(self) -> bool:
        """Whether the collection exists."""
        return self._get_collection() is not None

    @contextlib.contextmanager
    def _writing(self, bump: bool = True) -> Iterator[None]:
        """Hold this store's thread lock and the folder's inter-process lock, on a fresh Chroma view; ``bump``
        records a write (other processes then reload their view)."""
        lock = self._folder_lock
        with self._lock, lock.hold() if lock else contextlib.nullcontext():
            self._sync()
            try:
                yield
            finally:
                if lock is not None and bump:
                    FOLDER_GEN[str(lock.folder.resolve())] = lock.bump()

    def _sync(self) -> None:
        """Reload Chroma's view when another process wrote into the folder since this process loaded it."""
        lock = self._folder_lock
        if lock is None:
            return
        key = str(lock.folder.resolve())
        if lock.generation() == FOLDER_GEN.get(key) and system_of(self.client) is self._system:
            return
        with self._lock, lock.hold():
            gen = lock.generation()
            if gen != FOLDER_GEN.get(key):
                if not self._own_client:
                    msg = (
                        f"another process wrote into {lock.folder} since this Chroma client opened it, so its view "
                        "is stale: give ClaraStore a path instead of a client, or use a Chroma server for many writers"
                    )
                    raise StoreError(msg)
                logger.info("another process wrote into %s: reloading Chroma's view of it", lock.folder)
                drop_system(self.client)
                FOLDER_GEN[key] = gen
            if system_of(self.client) is not self._system:
                self.client = open_client(lock.folder)
                self._system = system_of(self.client)
                self._col, self._layout = None, None

    def _get_collection(self) -> Any:
        self._sync()
        if self._col is None:
            with self._writing(bump=False):  # no other process writes while this one loads the layout
                return self._load_collection()
        return self._col

    def _load_collection(self) -> Any:
        from chromadb.errors import NotFoundError

        if self._col is None:
            try:
                self._col = self.client.get_collection(self.name)
            except (NotFoundError, ValueError):
                return None
            self._check_format()
            self._open_layout()
        return self._col

    def _collection(self) -> Any:
        col = self._get_collection()
        if col is None:
            where = f" in {self.path}" if self.path else ""
            msg = f"no CLaRa store named {self.name!r}{where}; build one first with `clara index --db DIR PATH...`"
            raise StoreError(msg)
        return col

    def _layout_of(self) -> Layout:
        """The open collection's layout."""
        self._collection()
        assert self._layout is not None
        return self._layout

    @property
    def meta(self) -> dict[str, Any]:
        """The collection's metadata (model fingerprint, layout, widths)."""
        col = self._col if self._col is not None else self._collection()  # no reload in the middle of an operation
        return dict(col.metadata or {})

    @property
    def layout(self) -> str:
        """The collection's layout: ``"full"``, ``"pca"`` or ``"shared"``."""
        return str(self.meta[keys.LAYOUT])

    def _check_format(self) -> None:
        meta = self._col.metadata or {}
        if keys.FINGERPRINT not in meta:
            msg = f"Chroma collection {self.name!r} was not made by clara-plugins (no fingerprint); use another name"
            self._col = None
            raise StoreError(msg)
        if int(meta.get(keys.FORMAT, 0)) > FORMAT_VERSION:
            msg = f"store format {meta[keys.FORMAT]} is newer than this clara-plugins ({FORMAT_VERSION}); upgrade it"
            self._col = None
            raise StoreError(msg)

    @chroma_errors
    def bind(self, fingerprint: str, memory_dim: int, n_mem: int, hidden_size: int, source: str | None) -> None:
        """Create the collection for a model, or check that the existing one was built by the same model.

        Raises:
            ModelMismatchError: the collection was built by another model (the message names both).
        """
        with self._lock:
            col = self._get_collection()
            if col is None:
                with self._writing():
                    if self._get_collection() is None:  # another process may have created it meanwhile
                        self._create(fingerprint, memory_dim, n_mem, hidden_size, source)
                        return
            meta = self.meta
            if meta[keys.FINGERPRINT] != fingerprint:
                msg = (
                    f"store {self.name!r} ({self.path or 'client'}) was built by model {meta.get(keys.MODEL)!r} "
                    f"(fingerprint {meta[keys.FINGERPRINT][:16]}), not by {source!r} "
                    f"(fingerprint {fingerprint[:16]}); "
                    "open it with its own model (clara ask/search use it by default) or index into a new folder"
                )
                if keys.FP_BASE not in meta:
                    msg += (
                        "; this store was built before fingerprints covered the base weights (clara-plugins 0.x), "
                        "so its fingerprint differs even for the same model: re-index it into a new folder"
                    )
                raise ModelMismatchError(msg)

    def _new_layout_name(self, memory_dim: int) -> str:
        """The layout a new collection gets (``layout`` and ``memories`` as given, else by width and client)."""
        if self.requested_layout == "auto":
            if self.memories_url is not None:
                return "shared"
            return "pca" if memory_dim > self.full_max_dim and self.local_folder is not None else "full"
        name = self.requested_layout
        if name == "pca" and self.local_folder is None:
            msg = (
                "layout 'pca' keeps memories in a sidecar file and needs a local PersistentClient (give path=); "
                "with a Chroma server use layout='shared' and memories='s3://bucket/prefix' (or another fsspec URL)"
            )
            raise StoreError(msg)
        if name == "shared" and self.memories_url is None:
            msg = "layout 'shared' keeps memories in object storage: give memories='s3://bucket/prefix' (an fsspec URL)"
            raise InputError(msg)
        if name != "shared" and self.memories_url is not None:
            msg = f"memories={self.memories_url!r} is only used by layout 'shared', not {name!r}"
            raise InputError(msg)
        if name == "full" and self.memory_dtype == "int8":
            msg = (
                "memory_dtype='int8' needs the 'pca' or 'shared' layout; in the 'full' layout Chroma keeps each memory "
                "as its float32 vector. Open the store with a path and layout='pca'"
            )
            raise StoreError(msg)
        return name

    def _create(self, fingerprint: str, memory_dim: int, n_mem: int, hidden_size: int, source: str | None) -> None:
        layout = self._new_layout_name(memory_dim)
        meta = {
            keys.FORMAT: FORMAT_VERSION,
            keys.FINGERPRINT: fingerprint,
            keys.MODEL: str(source or ""),
            keys.LAYOUT: layout,
            keys.MEMORY_DIM: memory_dim,
            keys.N_MEM: n_mem,
            keys.HIDDEN_SIZE: hidden_size,
            keys.MEMORY_DTYPE: self.memory_dtype,
            keys.ANN_DIM: memory_dim if layout == "full" else self.ann_dim,
            keys.CANDIDATES: self.candidates,
            keys.FP_BASE: 1,
        }
        if layout == "shared":
            meta[keys.MEMORIES_URL] = self.memories_url
        config = {"hnsw": {"space": "cosine", **self.hnsw}}
        self._col = self.client.get_or_create_collection(
            self.name, metadata=meta, configuration=config, embedding_function=None
        )
        self._check_format()
        self._open_layout()
        logger.info("created CLaRa store %r (%s layout, %d-d memories)", self.name, layout, memory_dim)
        if layout == "full" and memory_dim > self.full_max_dim:
            logger.warning(
                "store %r keeps %d-d memories whole in Chroma (%d KB of fp32 per chunk in the server's HNSW memory); "
                "for a server store of wide memories use layout='shared' with memories='s3://bucket/prefix' "
                "(clara index --memories URL), see docs/store.md",
                self.name,
                memory_dim,
                memory_dim * 4 // 1024,
            )

    def _open_layout(self) -> None:
        name = self._col.metadata[keys.LAYOUT]
        if self.memories_url is not None and name != "shared":
            msg = f"store {self.name!r} has the {name!r} layout, which keeps no memories in {self.memories_url!r}"
            raise InputError(msg)
        if name == "full":
            self._layout = FullLayout(self.where)
        elif name == "pca":
            from clara_plugins.store.local import PcaLayout

            if self.local_folder is None:
                msg = f"store {self.name!r} keeps its memories in a local sidecar folder; open it with its path"
                raise StoreError(msg)
            layout = PcaLayout(self, self._col)
            layout.open()
            self._layout = layout
        elif name == "shared":
            from clara_plugins.store.shared import SharedLayout

            self._layout = SharedLayout.open(self, self._col)
        else:
            msg = f"store {self.name!r} has layout {name!r}, which this clara-plugins does not know; upgrade it"
            raise StoreError(msg)

    # ------------------------------------------------------------------ reading
    def _hit(self, cid: str, text: str | None, meta: dict[str, Any] | None, score: float) -> Hit:
        """A Hit from a Chroma record, its text checked against the record's content hash (when ``verify``)."""
        expected = (meta or {}).get(keys.HASH)
        if self.verify_reads and text is not None and expected is not None and text_hash(text) != expected:
            where = self.local_folder / "chroma.sqlite3" if self.local_folder else f"collection {self.name!r}"
            msg = (
                f"store file {where} is damaged: the text of chunk {cid!r} does not match its content hash "
                f"({expected}); it was changed outside the store, so it is not served. Re-index its document "
                f"({(meta or {}).get(keys.DOC)!r}) or restore a backup; `clara check --db DIR` lists all such chunks"
            )
            raise StoreError(msg)
        return hit_from(cid, text, meta, score)

    @chroma_errors
    def count(self) -> int:
        """Number of stored chunks."""
        return int(self._collection().count())

    @chroma_errors
    def doc_status(self, doc_ids: Sequence[str]) -> dict[str, tuple[str, int, int]]:
        """Per stored document id: ``(doc_hash, n_chunks expected, chunks present)``."""
        out: dict[str, tuple[str, int, int]] = {}
        for res in get_where_in(self._collection(), keys.DOC, doc_ids, ["metadatas"]):
            for meta in res["metadatas"] or []:
                doc = meta[keys.DOC]
                present = out[doc][2] if doc in out else 0
                out[doc] = (meta[keys.DOC_HASH], int(meta[keys.N_CHUNKS]), present + 1)
        return out

    @chroma_errors
    def records_by_hash(self, hashes: Sequence[str]) -> dict[str, Hit]:
        """A stored chunk (score 0) per content hash among ``hashes`` that is in the store."""
        found: dict[str, Hit] = {}
        for res in get_where_in(self._collection(), keys.HASH, hashes, ["metadatas", "documents"]):
            for cid, doc, meta in zip(res["ids"], res["documents"], res["metadatas"] or []):
                found.setdefault(meta[keys.HASH], self._hit(cid, doc, meta, 0.0))
        return found

    def memories_by_hash(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored memories (flattened, float32) of chunks with these content hashes, for reuse without compressing."""
        found = self.records_by_hash(hashes)
        if not found:
            return {}
        mems = self.get_memories([hit.id for hit in found.values()])
        return {h: mems[i] for i, h in enumerate(found)}

    @chroma_errors
    def find_memories(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Flattened float32 memories of the stored chunks among ``ids`` (ids not stored are left out)."""
        col = self._collection()
        ids = list(dict.fromkeys(ids))
        return self._layout_of().memories(col, ids) if ids else {}

    def get_memories(self, ids: Sequence[str]) -> np.ndarray:
        """Flattened memories ``[len(ids), memory_dim]`` (float32) of stored chunks, in the order of ``ids``.

        Raises:
            StoreError: an id is not in the store.
        """
        found = self.find_memories(ids)
        missing = [cid for cid in ids if cid not in found]
        if missing:
            msg = f"chunk ids not in the store: {missing[:5]}"
            raise StoreError(msg)
        if not ids:
            return np.zeros((0, int(self.meta[keys.MEMORY_DIM])), dtype=np.float32)
        return np.stack([found[cid] for cid in ids])

    @chroma_errors
    def get_records(self, ids: Sequence[str]) -> dict[str, Hit]:
        """Stored chunks by id (score 0); ids not stored are left out."""
        found = get_by_ids(self._collection(), ids, ["documents", "metadatas"])
        return {cid: self._hit(cid, doc, meta, 0.0) for cid, (doc, meta) in found.items()}

    @chroma_errors
    def records_by_doc(self, doc_ids: Sequence[str]) -> list[Hit]:
        """Every stored chunk (score 0) of the given document ids, by document then position; unknown ids give none."""
        out = []
        for res in get_where_in(self._collection(), keys.DOC, doc_ids, ["documents", "metadatas"]):
            rows = sorted(zip(res["ids"], res["documents"], res["metadatas"]), key=lambda r: int(r[2][keys.INDEX]))
            out.extend(self._hit(cid, doc, meta, 0.0) for cid, doc, meta in rows)
        order = {d: i for i, d in enumerate(dict.fromkeys(doc_ids))}
        return sorted(out, key=lambda h: order[h.doc_id])  # stable: chunks stay in their order

    def iter_records(self, texts: bool = True) -> Iterator[Hit]:
        """Every stored chunk (score 0), a page at a time; ``texts=False`` leaves texts empty (faster)."""
        include = ["metadatas", "documents"] if texts else ["metadatas"]
        for res in pages(self._collection(), include):
            docs = res["documents"] if texts else [None] * len(res["ids"])
            yield from (self._hit(cid, doc, meta, 0.0) for cid, doc, meta in zip(res["ids"], docs, res["metadatas"]))

    @chroma_errors
    def records_containing(self, text: str, limit: int = 10) -> list[Hit]:
        """Stored chunks (score 0) whose text contains ``text`` (Chroma's ``$contains``), at most ``limit``."""
        res = self._collection().get(
            where_document={"$contains": text}, include=["documents", "metadatas"], limit=limit
        )
        return [
            self._hit(cid, doc, meta, 0.0) for cid, doc, meta in zip(res["ids"], res["documents"], res["metadatas"])
        ]

    @chroma_errors
    def search(self, queries: np.ndarray, k: int, where: dict[str, Any] | None = None) -> list[list[Hit]]:
        """Top ``k`` chunks per query vector ``[B, memory_dim]``, best first, scored by exact CLaRa cosine."""
        col = self._collection()
        q = np.asarray(queries, dtype=np.float32).reshape(len(queries), -1)
        if q.shape[1] != int(self.meta[keys.MEMORY_DIM]):
            msg = f"query width {q.shape[1]} does not match the store's memory width {self.meta[keys.MEMORY_DIM]}"
            raise InputError(msg)
        ranked = self._layout_of().search(col, q, k, user_where(where))
        return self._hits(col, ranked)

    def _hits(self, col: Any, ranked: list[list[Candidate]]) -> list[list[Hit]]:
        """Hits of ranked candidates, fetching in one ``get`` the texts a layout's search did not bring."""
        wanted = [cid for row in ranked for cid, _, text, _ in row if text is None]
        texts = {cid: doc for cid, (doc,) in get_by_ids(col, wanted, ["documents"]).items()} if wanted else {}
        return [
            [self._hit(cid, texts.get(cid) if text is None else text, meta, score) for cid, meta, text, score in row]
            for row in ranked
        ]

    # ------------------------------------------------------------------ writing
    @chroma_errors
    def add(self, records: Sequence[ChunkRecord], memories: np.ndarray) -> None:
        """Store chunks with their flattened memories ``[N, memory_dim]`` (ids must be new or are overwritten).

        Writes go in batches of at most ``client.get_max_batch_size()``. Layouts that keep memories outside Chroma
        write them before the Chroma records that point at them.
        """
        mems = np.asarray(memories, dtype=np.float32).reshape(len(records), -1)
        for rec in records:
            if rec.hash != text_hash(rec.text):
                msg = f"record {rec.id!r}: hash {rec.hash!r} is not text_hash(text) {text_hash(rec.text)!r}"
                raise InputError(msg)
        self._collection()
        with self._writing():
            col, layout = self._collection(), self._layout_of()
            for start in range(0, len(records), self.max_batch):
                recs = records[start : start + self.max_batch]
                layout.add(col, recs, mems[start : start + self.max_batch], [record_meta(r) for r in recs])

    @chroma_errors
    def delete(self, ids: Sequence[str] | None = None, doc_ids: Sequence[str] | None = None) -> None:
        """Delete chunks by chunk id and/or every chunk of the given document ids.

        Memories outside Chroma (``pca``, ``shared``) stay in their append-only files, no longer referenced.
        """
        self._collection()
        with self._writing():
            col = self._collection()
            if ids:
                for start in range(0, len(ids), self.max_batch):
                    col.delete(ids=list(ids[start : start + self.max_batch]))
            docs = list(doc_ids or [])
            for start in range(0, len(docs), 500):
                col.delete(where={keys.DOC: {"$in": docs[start : start + 500]}})

    def fit_rows_wanted(self) -> int:
        """Chunks the next ``add`` should bring at once so that the layout fits its projection on them (0: any)."""
        wanted = getattr(self._layout_of(), "fit_rows_wanted", None)
        return int(wanted()) if wanted else 0

    # ------------------------------------------------------------------ checking
    @chroma_errors
    def verify(self, repair: bool = False) -> Any:
        """Check every record: its text against its content hash, its memory against its CRC, its row of the
        exact scan (``pca``), and that a ``where`` search on its document finds it through Chroma's HNSW index.

        Args:
            repair: Rebuild what is derived (the scan files; records HNSW lost are deleted and added again with the
                same id, text, metadata and vector). Damaged texts and memories are reported, never rewritten.

        Returns:
            A ``verify.VerifyReport`` (``.ok``, ``.lines()``).
        """
        from clara_plugins.store.verify import verify_store

        return verify_store(self, repair=repair)

    # ------------------------------------------------------------------ info
    @chroma_errors
    def info(self) -> StoreInfo:
        """Counts, model and layout of the store."""
        col = self._collection()
        meta = self.meta
        docs = {m[keys.DOC] for res in pages(col, ["metadatas"]) for m in res["metadatas"]}
        folder = self.local_folder
        disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder else None
        return StoreInfo(
            collection=self.name,
            path=str(folder) if folder else None,
            layout=meta[keys.LAYOUT],
            fingerprint=meta[keys.FINGERPRINT],
            model_source=meta.get(keys.MODEL) or None,
            memory_dim=int(meta[keys.MEMORY_DIM]),
            n_mem=int(meta[keys.N_MEM]),
            hidden_size=int(meta[keys.HIDDEN_SIZE]),
            n_chunks=col.count(),
            n_docs=len(docs),
            hnsw=dict((col.configuration or {}).get("hnsw") or {}),
            memory_dtype=str(meta.get(keys.MEMORY_DTYPE, "float16")),
            memories_url=meta.get(keys.MEMORIES_URL),
            memories_bytes=self._layout_of().shards.nbytes() if meta[keys.LAYOUT] == "shared" else None,
            disk_bytes=disk,
        )


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        msg = f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}"
        raise InputError(msg)
