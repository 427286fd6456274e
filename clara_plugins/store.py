"""``ClaraStore``: compressed CLaRa memories in Chroma, one record per chunk, ranked by exact CLaRa cosine.

Two layouts, chosen when the collection is created and recorded in its metadata (design and numbers in
``docs/store.md``):

- ``"full"``: the Chroma embedding *is* the flattened memory (cosine space). Chroma's distances are then the exact
  CLaRa cosine and the memories come back from Chroma itself, so any client works (``PersistentClient``,
  ``HttpClient``, ``EphemeralClient``). Used whenever ``memory_dim <= full_max_dim`` (1,024) and for non-local
  clients.
- ``"pca"``: for wide memories (3,072 numbers per chunk for the bundled tiny model, 65,536 for 7B at compression
  16) on a local ``PersistentClient``. Full memories live as fp16 rows in an append-only memory-mapped sidecar file
  next to the Chroma folder; a search scans the 256-d principal-component projections of every row exactly
  (``store_scan.ScanIndex``) and re-ranks the top candidates by exact fp32 cosine over the sidecar memories.
  Chroma indexes the same projections (augmented, cosine space) for ``where``-filtered searches.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clara_plugins.errors import InputError, ModelMismatchError, StoreError
from clara_plugins.store_checks import text_hash
from clara_plugins.store_lock import FOLDER_GEN, FolderLock, drop_system, system_of
from clara_plugins.store_scan import ScanIndex
from clara_plugins.store_sidecar import Projection, SidecarMemories, torch_float
from clara_plugins.store_verify import complete_filtered

logger = logging.getLogger(__name__)

RESERVED_PREFIX = "clara_"
FORMAT_VERSION = 2  # 2: the pca layout indexes augmented projections in cosine space (store_sidecar.Projection)
# HNSW settings measured by bench/bench_store.py (recall@10 vs exact ranking >= 0.98; docs/store.md)
DEFAULT_HNSW = {"ef_construction": 200, "ef_search": 512, "max_neighbors": 32}
# the "pca" projection is refitted (on a sample of at most this many chunks) each time the store doubles past it
REFIT_MAX_ROWS = 2048
_GET_BATCH = 5000  # ids per Chroma get (SQLite statement variable limit)


@dataclass
class Hit:
    """One retrieved chunk.

    Attributes:
        id: Chunk id (``"{doc_id}#{i}"``).
        text: The chunk's text.
        score: Exact CLaRa cosine between the question and the chunk's memory (higher is better).
        metadata: The user metadata of the chunk's document.
        doc_id: Id of the document the chunk comes from.
        start: Character offset of the chunk in its document.
        end: Character offset just past the chunk.
    """

    id: str
    text: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)
    doc_id: str = ""
    start: int = 0
    end: int = 0


@dataclass
class ChunkRecord:
    """What the store keeps about one chunk besides its memory."""

    id: str
    text: str
    doc_id: str
    start: int
    end: int
    index: int  # position of the chunk in its document
    n_chunks: int  # chunks of the document (a document is complete when all are stored)
    doc_hash: str  # hash of the whole document text
    hash: str  # hash of the chunk text (content address of its memory)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class StoreInfo:
    """What ``clara info`` reports."""

    collection: str
    path: str | None
    mode: str
    fingerprint: str
    model_source: str | None
    memory_dim: int
    n_mem: int
    hidden_size: int
    n_chunks: int
    n_docs: int
    hnsw: dict[str, Any]
    disk_bytes: int | None = None


def validate_metadata(metadata: Any, where: str) -> dict[str, Any]:
    """Check user metadata against what Chroma accepts; returns a copy.

    Raises:
        InputError: naming the record (``where``), the key and the value.
    """
    from chromadb.api.types import validate_metadata as chroma_validate

    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        msg = f"metadata of {where} must be a dict, got {type(metadata).__name__}"
        raise InputError(msg)
    for key in metadata:
        if isinstance(key, str) and key.startswith(RESERVED_PREFIX):
            msg = f"metadata key {key!r} of {where} starts with the reserved prefix {RESERVED_PREFIX!r}; rename it"
            raise InputError(msg)
    if not metadata:
        return {}
    try:
        chroma_validate(metadata)
    except (ValueError, TypeError) as err:
        msg = f"metadata of {where} is not accepted by Chroma: {err}"
        raise InputError(msg) from err
    for key, value in metadata.items():
        if value is None or (isinstance(value, list) and not value):
            msg = f"metadata value of key {key!r} in {where} is {value!r}; Chroma cannot store it, drop the key"
            raise InputError(msg)
    return dict(metadata)


def _open_client(path: str | Path | None) -> Any:
    """A PersistentClient on ``path`` (EphemeralClient when None); a damaged folder becomes a StoreError."""
    import chromadb
    from chromadb.errors import ChromaError

    if path is None:
        return chromadb.EphemeralClient()
    if Path(path).exists() and not Path(path).is_dir():
        msg = f"store path {str(path)!r} is a file, not a folder"
        raise StoreError(msg)
    try:
        return chromadb.PersistentClient(path=str(path))
    except (ChromaError, OSError, ValueError) as err:
        msg = (
            f"cannot open the Chroma store in {str(path)!r} ({err}). If a program outside clara-plugins is writing "
            "this folder, retry when it has finished (several processes writing one store should use a Chroma "
            "server: `chroma run --path DIR` and ClaraStore(client=chromadb.HttpClient(...))); otherwise the "
            "folder's chroma.sqlite3 is damaged or was written by an incompatible chromadb version"
        )
        raise StoreError(msg) from err


def _chroma_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Turn chromadb's own errors inside a store method into a StoreError naming the folder."""

    @functools.wraps(method)
    def wrapper(self: ClaraStore, *args: Any, **kwargs: Any) -> Any:
        from chromadb.errors import ChromaError

        try:
            return method(self, *args, **kwargs)
        except ChromaError as err:
            where = self.local_folder or f"collection {self.name!r}"
            msg = (
                f"Chroma failed in {method.__name__} on the store in {where}: {type(err).__name__}: {err}. "
                "Its database (chroma.sqlite3) or index files may be damaged: run `clara check --db DIR`, and restore "
                "a backup or re-index if it cannot be repaired"
            )
            raise StoreError(msg) from err

    return wrapper


def _client_folder(client: Any) -> Path | None:
    """The folder of a local persistent client, else None (server or in-memory client)."""
    try:
        settings = client.get_settings()
    except AttributeError:
        return None
    if not getattr(settings, "is_persistent", False):
        return None
    impl = str(getattr(settings, "chroma_api_impl", ""))
    if "fastapi" in impl.lower() or "async" in impl.lower():
        return None
    return Path(settings.persist_directory)


class ClaraStore:
    """Compressed memories of chunks in a Chroma collection.

    Args:
        path: Folder of an embedded ``chromadb.PersistentClient`` (created if missing). Ignored with ``client``.
        client: Any chromadb client (``HttpClient`` for a server). Default: a ``PersistentClient`` on ``path``,
            or an in-memory ``EphemeralClient`` when both are None.
        collection: Collection name.
        hnsw: HNSW settings (``ef_construction``, ``ef_search``, ``max_neighbors``) for a new collection.
        full_max_dim: Widest memory kept whole in Chroma; wider ones use the ``"pca"`` layout on local clients.
        ann_dim: Width of the projection indexed in ``"pca"`` layout.
        candidates: ANN candidates re-ranked exactly per question in ``"pca"`` layout (at least ``k``).
        memory_dtype: ``"float16"`` (default), ``"float32"`` or ``"int8"`` (one float32 scale per memory vector: about
            half the bytes of float16; ``bench/bench_int8.py`` measures the effect) rows of the sidecar file of the
            ``"pca"`` layout. A new collection records it; an existing one keeps its own.
        layout: ``"auto"`` (default: ``"pca"`` for memories wider than ``full_max_dim`` on a local client, else
            ``"full"``), ``"full"`` or ``"pca"``, for a new collection; an existing one keeps its own.
        verify: Check what is read against the checksums written with it (each memory and scan row's CRC-32, each
            chunk text's content hash); damage raises ``StoreError`` naming the file and rows. Checksums are always
            written; ``False`` only skips the checks on read (``bench/bench_store.py --part verify`` measures them).

    On a local folder every write holds an inter-process lock (``store_lock``), so several processes may index
    into one folder one batch at a time; a process reopens its Chroma client when another one wrote since.
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
        verify: bool = True,
    ) -> None:
        self._own_client = client is None
        self._folder_lock: FolderLock | None = None
        if client is None:
            if path is not None and Path(path).exists() and not Path(path).is_dir():
                msg = f"store path {str(path)!r} is a file, not a folder"
                raise StoreError(msg)
            self._folder_lock = FolderLock(path) if path is not None else None
            with self._folder_lock.hold() if self._folder_lock else contextlib.nullcontext():
                client = _open_client(path)  # two processes creating one folder race in Chroma's migrations
                if self._folder_lock:
                    FOLDER_GEN.setdefault(str(self._folder_lock.folder.resolve()), self._folder_lock.generation())
        self.client = client
        self.verify_reads = verify
        self.name = collection
        self.path = Path(path) if path is not None else _client_folder(client)
        self.local_folder = _client_folder(client)
        if self._folder_lock is None and self.local_folder is not None:
            self._folder_lock = FolderLock(self.local_folder)
            FOLDER_GEN.setdefault(str(self.local_folder.resolve()), self._folder_lock.generation())
        self._system = system_of(client)
        self.hnsw = {**DEFAULT_HNSW, **(hnsw or {})}
        self.full_max_dim, self.ann_dim, self.candidates = full_max_dim, ann_dim, candidates
        if memory_dtype not in ("float16", "float32", "int8"):
            msg = f"memory_dtype must be 'float16', 'float32' or 'int8', got {memory_dtype!r}"
            raise InputError(msg)
        self.memory_dtype = memory_dtype
        if layout not in {"auto", "full", "pca"}:
            msg = f"layout must be 'auto', 'full' or 'pca', got {layout!r}"
            raise InputError(msg)
        self.layout = layout
        self.max_batch = int(client.get_max_batch_size())
        self._lock = threading.RLock()
        self._col: Any = None
        self._sidecar: SidecarMemories | None = None
        self._scan: ScanIndex | None = None
        self._projection: Projection | None = None
        self._projection_mtime = 0

    # ------------------------------------------------------------------ collection
    @_chroma_errors
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
                self.client = _open_client(lock.folder)
                self._system = system_of(self.client)
                self._col, self._sidecar, self._scan, self._projection = None, None, None, None

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

    @property
    def meta(self) -> dict[str, Any]:
        """The collection's metadata (model fingerprint, layout, widths)."""
        col = self._col if self._col is not None else self._collection()  # no reload in the middle of an operation
        return dict(col.metadata or {})

    @property
    def mode(self) -> str:
        """``"full"`` or ``"pca"``."""
        return str(self.meta["clara_mode"])

    def _check_format(self) -> None:
        meta = self._col.metadata or {}
        if "clara_fingerprint" not in meta:
            msg = f"Chroma collection {self.name!r} was not made by clara-plugins (no fingerprint); use another name"
            self._col = None
            raise StoreError(msg)
        if int(meta.get("clara_format", 0)) > FORMAT_VERSION:
            msg = f"store format {meta['clara_format']} is newer than this clara-plugins ({FORMAT_VERSION}); upgrade it"
            self._col = None
            raise StoreError(msg)

    @_chroma_errors
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
            if meta["clara_fingerprint"] != fingerprint:
                msg = (
                    f"store {self.name!r} ({self.path or 'client'}) was built by model {meta.get('clara_model')!r} "
                    f"(fingerprint {meta['clara_fingerprint'][:16]}), not by {source!r} "
                    f"(fingerprint {fingerprint[:16]}); "
                    "open it with its own model (clara ask/search use it by default) or index into a new folder"
                )
                if "clara_fp_base" not in meta:
                    msg += (
                        "; this store was built before fingerprints covered the base weights (clara-plugins 0.x), "
                        "so its fingerprint differs even for the same model: re-index it into a new folder"
                    )
                raise ModelMismatchError(msg)

    def _create(self, fingerprint: str, memory_dim: int, n_mem: int, hidden_size: int, source: str | None) -> None:
        mode = "pca" if memory_dim > self.full_max_dim and self.local_folder is not None else "full"
        if self.layout == "pca" and self.local_folder is None:
            msg = "layout 'pca' keeps memories in a sidecar file and needs a local PersistentClient (give path=)"
            raise StoreError(msg)
        mode = mode if self.layout == "auto" else self.layout
        if mode == "full" and self.memory_dtype == "int8":
            msg = (
                "memory_dtype='int8' needs the 'pca' layout (memories in a local sidecar file); in the 'full' layout "
                "Chroma keeps each memory as its float32 vector. Open the store with a path and layout='pca'"
            )
            raise StoreError(msg)
        meta = {
            "clara_format": FORMAT_VERSION,
            "clara_fingerprint": fingerprint,
            "clara_model": str(source or ""),
            "clara_mode": mode,
            "clara_memory_dim": memory_dim,
            "clara_n_mem": n_mem,
            "clara_hidden_size": hidden_size,
            "clara_memory_dtype": self.memory_dtype,
            "clara_ann_dim": self.ann_dim if mode == "pca" else memory_dim,
            "clara_candidates": self.candidates,
            "clara_fp_base": 1,  # the fingerprint covers the base weights (v2)
        }
        config = {"hnsw": {"space": "cosine", **self.hnsw}}
        self._col = self.client.get_or_create_collection(
            self.name, metadata=meta, configuration=config, embedding_function=None
        )
        self._check_format()
        self._open_layout()
        logger.info("created CLaRa store %r (%s layout, %d-d memories)", self.name, mode, memory_dim)

    def _open_layout(self) -> None:
        meta = self._col.metadata
        if meta["clara_mode"] != "pca":
            return
        if self.local_folder is None:
            msg = f"store {self.name!r} keeps its memories in a local sidecar folder; open it with its path"
            raise StoreError(msg)
        folder = self.local_folder / "clara_memories" / str(self._col.id)
        with self._writing(bump=False):
            dim, dtype = int(meta["clara_memory_dim"]), meta["clara_memory_dtype"]
            group = int(meta["clara_hidden_size"]) if dtype == "int8" else None  # one scale per memory vector
            self._sidecar = SidecarMemories(folder, dim, dtype, group=group)
            self._sidecar.verify = self.verify_reads
            self._sidecar.recover(self._referenced_end)
            augment = int(meta.get("clara_format", 1)) >= 2
            nxt = folder / "projection.next.npz"
            if nxt.exists():  # a refit was cut short: finish it (or redo it when its file is damaged)
                proj = self._load_projection(nxt)
                with self._writing(), self._sidecar.write_lock():
                    if proj is not None:
                        self._apply_projection(self._col, proj)
                    else:
                        nxt.unlink()
                        self._refit(self._col, augment=augment)
            if not self._projection_readable(folder / "projection.npz") and self._sidecar.committed > 0:
                logger.warning("projection file of %s is missing or damaged: refitting it from the memories", folder)
                with self._writing(), self._sidecar.write_lock():
                    self._refit(self._col, augment=augment)
            if (folder / "projection.npz").exists():
                try:
                    self._open_scan(self._current_projection())
                except StoreError as err:  # damaged scan rows: searches raise it; verify/repair can still open
                    logger.error("%s", err)

    @staticmethod
    def _projection_readable(path: Path) -> bool:
        try:
            Projection.load(path)
        except (StoreError, OSError):
            return False
        return True

    @staticmethod
    def _load_projection(path: Path) -> Projection | None:
        try:
            return Projection.load(path)
        except StoreError:
            return None

    def _open_scan(self, projection: Projection) -> None:
        """Open the exact-scan index, cutting rows of an unfinished batch or rebuilding it when it is stale."""
        assert self._sidecar is not None
        scan = ScanIndex(self._sidecar.folder, projection.basis.shape[1])
        scan.verify = self.verify_reads
        with self._sidecar.write_lock():
            committed = self._sidecar.refresh_committed()  # another process may have committed rows since we opened
            if scan.usable(committed, projection.key):
                scan.truncate(committed)
            else:
                self._rebuild_scan(scan, projection, self._rows_to_ids())
        self._scan = scan

    def _metadata_pages(self, col: Any) -> Iterator[tuple[list[str], list[dict[str, Any]]]]:
        """``(ids, metadatas)`` of every record, a page at a time: one ``get`` of all records fails past SQLite's
        variable limit (about 30k chunks)."""
        page, start = min(_GET_BATCH, self.max_batch), 0
        while True:
            res = col.get(include=["metadatas"], limit=page, offset=start)
            if not res["ids"]:
                return
            yield res["ids"], res["metadatas"]
            start += page

    def _rows_to_ids(self) -> dict[int, str]:
        """Sidecar row -> chunk id of every Chroma record."""
        pages = self._metadata_pages(self._col)
        return {int(m["clara_row"]): cid for ids, metas in pages for cid, m in zip(ids, metas)}

    def _rebuild_scan(self, scan: ScanIndex, projection: Projection, ids_by_row: dict[int, str]) -> None:
        assert self._sidecar is not None
        scan.rebuild(ids_by_row, self._sidecar.committed, projection.project, self._sidecar.read, projection.key)

    def _current_projection(self) -> Projection:
        """The projection in use, reloaded when another process refitted it."""
        assert self._sidecar is not None
        path = self._sidecar.folder / "projection.npz"
        mtime = path.stat().st_mtime_ns
        if self._projection is None or mtime != self._projection_mtime:
            self._projection, self._projection_mtime = Projection.load(path), mtime
        return self._projection

    def _refit(self, col: Any, augment: bool | None = None) -> None:
        """Fit the projection again on a sample of all stored memories and re-project every record."""
        assert self._sidecar is not None
        n = self._sidecar.committed
        rows = np.sort(np.random.default_rng(0).choice(n, size=min(n, REFIT_MAX_ROWS), replace=False))
        augment = self._current_projection().augment if augment is None else augment
        proj = Projection.fit(self._sidecar.read(rows), int(col.metadata["clara_ann_dim"]), augment=augment)
        proj.save(self._sidecar.folder / "projection.next.npz")
        self._apply_projection(col, proj)

    def _apply_projection(self, col: Any, proj: Projection) -> None:
        """Re-project every record with ``proj``, then make it the current projection (call under write lock)."""
        assert self._sidecar is not None
        ids_by_row: dict[int, str] = {}
        for ids, metas in self._metadata_pages(col):
            rows = [int(m["clara_row"]) for m in metas]
            col.update(ids=ids, embeddings=proj.docs(self._sidecar.read(rows)))
            ids_by_row.update(zip(rows, ids))
        # the new projection takes over first: until the scan is rebuilt for it, searches see the key mismatch and
        # use HNSW (already re-projected); during the long update loop above the old scan and projection still agree
        folder = self._sidecar.folder
        os.replace(folder / "projection.next.npz", folder / "projection.npz")
        self._current_projection()
        scan = self._scan or ScanIndex(self._sidecar.folder, proj.basis.shape[1])
        scan.verify = self.verify_reads
        self._rebuild_scan(scan, proj, ids_by_row)
        self._scan = scan
        logger.info("re-projected %d chunks on a projection fitted to %d", len(ids_by_row), proj.fit_rows)

    def _referenced_end(self, committed: int) -> int:
        res = self._col.get(where={"clara_row": {"$gte": committed}}, include=["metadatas"])
        rows = [int(m["clara_row"]) for m in res["metadatas"] or []]
        return max(rows) + 1 if rows else committed

    # ------------------------------------------------------------------ reading
    def _hit(self, cid: str, text: str | None, meta: dict[str, Any] | None, score: float) -> Hit:
        """A Hit from a Chroma record, its text checked against the record's content hash (when ``verify``)."""
        expected = (meta or {}).get("clara_hash")
        if self.verify_reads and text is not None and expected is not None and text_hash(text) != expected:
            where = self.local_folder / "chroma.sqlite3" if self.local_folder else f"collection {self.name!r}"
            msg = (
                f"store file {where} is damaged: the text of chunk {cid!r} does not match its content hash "
                f"({expected}); it was changed outside the store, so it is not served. Re-index its document "
                f"({(meta or {}).get('clara_doc')!r}) or restore a backup; `clara check --db DIR` lists all such chunks"
            )
            raise StoreError(msg)
        return _hit(cid, text, meta, score)

    @_chroma_errors
    def count(self) -> int:
        """Number of stored chunks."""
        return int(self._collection().count())

    @_chroma_errors
    def doc_status(self, doc_ids: Sequence[str]) -> dict[str, tuple[str, int, int]]:
        """Per stored document id: ``(doc_hash, n_chunks expected, chunks present)``."""
        out: dict[str, tuple[str, int, int]] = {}
        col = self._collection()
        ids = list(dict.fromkeys(doc_ids))
        for start in range(0, len(ids), 500):
            res = col.get(where={"clara_doc": {"$in": ids[start : start + 500]}}, include=["metadatas"])
            for meta in res["metadatas"] or []:
                doc = meta["clara_doc"]
                present = out[doc][2] if doc in out else 0
                out[doc] = (meta["clara_dochash"], int(meta["clara_n"]), present + 1)
        return out

    @_chroma_errors
    def records_by_hash(self, hashes: Sequence[str]) -> dict[str, Hit]:
        """A stored chunk (score 0) per content hash among ``hashes`` that is in the store."""
        col = self._collection()
        uniq = list(dict.fromkeys(hashes))
        found: dict[str, Hit] = {}
        for start in range(0, len(uniq), 500):
            res = col.get(where={"clara_hash": {"$in": uniq[start : start + 500]}}, include=["metadatas", "documents"])
            for cid, doc, meta in zip(res["ids"], res["documents"], res["metadatas"] or []):
                found.setdefault(meta["clara_hash"], self._hit(cid, doc, meta, 0.0))
        return found

    def memories_by_hash(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored memories (flattened, float32) of chunks with these content hashes, for reuse without compressing."""
        found = self.records_by_hash(hashes)
        if not found:
            return {}
        mems = self.get_memories([hit.id for hit in found.values()])
        return {h: mems[i] for i, h in enumerate(found)}

    @_chroma_errors
    def find_memories(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Flattened float32 memories of the stored chunks among ``ids`` (ids not stored are left out)."""
        col = self._collection()
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}
        include = ["metadatas"] if self._sidecar is not None else ["embeddings"]
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(ids), _GET_BATCH):  # SQLite caps the variables of one statement
            res = col.get(ids=ids[start : start + _GET_BATCH], include=include)
            if self._sidecar is not None:
                mems = self._sidecar.read([int(m["clara_row"]) for m in res["metadatas"]])
            else:
                mems = np.asarray(res["embeddings"], dtype=np.float32)
            out.update((cid, mems[i]) for i, cid in enumerate(res["ids"]))
        return out

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
            return np.zeros((0, int(self.meta["clara_memory_dim"])), dtype=np.float32)
        return np.stack([found[cid] for cid in ids])

    @_chroma_errors
    def get_records(self, ids: Sequence[str]) -> dict[str, Hit]:
        """Stored chunks by id (score 0); ids not stored are left out."""
        ids, out = list(ids), {}
        for start in range(0, len(ids), _GET_BATCH):
            res = self._collection().get(ids=ids[start : start + _GET_BATCH], include=["documents", "metadatas"])
            out.update(
                (cid, self._hit(cid, doc, meta, 0.0))
                for cid, doc, meta in zip(res["ids"], res["documents"], res["metadatas"])
            )
        return out

    @_chroma_errors
    def records_by_doc(self, doc_ids: Sequence[str]) -> list[Hit]:
        """Every stored chunk (score 0) of the given document ids, by document then position; unknown ids give none."""
        col, ids, out = self._collection(), list(dict.fromkeys(doc_ids)), []
        for start in range(0, len(ids), 500):
            res = col.get(where={"clara_doc": {"$in": ids[start : start + 500]}}, include=["documents", "metadatas"])
            rows = sorted(zip(res["ids"], res["documents"], res["metadatas"]), key=lambda r: int(r[2]["clara_i"]))
            out.extend(self._hit(cid, doc, meta, 0.0) for cid, doc, meta in rows)
        order = {d: i for i, d in enumerate(ids)}
        return sorted(out, key=lambda h: order[h.doc_id])  # stable: chunks stay in their order

    @_chroma_errors
    def records_containing(self, text: str, limit: int = 10) -> list[Hit]:
        """Stored chunks (score 0) whose text contains ``text`` (Chroma's ``$contains``), at most ``limit``."""
        res = self._collection().get(
            where_document={"$contains": text}, include=["documents", "metadatas"], limit=limit
        )
        return [
            self._hit(cid, doc, meta, 0.0) for cid, doc, meta in zip(res["ids"], res["documents"], res["metadatas"])
        ]

    @_chroma_errors
    def search(self, queries: np.ndarray, k: int, where: dict[str, Any] | None = None) -> list[list[Hit]]:
        """Top ``k`` chunks per query vector ``[B, memory_dim]``, best first, scored by exact CLaRa cosine."""
        col = self._collection()
        q = np.asarray(queries, dtype=np.float32).reshape(len(queries), -1)
        if q.shape[1] != int(self.meta["clara_memory_dim"]):
            msg = f"query width {q.shape[1]} does not match the store's memory width {self.meta['clara_memory_dim']}"
            raise InputError(msg)
        where = _user_where(where)  # Chroma clips n_results to what it holds: no count() (5 ms at 100k chunks)
        if self._sidecar is None:
            include = ["documents", "metadatas", "distances"]
            res = col.query(query_embeddings=q, n_results=k, where=where, include=include)
            complete_filtered(col, q, res, k, where, self.local_folder or self.name)
            return [
                [self._hit(cid, doc, meta, 1.0 - float(d)) for cid, doc, meta, d in zip(*cols)]
                for cols in zip(res["ids"], res["documents"], res["metadatas"], res["distances"])
            ]
        return self._search_pca(col, q, k, where)

    def _search_pca(self, col: Any, q: np.ndarray, k: int, where: dict | None) -> list[list[Hit]]:
        """Candidates from the exact scan (HNSW with a ``where`` filter), then exact fp32 cosine over their memories."""
        import torch.nn.functional as F

        assert self._sidecar is not None
        projection = self._current_projection()
        n_cand = max(self.candidates, 4 * k)
        if self._scan is None:  # opened while empty; another process has added chunks since
            self._open_scan(projection)
        if where is None and self._scan is not None:
            scanned = self._scan_candidates(col, q, projection, n_cand)
            missing = [i for i, cands in enumerate(scanned) if cands is None]
            if missing:  # too many deleted rows among the scan's candidates: ask HNSW for those questions
                for i, cands in zip(missing, self._ann_candidates(col, q[missing], projection, n_cand, None)):
                    scanned[i] = cands
            candidates = scanned
        else:
            candidates = self._ann_candidates(col, q, projection, n_cand, where)
        ranked = []
        for qi, cands in enumerate(candidates):
            if not cands:
                ranked.append([])
                continue
            mems = torch_float(self._sidecar.read_values([int(meta["clara_row"]) for _, meta, _ in cands]))  # (C, D)
            scores = (mems @ F.normalize(torch_float(q[qi]), dim=0)) / mems.norm(dim=1).clamp_min(1e-12)  # (C,)
            top = scores.argsort(descending=True, stable=True)[:k].tolist()
            ranked.append([(*cands[i], float(scores[i])) for i in top])
        wanted = [cid for row in ranked for cid, _, text, _ in row if text is None]
        texts: dict[str, str] = {}
        if wanted:  # HNSW candidates come without their texts: one get for every question's top k
            got = col.get(ids=list(dict.fromkeys(wanted)), include=["documents"])
            texts = dict(zip(got["ids"], got["documents"]))
        return [
            [self._hit(cid, texts.get(cid) if text is None else text, meta, score) for cid, meta, text, score in row]
            for row in ranked
        ]

    def _scan_candidates(self, col: Any, q: np.ndarray, projection: Projection, n_cand: int) -> list[list | None]:
        """Per question the live ``(id, metadata, text)`` of the exact scan's top rows; None when too few are live."""
        assert self._sidecar is not None and self._scan is not None
        state = self._scan.state()
        if state is None or state["projection"] != projection.key:  # a refit is rebuilding the scan right now
            return [None] * len(q)
        committed = self._sidecar.refresh_committed()
        rows, ids = self._scan.top_rows(projection.project_queries(q), committed, n_cand)
        wanted = list(dict.fromkeys(cid for row in ids for cid in row if cid))
        records: dict[str, tuple[dict, str]] = {}
        for start in range(0, len(wanted), _GET_BATCH):
            got = col.get(ids=wanted[start : start + _GET_BATCH], include=["metadatas", "documents"])
            records.update((cid, (meta, doc)) for cid, meta, doc in zip(got["ids"], got["metadatas"], got["documents"]))
        out: list[list | None] = []
        for row_ids, row_rows in zip(ids, rows):
            # live: the record exists and still points at this row (re-indexed chunks get new rows)
            live = [
                (cid, records[cid][0], records[cid][1] or "")
                for cid, r in zip(row_ids, row_rows)
                if cid in records and int(records[cid][0]["clara_row"]) == r
            ]
            out.append(live if len(row_rows) < n_cand or len(live) >= n_cand // 2 else None)
        return out

    def _ann_candidates(
        self, col: Any, q: np.ndarray, projection: Projection, n_cand: int, where: dict | None
    ) -> list[list]:
        """Per question ``(id, metadata, None)`` of Chroma's HNSW top candidates over the projections."""
        vectors = projection.queries(q)
        res = col.query(query_embeddings=vectors, n_results=n_cand, where=where, include=["metadatas"])
        complete_filtered(col, vectors, res, n_cand, where, self.local_folder or self.name)
        return [[(c, meta, None) for c, meta in zip(ids, metas)] for ids, metas in zip(res["ids"], res["metadatas"])]

    # ------------------------------------------------------------------ writing
    @_chroma_errors
    def add(self, records: Sequence[ChunkRecord], memories: np.ndarray) -> None:
        """Store chunks with their flattened memories ``[N, memory_dim]`` (ids must be new or are overwritten).

        Writes go in batches of at most ``client.get_max_batch_size()``. In the ``"pca"`` layout the memories are
        written to the sidecar file before the Chroma records that point at them.
        """
        mems = np.asarray(memories, dtype=np.float32).reshape(len(records), -1)
        for rec in records:
            if rec.hash != text_hash(rec.text):
                msg = f"record {rec.id!r}: hash {rec.hash!r} is not text_hash(text) {text_hash(rec.text)!r}"
                raise InputError(msg)
        col = self._collection()
        with self._writing():
            col = self._collection()
            for start in range(0, len(records), self.max_batch):
                recs, batch = records[start : start + self.max_batch], mems[start : start + self.max_batch]
                if self._sidecar is None:
                    col.upsert(
                        ids=[r.id for r in recs],
                        embeddings=batch,
                        documents=[r.text for r in recs],
                        metadatas=[_record_meta(r) for r in recs],
                    )
                else:
                    self._add_pca(col, recs, batch)

    def _add_pca(self, col: Any, recs: Sequence[ChunkRecord], batch: np.ndarray) -> None:
        sidecar = self._sidecar
        assert sidecar is not None
        with sidecar.write_lock():
            path = sidecar.folder / "projection.npz"
            if not path.exists():
                Projection.fit(batch, self.ann_dim).save(path)
            projection = self._current_projection()
            if self._scan is None:  # a new store, or one that another process started after we opened it
                self._open_scan(projection)
            first = sidecar.append(batch)
            assert self._scan is not None
            self._scan.append(first, [r.id for r in recs], projection.project(batch), projection.key)
            metas = [{**_record_meta(r), "clara_row": first + i} for i, r in enumerate(recs)]
            col.upsert(
                ids=[r.id for r in recs],
                embeddings=projection.docs(batch),
                documents=[r.text for r in recs],
                metadatas=metas,
            )
            sidecar.commit(first + len(recs))
            if projection.fit_rows < min(REFIT_MAX_ROWS, sidecar.committed // 2):
                self._refit(col)

    @_chroma_errors
    def delete(self, ids: Sequence[str] | None = None, doc_ids: Sequence[str] | None = None) -> None:
        """Delete chunks by chunk id and/or every chunk of the given document ids.

        In the ``"pca"`` layout the sidecar rows stay (append-only); they are no longer referenced.
        """
        col = self._collection()
        with self._writing():
            col = self._collection()
            if ids:
                for start in range(0, len(ids), self.max_batch):
                    col.delete(ids=list(ids[start : start + self.max_batch]))
            docs = list(doc_ids or [])
            for start in range(0, len(docs), 500):
                col.delete(where={"clara_doc": {"$in": docs[start : start + 500]}})

    # ------------------------------------------------------------------ checking
    @_chroma_errors
    def verify(self, repair: bool = False) -> Any:
        """Check every record: its text against its content hash, its memory row against its CRC, its row of the
        exact scan, and that a ``where`` search on its document finds it through Chroma's HNSW index.

        Args:
            repair: Rebuild what is derived (the scan files; records HNSW lost are deleted and added again with the
                same id, text, metadata and vector). Damaged texts and memories are reported, never rewritten.

        Returns:
            A ``store_verify.VerifyReport`` (``.ok``, ``.lines()``).
        """
        from clara_plugins.store_verify import verify_store

        return verify_store(self, repair=repair)

    # ------------------------------------------------------------------ info
    @_chroma_errors
    def info(self) -> StoreInfo:
        """Counts, model and layout of the store."""
        col = self._collection()
        meta = self.meta
        n = col.count()
        docs = {m["clara_doc"] for _, metas in self._metadata_pages(col) for m in metas}
        folder = self.local_folder
        disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder else None
        return StoreInfo(
            collection=self.name,
            path=str(folder) if folder else None,
            mode=meta["clara_mode"],
            fingerprint=meta["clara_fingerprint"],
            model_source=meta.get("clara_model") or None,
            memory_dim=int(meta["clara_memory_dim"]),
            n_mem=int(meta["clara_n_mem"]),
            hidden_size=int(meta["clara_hidden_size"]),
            n_chunks=n,
            n_docs=len(docs),
            hnsw=dict((col.configuration or {}).get("hnsw") or {}),
            disk_bytes=disk,
        )


def _record_meta(rec: ChunkRecord) -> dict[str, Any]:
    return {
        **rec.metadata,
        "clara_doc": rec.doc_id,
        "clara_start": rec.start,
        "clara_end": rec.end,
        "clara_i": rec.index,
        "clara_n": rec.n_chunks,
        "clara_dochash": rec.doc_hash,
        "clara_hash": rec.hash,
    }


def _hit(cid: str, text: str | None, meta: dict[str, Any] | None, score: float) -> Hit:
    meta = dict(meta or {})
    user = {k: v for k, v in meta.items() if not k.startswith(RESERVED_PREFIX)}
    return Hit(
        id=cid,
        text=text or "",
        score=score,
        metadata=user,
        doc_id=str(meta.get("clara_doc", cid)),
        start=int(meta.get("clara_start", 0)),
        end=int(meta.get("clara_end", len(text or ""))),
    )


def _user_where(where: dict[str, Any] | None) -> dict[str, Any] | None:
    if where is not None and not isinstance(where, dict):
        msg = f"where must be a dict of Chroma metadata filters, got {type(where).__name__}"
        raise InputError(msg)
    return where or None
