"""Framework-free helpers shared by the LangChain and LlamaIndex integrations.

Both integrations speak to the core through the same few ``ClaraRAG`` methods (``search``, ``rank_candidates``,
``answer_from_hits``, ``stream_from_hits``) and convert the ``Hit`` objects they get back into framework objects.
The conventions below (which metadata keys CLaRa adds, how a framework document is recognised as one already in
the store) are the same in both frameworks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

from clara_plugins.errors import InputError

logger = logging.getLogger(__name__)

# metadata keys CLaRa adds to every Document / node it returns; they win over user metadata of the same name
ID_KEY = "clara_id"  # the chunk id in the store: lets the reranker and the generator reuse the stored memory
SCORE_KEY = "score"  # cosine between the query-reasoner vector and the chunk's memory (retriever)
RELEVANCE_KEY = "relevance_score"  # the reranker's score (LangChain's convention for document compressors)
PROVENANCE_KEYS = ("doc_id", "start", "end")  # source document id and character offsets of the chunk in it
RESERVED_KEYS = (ID_KEY, SCORE_KEY, RELEVANCE_KEY, *PROVENANCE_KEYS)


def check_rag(rag: Any) -> Any:
    """Return ``rag`` if it is a ``ClaraRAG``; raise ``InputError`` naming the argument otherwise."""
    from clara_plugins.rag import ClaraRAG  # the core facade; imported late so this module stays light

    if not isinstance(rag, ClaraRAG):
        msg = f"rag must be a clara_plugins.ClaraRAG, got {type(rag).__name__}"
        raise InputError(msg)
    return rag


def check_positive(name: str, value: Any) -> int:
    """Return ``value`` if it is a positive int; raise ``InputError`` naming ``name`` otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        msg = f"{name} must be a positive integer, got {value!r}"
        raise InputError(msg)
    return value


def hit_metadata(hit: Any, score_key: str = SCORE_KEY) -> dict[str, Any]:
    """The metadata of a framework document made from ``hit``: user metadata plus CLaRa's keys."""
    meta = dict(hit.metadata or {})
    meta.update({ID_KEY: hit.id, score_key: float(hit.score), "doc_id": hit.doc_id, "start": hit.start, "end": hit.end})
    return meta


def to_reference(text: str, metadata: Mapping[str, Any] | None = None) -> Any:
    """The ``Hit`` that ``ClaraRAG.rerank`` / ``answer_from_hits`` take for one framework document.

    A document whose metadata names a chunk of the store (``clara_id``, set by our retrievers) gets that id, so
    its stored memory is reused. Any other document gets its content hash as id: the core then reuses the memory
    of a stored chunk with the same text, or compresses it on the fly. Foreign ids (``Document.id`` from another
    vector store, LlamaIndex node ids) are never taken for store ids.
    """
    from clara_plugins.rag import text_hash
    from clara_plugins.store import Hit

    meta = metadata or {}
    store_id = meta.get(ID_KEY) if isinstance(meta.get(ID_KEY), str) else None
    return Hit(
        id=store_id or text_hash(text),
        text=text,
        score=float(meta.get(SCORE_KEY, 0.0) or 0.0),
        metadata={k: v for k, v in meta.items() if k not in RESERVED_KEYS},
        doc_id=str(meta.get("doc_id") or ""),
        start=int(meta.get("start") or 0),
        end=int(meta["end"]) if meta.get("end") is not None else len(text),
    )


def references(rag: Any, items: Sequence[tuple[str, Mapping[str, Any] | None]]) -> list[tuple[int, Any]]:
    """``Hit``s for framework documents given as ``(text, metadata)``: ``(index of the document, hit)`` pairs.

    A stored chunk (metadata with ``clara_id``) or a text within ``doc_max_length`` tokens gives one hit. A longer
    text (a whole page from another retriever) gives one hit per chunk, cut as indexing would cut it, with the
    chunk's offsets: the compressor cannot take it whole. A hit whose text is a stored chunk's text becomes that
    chunk (store id, provenance), so the sources a generator reports name store ids whenever there is one.
    """
    pieces = []
    for i, (text, metadata) in enumerate(items):
        ref = to_reference(text, metadata)
        chunks = [] if isinstance((metadata or {}).get(ID_KEY), str) else rag.model.chunk(text)
        if len(chunks) <= 1:
            pieces.append((i, ref))
            continue
        for c in chunks:
            piece = to_reference(c.text, {**ref.metadata, "doc_id": ref.doc_id, "start": ref.start + c.start})
            piece.end = ref.start + c.end
            pieces.append((i, piece))
    return _resolve_stored(rag, pieces)


def _resolve_stored(rag: Any, pieces: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    from clara_plugins.rag import text_hash

    loose = [text_hash(hit.text) for _, hit in pieces if hit.id == text_hash(hit.text)]  # no store id yet
    stored = rag.store.records_by_hash(loose) if loose else {}
    return [(i, stored.get(hit.id, hit)) for i, hit in pieces]


def rerank(
    rag: Any, question: str, items: Sequence[tuple[str, Mapping[str, Any] | None]], top_n: int
) -> list[tuple[int, float]]:
    """CLaRa's ranking of framework documents ``(text, metadata)``: ``(index, score)`` of the best ``top_n``.

    A thin conversion over ``ClaraRAG.rank_candidates`` (the one rerank rule): stored chunks reuse their memories,
    other texts are looked up by content or compressed, a document longer than one chunk scores as its best chunk.
    """
    refs = [to_reference(text, metadata) for text, metadata in items]
    return [(i, hit.score) for i, hit in rag.rank_candidates(question, refs)[:top_n]]


class StopFilter:
    """Cuts generated text at the first stop sequence, also when the text arrives in pieces.

    ``feed`` returns the part of a piece that is safe to emit: text that could still be the start of a stop
    sequence is held back until the next piece decides it.
    """

    def __init__(self, stop: Sequence[str] | None) -> None:
        self.stop = [s for s in (stop or []) if s]
        self.stopped = False
        self._held = ""

    def feed(self, piece: str) -> str:
        """Add a piece; return what may be emitted now (empty once a stop sequence was seen)."""
        if self.stopped:
            return ""
        text = self._held + piece
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self._held = True, ""
            return text[:cut]
        keep = max((_overlap(text, s) for s in self.stop), default=0)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """Return the held-back tail at the end of generation."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def apply(self, text: str) -> str:
        """Cut a complete text at the first stop sequence."""
        return self.feed(text) + self.flush()


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``stop``."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


async def aiter_in_thread(make_iter: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
    """Run a blocking iterator in worker threads and yield its items without blocking the event loop."""
    done = object()
    iterator = await asyncio.to_thread(make_iter)
    while True:
        item = await asyncio.to_thread(next, iterator, done)
        if item is done:
            return
        yield item
