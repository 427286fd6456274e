"""Keep a store in step with files: delete documents, and mirror folders (added, changed and removed documents).

A document read from a file (``clara_plugins.corpus.read_corpus``) records that file as ``metadata["source"]``;
that is how a sync knows which stored documents came from the given paths and are gone from them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clara_plugins.errors import InputError
from clara_plugins.rag import IndexResult, text_hash


@dataclass
class SyncResult:
    """What one sync did: document ids per outcome, and the index call's counts."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    index: IndexResult | None = None


def stored_documents(store: Any) -> dict[str, dict[str, Any]]:
    """Per stored document id: ``{"source": file or None, "chunks": n}``."""
    docs: dict[str, dict[str, Any]] = {}
    for hit in store.iter_records(texts=False):
        doc = docs.setdefault(hit.doc_id, {"source": hit.metadata.get("source"), "chunks": 0})
        doc["chunks"] += 1
    return docs


def _under(source: str | None, roots: Sequence[Path]) -> bool:
    if not source:
        return False
    return any(source == str(r) or source.startswith(str(r).rstrip(os.sep) + os.sep) for r in roots)


def docs_from_sources(store: Any, paths: Sequence[str | Path]) -> list[str]:
    """Ids of the stored documents read from these files or from files under these folders."""
    roots = [Path(p).resolve() for p in paths]
    return sorted(d for d, info in stored_documents(store).items() if _under(info["source"], roots))


def delete_documents(store: Any, doc_ids: Sequence[str]) -> int:
    """Delete whole documents by id; returns the chunks deleted.

    Raises:
        InputError: an id is not a stored document (nothing is deleted then).
    """
    stored = stored_documents(store)
    missing = [d for d in doc_ids if d not in stored]
    if missing:
        msg = f"not in the store (nothing deleted): {missing[:5]}{' ...' if len(missing) > 5 else ''}"
        raise InputError(msg)
    store.delete(doc_ids=list(doc_ids))
    return sum(stored[d]["chunks"] for d in set(doc_ids))


def sync(rag: Any, records: list[dict[str, Any]], paths: Sequence[str | Path], **index_kwargs: Any) -> SyncResult:
    """Make the store mirror ``paths``: index new and changed documents (unchanged chunks keep their memories),
    then delete the stored documents read from ``paths`` that ``records`` no longer holds.

    Args:
        rag: The ``ClaraRAG`` of the store.
        records: ``read_corpus(paths)``: every document now under ``paths``.
        paths: The files and folders that were read.
        **index_kwargs: Passed to ``ClaraRAG.index`` (``batch_size``, ``show_progress``).
    """
    result = SyncResult()
    status = rag.store.doc_status([r["id"] for r in records]) if records else {}
    for r in records:
        found = status.get(r["id"])
        if not found:
            result.added.append(r["id"])
        elif found[0] == text_hash(r["text"]) and found[1] == found[2]:
            result.unchanged.append(r["id"])
        else:  # another text, or chunks missing after an interrupted run
            result.changed.append(r["id"])
    if records:
        result.index = rag.index(records, **index_kwargs)
    present = {r["id"] for r in records}
    result.removed = [d for d in docs_from_sources(rag.store, paths) if d not in present]
    if result.removed:
        rag.store.delete(doc_ids=result.removed)
    return result
