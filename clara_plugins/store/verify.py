"""``ClaraStore.verify``: check a whole store, and with ``repair`` rebuild what is derived.

Checks, per record: its text against its content hash; its memory against its CRC; that the exact scan holds it
(the layout's ``scan_problems``); and that Chroma's HNSW index finds it in a ``where``-filtered search over its document
(the path every filtered search and every server store takes). Repair rebuilds the scan files (from the memories) and
puts records that HNSW lost back into it (deleted and added again with the same id, text, metadata and vector).
Damaged texts and memories are original data: they are reported (re-index those documents), never rewritten.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from clara_plugins.errors import StoreError
from clara_plugins.store.checks import text_hash

if TYPE_CHECKING:
    from clara_plugins.store.clara_store import ClaraStore

logger = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    """What ``verify`` found (and repaired)."""

    records: int = 0
    documents: int = 0
    bad_texts: list[str] = field(default_factory=list)  # chunk ids whose text fails its content hash
    bad_memories: list[str] = field(default_factory=list)  # chunk ids whose memory row fails its CRC
    scan_problems: list[str] = field(default_factory=list)
    not_in_hnsw: list[str] = field(default_factory=list)  # chunk ids a filtered search does not find
    repaired: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # facts that are not problems (e.g. unreferenced shard rows)

    @property
    def ok(self) -> bool:
        """No problem left (after repairs)."""
        return not (self.bad_texts or self.bad_memories or self.scan_problems or self.not_in_hnsw)

    def lines(self) -> list[str]:
        """A human-readable summary, one finding per line."""
        out = [f"{self.records} chunks of {self.documents} documents checked"]
        for name, ids in (("text fails its content hash", self.bad_texts), ("memory fails its CRC", self.bad_memories)):
            if ids:
                out.append(f"{len(ids)} chunk(s) whose {name} (re-index their documents): {ids[:10]}")
        out += [f"scan: {p}" for p in self.scan_problems]
        if self.not_in_hnsw:
            out.append(f"{len(self.not_in_hnsw)} chunk(s) missing from Chroma's HNSW index: {self.not_in_hnsw[:10]}")
        out += [f"repaired: {r}" for r in self.repaired]
        out += [f"note: {n}" for n in self.notes]
        out.append("OK" if self.ok else "PROBLEMS FOUND")
        return out


def complete_filtered(col: Any, queries: Any, res: dict, n: int, where: dict | None, store: Any) -> None:
    """Make a ``where`` search whole: a question with fewer than ``n`` results must have every matching record.

    One SQLite ``get`` (not HNSW) lists the matches; matches HNSW's filtered search did not reach are fetched by
    id and merged in (HNSW is approximate), and matches that HNSW lost raise ``StoreError`` instead of a short
    list."""
    from chromadb.errors import ChromaError

    short = [i for i, ids in enumerate(res["ids"]) if len(ids) < n]
    if where is None or not short:
        return
    matching = col.get(where=where, limit=n, include=[])["ids"]
    keys = [key for key in ("ids", "documents", "metadatas", "distances") if res.get(key) is not None]
    for i in short:
        missing = [cid for cid in matching if cid not in set(res["ids"][i])]
        if not missing:
            continue
        try:
            extra = col.query(
                query_embeddings=queries[i : i + 1],
                ids=missing,
                n_results=len(missing),
                include=[k for k in keys if k != "ids"],
            )
        except ChromaError:
            extra = None
        if extra is None or set(extra["ids"][0]) != set(missing):
            msg = (
                f"Chroma's HNSW index of the store in {str(store)!r} lost record(s) matching "
                f"{where} (among {missing[:3]}): a filtered search would miss them; run `clara check --db DIR "
                "--repair` to put them back"
            )
            raise StoreError(msg)
        rows = list(zip(*(list(res[k][i]) + list(extra[k][0]) for k in keys)))
        if "distances" in keys:
            rows.sort(key=lambda row: row[keys.index("distances")])
        for pos, key in enumerate(keys):
            res[key][i] = [row[pos] for row in rows][:n]


def _records(store: ClaraStore, col: Any) -> dict[str, tuple[dict, str | None]]:
    """Every record: id -> (metadata, text), a page at a time."""
    out: dict[str, tuple[dict, str | None]] = {}
    page, start = 2000, 0
    while True:
        res = col.get(include=["metadatas", "documents"], limit=page, offset=start)
        if not res["ids"]:
            return out
        out.update((cid, (meta, doc)) for cid, meta, doc in zip(res["ids"], res["metadatas"], res["documents"]))
        start += page


def _pca(store: ClaraStore) -> Any:
    """The store's ``PcaLayout``, or None for the other layouts."""
    from clara_plugins.store.local import PcaLayout

    layout = store._layout_of()
    return layout if isinstance(layout, PcaLayout) else None


def _hnsw_missing(store: ClaraStore, col: Any, records: dict[str, tuple[dict, str | None]]) -> list[str]:
    """Chunk ids that a ``where`` search on their document does not return."""
    from chromadb.errors import ChromaError

    by_doc: dict[str, set[str]] = {}
    for cid, (meta, _) in records.items():
        by_doc.setdefault(str(meta["clara_doc"]), set()).add(cid)
    width = store._layout_of().index_width(col)
    probe = np.ones((1, width), dtype=np.float32)
    missing: list[str] = []
    for doc, ids in by_doc.items():
        try:
            res = col.query(query_embeddings=probe, n_results=len(ids), where={"clara_doc": doc}, include=[])
            found = set(res["ids"][0])
        except (ChromaError, RuntimeError) as err:  # chromadb: "Error finding id"
            logger.info("filtered search over document %r failed: %s", doc, err)
            found = set()
        missing += sorted(ids - found)
    return missing


def _readd(store: ClaraStore, col: Any, ids: list[str], records: dict[str, tuple[dict, str | None]]) -> str:
    """Put records that HNSW lost back: deleted, then added again with the same id, text, metadata and vector.

    Only layouts whose vectors are projections of memories kept elsewhere can (``shared``; ``pca`` rebuilds the whole
    collection instead). In the full layout the vector *is* the memory and Chroma kept it only in the lost HNSW
    entry, so those records are deleted: their documents are then incomplete and the next ``index`` of them
    compresses them again.
    """
    layout = store._layout_of()
    rebuilt = False
    for start in range(0, len(ids), 1000):
        part = ids[start : start + 1000]
        metas, texts = [records[c][0] for c in part], [records[c][1] for c in part]
        vectors = layout.index_vectors(metas)
        col.delete(ids=part)
        if vectors is not None:
            col.add(ids=part, embeddings=vectors, documents=texts, metadatas=metas)
            rebuilt = True
    if rebuilt:
        return f"put {len(ids)} chunk(s) back into Chroma's HNSW index"
    docs = sorted({str(records[c][0]["clara_doc"]) for c in ids})
    return (
        f"deleted {len(ids)} chunk(s) whose vectors Chroma's HNSW index lost (full layout: the vector is the memory); "
        f"run `clara index` again on their {len(docs)} document(s) to restore them: {docs[:10]}"
    )


def _rebuild_collection(store: ClaraStore, col: Any, records: dict[str, tuple[dict, str | None]]) -> str:
    """pca layout: rebuild Chroma's HNSW index from scratch, as a new collection holding every record (vectors
    re-projected from the sidecar memories) that then takes the store's name; the sidecar folder follows it.

    Deleting and adding the lost records again is not enough after a kill during Chroma's HNSW persist: the segment
    on disk is then inconsistent and each new session loses another random handful of records (measured).
    """
    import shutil

    from chromadb.errors import NotFoundError

    pca = _pca(store)
    client, name, old_folder = store.client, store.name, pca.folder
    tmp = f"{name}-rebuild"
    with contextlib.suppress(NotFoundError, ValueError):
        client.delete_collection(tmp)  # left by an earlier, interrupted repair
    config = {"hnsw": dict((col.configuration or {}).get("hnsw") or {"space": "cosine"})}
    new = client.create_collection(tmp, metadata=dict(col.metadata), configuration=config, embedding_function=None)
    ids = list(records)
    for start in range(0, len(ids), 1000):
        part = ids[start : start + 1000]
        vectors = pca.index_vectors([records[c][0] for c in part])
        new.add(
            ids=part,
            embeddings=vectors,
            documents=[records[c][1] for c in part],
            metadatas=[records[c][0] for c in part],
        )
    shutil.copytree(old_folder, old_folder.parent / str(new.id))  # the sidecar of the new collection
    client.delete_collection(name)
    new.modify(name=name)
    shutil.rmtree(old_folder, ignore_errors=True)
    store._col, store._layout = None, None
    return f"rebuilt Chroma's HNSW index as a new collection of all {len(ids)} records (vectors from the memories)"


def verify_store(store: ClaraStore, repair: bool = False) -> VerifyReport:
    """Check every record of ``store`` (see the module docstring); ``repair`` rebuilds derived data."""
    col = store._collection()
    records = _records(store, col)
    report = VerifyReport(records=len(records), documents=len({m["clara_doc"] for m, _ in records.values()}))
    report.bad_texts = [c for c, (m, t) in records.items() if t is None or text_hash(t) != m.get("clara_hash", "")]
    report.bad_memories = store._layout_of().bad_memories(records)
    layout = store._layout_of()
    report.scan_problems = layout.scan_problems(records)
    report.not_in_hnsw = _hnsw_missing(store, col, records)
    if hasattr(layout, "unreferenced_rows"):
        rows, size = layout.unreferenced_rows(len(records))
        if rows:
            report.notes.append(
                f"{rows} memory row(s) in the shards ({size / 2**20:.1f} MiB) belong to no record: deleted or "
                "re-indexed chunks, or a writer killed before its records; they are never served"
            )
    if repair:
        _repair(store, col, records, report)
    return report


def _repair(store: ClaraStore, col: Any, records: dict[str, tuple[dict, str | None]], report: VerifyReport) -> None:
    with store._writing():
        pca, layout = _pca(store), store._layout_of()
        if report.scan_problems and not report.bad_memories:
            report.repaired.append(layout.repair_scan(records))
            report.scan_problems = layout.scan_problems(records)
        lost = [c for c in report.not_in_hnsw if c not in set(report.bad_memories) | set(report.bad_texts)]
        if lost and pca is not None:
            report.repaired.append(_rebuild_collection(store, col, records))
            report.not_in_hnsw = _hnsw_missing(store, store._collection(), records)
        elif lost:
            report.repaired.append(_readd(store, col, lost, records))
            if store._layout_of().index_vectors([]) is None:
                records = {c: r for c, r in records.items() if c not in set(lost)}
            report.not_in_hnsw = _hnsw_missing(store, col, records)
