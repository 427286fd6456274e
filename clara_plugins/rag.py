"""``ClaraRAG``: the one object a user holds. Index documents once, then search, rerank and answer from stored memories.

Documents are chunked with provenance (``model.chunk``), each chunk is compressed once, and its memory is stored in a
:class:`~clara_plugins.store.ClaraStore`. ``search`` ranks by exact CLaRa cosine; ``ask`` feeds the stored memories
of the top chunks to the generator; ``rerank`` reuses stored memories for known chunks and compresses only the rest.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clara_plugins.errors import InputError, MissingExtraError, StoreError
from clara_plugins.store import ChunkRecord, ClaraStore, Hit, validate_metadata
from clara_plugins.store.checks import text_hash

logger = logging.getLogger(__name__)


@dataclass
class RAGAnswer:
    """An answer and the chunks whose memories the generator read (best first)."""

    text: str
    sources: list[Hit] = field(default_factory=list)


@dataclass
class IndexResult:
    """What one ``index`` call did, with its timings in seconds."""

    docs_added: int = 0
    docs_skipped: int = 0  # already stored with the same text
    chunks_added: int = 0
    chunks_reused: int = 0  # memory taken from a stored chunk with the same text instead of compressing
    chunk_s: float = 0.0
    compress_s: float = 0.0
    store_s: float = 0.0


@dataclass
class _Doc:
    id: str
    text: str
    metadata: dict[str, Any]


def _check_text(text: Any, where: str) -> str:
    if not isinstance(text, str):
        msg = f"{where} must be a str, got {type(text).__name__}"
        raise InputError(msg)
    if not text.strip():
        msg = f"{where} is empty or whitespace; remove it"
        raise InputError(msg)
    return text


def _as_record(item: Any) -> Any:
    """A LangChain ``Document`` or a LlamaIndex ``Document`` / ``TextNode`` as a record ``{text, id, metadata}``.

    Duck-typed (the core imports neither framework): ``page_content`` marks a LangChain document, ``node_id`` with
    ``get_content`` a LlamaIndex one. Their ids and metadata are kept; anything else is returned unchanged.
    """
    if isinstance(item, (str, dict)):
        return item
    if hasattr(item, "page_content"):  # langchain_core.documents.Document: id may be None (content hash then)
        return {"text": item.page_content, "id": getattr(item, "id", None), "metadata": dict(item.metadata or {})}
    if hasattr(item, "node_id") and callable(getattr(item, "get_content", None)):  # llama_index Document/TextNode
        return {"text": item.get_content(), "id": item.node_id, "metadata": dict(item.metadata or {})}
    return item


def _normalize_docs(items: Any, ids: Sequence[str] | None, metadatas: Sequence[Any] | None) -> list[_Doc]:
    """Texts, records ``{text, metadata, id}`` or framework documents -> documents with ids, validated.

    Documents without an id get a content hash.
    """
    if isinstance(items, (str, dict)) or hasattr(items, "page_content") or hasattr(items, "node_id"):
        items = [items]
    if not isinstance(items, Iterable) or isinstance(items, (bytes, bytearray)):
        msg = f"texts must be a str, a record dict, a document or a list of them, got {type(items).__name__}"
        raise InputError(msg)
    items = [_as_record(item) for item in items]
    if ids is not None and len(ids) != len(items):
        msg = f"ids has {len(ids)} entries for {len(items)} texts"
        raise InputError(msg)
    if metadatas is not None and len(metadatas) != len(items):
        msg = f"metadatas has {len(metadatas)} entries for {len(items)} texts"
        raise InputError(msg)
    docs: dict[str, _Doc] = {}
    given: set[str] = set()
    for i, item in enumerate(items):
        rec = item if isinstance(item, dict) else {"text": item}
        text = _check_text(rec.get("text"), f"text {i}")
        doc_id = ids[i] if ids is not None else rec.get("id")
        meta = validate_metadata(metadatas[i] if metadatas is not None else rec.get("metadata"), f"text {i}")
        if doc_id is None:
            doc_id = "doc-" + text_hash(text)[:20]
        elif not isinstance(doc_id, str) or not doc_id.strip():
            msg = f"id of text {i} must be a non-empty str, got {doc_id!r}"
            raise InputError(msg)
        elif "#" in doc_id:
            msg = (
                f"id {doc_id!r} of text {i} contains '#', which separates a document id from the chunk number in "
                "chunk ids ('doc#0'); use another character so that delete() cannot mistake it for a chunk id"
            )
            raise InputError(msg)
        elif doc_id in given:
            msg = f"duplicate id {doc_id!r} in one index call (text {i}); ids must be unique"
            raise InputError(msg)
        else:
            given.add(doc_id)
        docs.setdefault(doc_id, _Doc(doc_id, text, meta))  # same content without id: indexed once
    return list(docs.values())


def doc_is_complete(found: tuple[str, int, int] | None, text: str) -> bool:
    """Whether ``store.doc_status`` shows a document stored whole with this text (``index`` then skips it)."""
    return bool(found) and found[0] == text_hash(text) and found[1] == found[2]


def _doc_spans(records: list[ChunkRecord]) -> dict[str, tuple[int, int]]:
    """Document id -> ``(first, last + 1)``: where its chunks are in ``records`` (a document's chunks are adjacent)."""
    spans: dict[str, tuple[int, int]] = {}
    for i, r in enumerate(records):
        spans[r.doc_id] = (spans.get(r.doc_id, (i, i))[0], i + 1)
    return spans


def _batch_bounds(n: int, batch_size: int, first: int = 0) -> list[tuple[int, int]]:
    """``(start, end)`` of each indexing step: ``batch_size`` chunks, the first one ``first`` when larger (a store
    that fits its projection once wants it fitted on many chunks)."""
    cuts = [0, min(n, max(first, batch_size))] if n else [0]
    cuts += list(range(cuts[-1] + batch_size, n, batch_size))
    if cuts[-1] != n:
        cuts.append(n)
    return list(itertools.pairwise(cuts))


class ClaraRAG:
    """Index, search, rerank and answer with one CLaRa model over one store.

    Args:
        model: A loaded :class:`~clara_plugins.model.ClaraModel`.
        store: The store; default a new in-memory Chroma collection of its own.
    """

    def __init__(self, model: Any, store: ClaraStore | None = None) -> None:
        self.model = model
        self.store = store if store is not None else ClaraStore(collection=f"clara-{uuid.uuid4().hex[:12]}")
        self.store.bind(model.fingerprint, model.memory_dim, model.n_mem, model.hidden_size, model.source)
        self.last_index: IndexResult | None = None

    @classmethod
    def from_pretrained(
        cls,
        model: Any = "tiny",
        store: str | Path | ClaraStore | None = None,
        collection: str = "clara",
        **model_kwargs: Any,
    ) -> ClaraRAG:
        """Load a model and open (or create) a store.

        Args:
            model: ``"tiny"``, a Hub id or local folder (see ``ClaraModel.from_pretrained``), or a loaded ClaraModel.
            store: Folder of a persistent Chroma store, a ``ClaraStore``, or None for an in-memory one.
            collection: Collection name when ``store`` is a folder.
            **model_kwargs: Passed to ``ClaraModel.from_pretrained`` (``subfolder``, ``device``, ``dtype``...).

        Raises:
            ModelMismatchError: the store was built by another model.
        """
        from clara_plugins.model import ClaraModel

        if not isinstance(model, ClaraModel):
            model = ClaraModel.from_pretrained(model, **model_kwargs)
        if store is not None and not isinstance(store, ClaraStore):
            store = ClaraStore(path=store, collection=collection)
        return cls(model, store)

    @property
    def default_k(self) -> int:
        """``config.generation_top_k`` of the model."""
        return int(self.model.config.generation_top_k)

    # ------------------------------------------------------------------ indexing
    def index(
        self,
        texts: str | dict | Sequence[str | dict] | Any,
        ids: Sequence[str] | None = None,
        metadatas: Sequence[dict[str, Any] | None] | None = None,
        batch_size: int = 64,
        show_progress: bool = True,
    ) -> IndexResult:
        """Chunk, compress once and store documents; idempotent.

        Args:
            texts: Texts, records ``{"text": ..., "metadata": {...}, "id": ...}``, LangChain ``Document``s or
                LlamaIndex ``Document``s / ``TextNode``s (their ids and metadata are kept).
            ids: Document ids (default: the record's or document's id, else a hash of the text).
            metadatas: Per-document metadata (str, int, float, bool values, or lists of one of these).
            batch_size: Chunks compressed and written per step.
            show_progress: Show a progress bar over chunks.

        A document already stored with the same id and text is skipped; with another text its chunks are
        replaced. Chunks whose text is already stored reuse that memory. Everything is validated before anything
        is written, so bad input stores nothing.
        """
        from tqdm.auto import tqdm

        result = IndexResult()
        tick = time.perf_counter()
        docs = _normalize_docs(texts, ids, metadatas)
        todo, stale = self._pending(docs, result)
        records = [rec for doc in todo for rec in self._chunk(doc)]
        result.chunk_s = time.perf_counter() - tick
        bar = tqdm(total=len(records), desc="indexing", unit="chunk", disable=not show_progress or not records)
        spans = _doc_spans(records)
        kept: dict[str, dict[str, np.ndarray]] = {}  # replaced document -> its old memories by hash, while needed
        deleted: set[str] = set()
        for start, end in _batch_bounds(len(records), batch_size, self.store.fit_rows_wanted() if records else 0):
            batch = records[start:end]
            t0 = time.perf_counter()
            old = list(dict.fromkeys(r.doc_id for r in batch if r.doc_id in stale and r.doc_id not in deleted))
            if old:  # unchanged chunks keep their memories: look them up before deleting the stale chunks
                kept.update(self._old_memories(old, records, spans))
                self.store.delete(doc_ids=old)
                deleted.update(old)
            reuse = {h: m for d in {r.doc_id for r in batch} for h, m in kept.get(d, {}).items()}
            for d in [d for d in kept if spans[d][1] <= end]:
                del kept[d]
            mems = self._memories_for_records(batch, result, reuse)
            t1 = time.perf_counter()
            self.store.add(batch, mems)
            result.store_s += time.perf_counter() - t1
            result.chunks_added += len(batch)
            bar.update(len(batch))
            logger.debug("indexed %d chunks in %.2fs", len(batch), time.perf_counter() - t0)
        bar.close()
        result.docs_added = len(todo)
        self.last_index = result
        return result

    def _pending(self, docs: list[_Doc], result: IndexResult) -> tuple[list[_Doc], set[str]]:
        """Documents to (re)index, and the ids among them with stale or partial chunks to delete first."""
        t0 = time.perf_counter()
        status = self.store.doc_status([d.id for d in docs])
        todo, stale = [], set()
        for doc in docs:
            found = status.get(doc.id)
            if doc_is_complete(found, doc.text):
                result.docs_skipped += 1
                continue
            if found:
                stale.add(doc.id)
            todo.append(doc)
        result.store_s += time.perf_counter() - t0
        return todo, stale

    def _old_memories(
        self, doc_ids: list[str], records: list[ChunkRecord], spans: dict[str, tuple[int, int]]
    ) -> dict[str, dict[str, np.ndarray]]:
        """Per document about to be replaced: stored memories of its new chunks' texts, by content hash."""
        wanted = {d: [records[i].hash for i in range(*spans[d])] for d in doc_ids}
        found = self.store.memories_by_hash([h for hashes in wanted.values() for h in hashes])
        return {d: {h: found[h] for h in hashes if h in found} for d, hashes in wanted.items()}

    def _chunk(self, doc: _Doc) -> list[ChunkRecord]:
        pieces = self.model.chunk(doc.text)
        dh = text_hash(doc.text)
        return [
            ChunkRecord(
                id=f"{doc.id}#{i}",
                text=c.text,
                doc_id=doc.id,
                start=c.start,
                end=c.end,
                index=i,
                n_chunks=len(pieces),
                doc_hash=dh,
                hash=text_hash(c.text),
                metadata=doc.metadata,
            )
            for i, c in enumerate(pieces)
        ]

    def _memories_for_records(
        self, batch: list[ChunkRecord], result: IndexResult, kept: dict[str, np.ndarray] | None = None
    ) -> np.ndarray:
        """Flattened memories of a batch: ``kept`` or stored ones reused by content hash, the others compressed."""
        t0 = time.perf_counter()
        kept = kept or {}
        known = {r.hash: kept[r.hash] for r in batch if r.hash in kept}
        known.update(self.store.memories_by_hash([r.hash for r in batch if r.hash not in known]))
        result.store_s += time.perf_counter() - t0
        new = list(dict.fromkeys(r.hash for r in batch if r.hash not in known))
        if new:
            texts = {r.hash: r.text for r in batch}
            t1 = time.perf_counter()
            mems = self.model.compress([texts[h] for h in new]).flatten(1).numpy()
            result.compress_s += time.perf_counter() - t1
            known.update(zip(new, mems))
        result.chunks_reused += len(batch) - len(new)
        return np.stack([known[r.hash] for r in batch])

    def delete(self, ids: str | Sequence[str]) -> None:
        """Delete documents and/or single chunks.

        An id with ``#`` is a chunk id (``doc#i``: that chunk only); an id without is a document id (every chunk of
        that document). Document ids cannot contain ``#`` (``index`` refuses them), so the two never collide.
        """
        ids = [ids] if isinstance(ids, str) else list(ids)
        for i, cid in enumerate(ids):
            if not isinstance(cid, str):
                msg = f"ids[{i}] must be a str, got {type(cid).__name__}"
                raise InputError(msg)
        chunks = [cid for cid in ids if "#" in cid]
        self.store.delete(ids=chunks, doc_ids=[cid for cid in ids if "#" not in cid])

    # ------------------------------------------------------------------ retrieval
    def _k(self, k: int | None) -> int:
        k = self.default_k if k is None else k
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            msg = f"k must be a positive int, got {k!r}"
            raise InputError(msg)
        return k

    def max_docs(self, question: str, max_new_tokens: int | None = None) -> int:
        """The most documents whose memories fit the generator's context with this question and answer length.

        The context is the base model's ``max_position_embeddings``; a prompt grows by a fixed number of positions
        per document (its memory slots and separators).
        """
        one, two = (self.model.build_prompts([question], [n])["input_ids"].shape[1] for n in (1, 2))
        per_doc, fixed = two - one, 2 * one - two
        limit = int(getattr(self.model.base_lm.config, "max_position_embeddings", 0) or 0)
        new_tokens = max_new_tokens or int(self.model.config.max_new_tokens)
        if not limit:
            return 2**31 - 1
        return max(0, (limit - new_tokens - fixed) // max(per_doc, 1))

    def _fit_context(self, question: str, k: int, max_new_tokens: int | None, explicit: bool) -> int:
        """``k`` when ``k`` documents fit the context; else an InputError (``k`` given) or the cap, with a warning."""
        fit = self.max_docs(question, max_new_tokens)
        if k <= fit:
            return k
        limit = self.model.base_lm.config.max_position_embeddings
        if explicit or fit == 0:
            msg = (
                f"k={k} documents do not fit the generator's context of {limit} positions (max_position_embeddings) "
                f"with this question and max_new_tokens; at most {fit} do: pass k <= {fit}"
            )
            raise InputError(msg)
        logger.warning("default k=%d documents do not fit the context of %d positions; using %d", k, limit, fit)
        return fit

    def search(self, question: str, k: int | None = None, where: dict[str, Any] | None = None) -> list[Hit]:
        """The ``k`` stored chunks closest to the question by CLaRa cosine, best first.

        Args:
            question: The question.
            k: Number of hits (default ``config.generation_top_k``).
            where: Optional Chroma metadata filter on the user metadata, e.g. ``{"lang": "en"}``.
        """
        _check_text(question, "question")
        k = self._k(k)
        q = self.model.encode_query([question]).numpy()
        return self.store.search(q, k, where=where)[0]

    def search_many(
        self, questions: Sequence[str], k: int | None = None, where: dict[str, Any] | None = None
    ) -> list[list[Hit]]:
        """``search`` for several questions with one query-encoder call and one store query (same ``k``, ``where``)."""
        for i, question in enumerate(questions):
            _check_text(question, f"question {i}")
        k = self._k(k)
        q = self.model.encode_query(list(questions)).numpy()
        return self.store.search(q, k, where=where)

    def rerank(self, question: str, texts_or_hits: Sequence[str | Hit], k: int | None = None) -> list[Hit]:
        """Rank candidates from any retriever by CLaRa cosine; stored chunks are not compressed again.

        Args:
            question: The question.
            texts_or_hits: Candidate texts or ``Hit`` objects.
            k: Number kept (default ``config.generation_top_k``).

        Returns:
            Hits, best first; a plain text gets the id of a stored chunk with the same text, else its content hash.
            A candidate longer than one chunk is cut as indexing cuts it and scores as its best chunk.
        """
        _check_text(question, "question")
        k = self._k(k)
        return [hit for _, hit in self.rank_candidates(question, texts_or_hits)[:k]]

    def rank_candidates(self, question: str, texts_or_hits: Sequence[str | Hit]) -> list[tuple[int, Hit]]:
        """Every candidate scored, best first, as ``(position in texts_or_hits, Hit)``: the one rerank rule.

        Stored chunks (by id, or a text stored with the same content) reuse their memories, the others are
        compressed. A candidate longer than one chunk (a whole page from another retriever) is cut into chunks as
        indexing cuts it, and its score is that of its best chunk. The LangChain and LlamaIndex rerankers call this.
        """
        _check_text(question, "question")
        hits = [self._as_hit(item, i) for i, item in enumerate(texts_or_hits)]
        if not hits:
            return []
        plain = [i for i, item in enumerate(texts_or_hits) if not isinstance(item, Hit)]
        stored = self.store.records_by_hash([text_hash(hits[i].text) for i in plain]) if plain else {}
        for i in plain:  # a text already in the store is that chunk (id, metadata, provenance)
            hits[i] = stored.get(text_hash(hits[i].text), hits[i])
        owners, pieces = self._pieces(hits)
        q = self.model.encode_query([question])
        scores, idx = self.model.rank(q, self.memories_for(pieces), len(pieces))
        best: dict[int, float] = {}
        for s, j in zip(scores[0].tolist(), idx[0].tolist()):
            best.setdefault(owners[j], float(s))  # best first: the first piece seen of a candidate is its best
        out = []
        for i, score in best.items():  # insertion order: best first
            h = hits[i]
            out.append((i, Hit(h.id, h.text, score, dict(h.metadata), h.doc_id, h.start, h.end)))
        return out

    def _pieces(self, hits: list[Hit]) -> tuple[list[int], list[Hit]]:
        """Chunk-sized pieces of candidates: ``(owner candidate per piece, pieces)``; one piece per short text."""
        owners, pieces = [], []
        for i, hit in enumerate(hits):
            chunks = self.model.chunk(hit.text)
            if len(chunks) <= 1:
                owners.append(i)
                pieces.append(hit)
                continue
            for c in chunks:
                owners.append(i)
                start, end = hit.start + c.start, hit.start + c.end
                pieces.append(Hit(text_hash(c.text), c.text, 0.0, {}, hit.doc_id, start, end))
        return owners, pieces

    @staticmethod
    def _as_hit(item: str | Hit, i: int) -> Hit:
        if isinstance(item, Hit):
            return item
        text = _check_text(item, f"candidate {i}")
        return Hit(id=text_hash(text), text=text, score=0.0, doc_id=text_hash(text), start=0, end=len(text))

    def memories_for(self, hits: Sequence[Hit]) -> torch.Tensor:
        """Memories ``[len(hits), n_mem, hidden]`` of hits: stored ones by id, then by text hash, else compressed."""
        by_id = self.store.find_memories([h.id for h in hits])
        hashes = {text_hash(h.text): h for h in hits if h.id not in by_id}
        by_hash = self.store.memories_by_hash(list(hashes)) if hashes else {}
        missing = [h for h in hashes if h not in by_hash]
        if missing:
            logger.info("compressing %d candidates that are not in the store", len(missing))
            mems = self._compress_candidates([hashes[h].text for h in missing])
            by_hash.update(zip(missing, mems))
        rows = [by_id[h.id] if h.id in by_id else by_hash[text_hash(h.text)] for h in hits]
        out = torch.from_numpy(np.stack(rows)).float()
        return out.view(len(hits), self.model.n_mem, self.model.hidden_size)

    def _compress_candidates(self, texts: list[str]) -> np.ndarray:
        """Flattened memories of texts not in the store; a text longer than one chunk is read up to its first
        chunk boundary, with a warning (``rank_candidates`` and the integrations cut long texts into chunks first)."""
        firsts = []
        for text in texts:
            pieces = self.model.chunk(text)
            if len(pieces) > 1:
                logger.warning("candidate of %d chars is longer than one chunk; reading its first chunk", len(text))
            firsts.append(pieces[0].text if pieces else text)
        return self.model.compress(firsts).flatten(1).numpy()

    # ------------------------------------------------------------------ answering
    def answer_from_hits(self, question: str, hits: Sequence[Hit], max_new_tokens: int | None = None) -> RAGAnswer:
        """Answer from the memories of given hits (best first), e.g. from another retriever's results."""
        _check_text(question, "question")
        hits = list(hits)
        if not hits:
            msg = "no documents to answer from: the store is empty or the filter matched nothing; index documents first"
            raise StoreError(msg)
        self._fit_context(question, len(hits), max_new_tokens, explicit=True)
        text = self.model.generate([question], [self.memories_for(hits)], max_new_tokens=max_new_tokens)[0]
        return RAGAnswer(text=text, sources=hits)

    def answer_many(
        self, questions: Sequence[str], hits: Sequence[Sequence[Hit]], max_new_tokens: int | None = None
    ) -> list[RAGAnswer]:
        """Answer several questions in one batched generator call, each from the memories of its own hits."""
        if len(questions) != len(hits):
            msg = f"answer_many got {len(questions)} questions but {len(hits)} lists of hits"
            raise InputError(msg)
        for i, (question, some) in enumerate(zip(questions, hits)):
            _check_text(question, f"question {i}")
            if not some:
                msg = f"no documents to answer question {i} from: the store is empty or the filter matched nothing"
                raise StoreError(msg)
        memories = [self.memories_for(list(some)) for some in hits]
        texts = self.model.generate(list(questions), memories, max_new_tokens, batch_size=max(1, len(questions)))
        return [RAGAnswer(text=t, sources=list(some)) for t, some in zip(texts, hits)]

    def stream_from_hits(self, question: str, hits: Sequence[Hit], max_new_tokens: int | None = None) -> Iterator[str]:
        """Like ``answer_from_hits`` but yields the answer's text piece by piece."""
        _check_text(question, "question")
        hits = list(hits)
        if not hits:
            msg = "no documents to answer from: the store is empty or the filter matched nothing; index documents first"
            raise StoreError(msg)
        self._fit_context(question, len(hits), max_new_tokens, explicit=True)
        yield from self.model.stream(question, self.memories_for(hits), max_new_tokens=max_new_tokens)

    def ask(
        self,
        question: str,
        k: int | None = None,
        where: dict[str, Any] | None = None,
        max_new_tokens: int | None = None,
    ) -> RAGAnswer:
        """Retrieve the top ``k`` chunks and answer from their stored memories.

        Raises:
            InputError: ``k`` documents do not fit the generator's context (``max_position_embeddings``); a default
                ``k`` that does not fit is lowered to what fits, with a warning.
        """
        _check_text(question, "question")
        k = self._fit_context(question, self._k(k), max_new_tokens, explicit=k is not None)
        return self.answer_from_hits(question, self.search(question, k, where=where), max_new_tokens)

    def stream(
        self,
        question: str,
        k: int | None = None,
        where: dict[str, Any] | None = None,
        max_new_tokens: int | None = None,
    ) -> Iterator[str]:
        """Retrieve, then yield the answer's text piece by piece (``k`` checked against the context as in ``ask``)."""
        _check_text(question, "question")
        k = self._fit_context(question, self._k(k), max_new_tokens, explicit=k is not None)
        return self.stream_from_hits(question, self.search(question, k, where=where), max_new_tokens)

    # ------------------------------------------------------------------ integrations (issue 4)
    def _bridge(self, module: str, name: str, **kwargs: Any) -> Any:
        extra = "langchain" if "langchain" in module else "llama-index"
        try:
            mod = importlib.import_module(f"clara_plugins.adapters.{module}")
        except ImportError as err:
            if err.name and err.name.split(".")[0] in {"langchain_core", "langchain", "llama_index"}:
                raise MissingExtraError(err.name.split(".")[0], extra) from err
            raise
        return getattr(mod, name)(rag=self, **kwargs)

    def as_langchain_retriever(self, **kwargs: Any) -> Any:
        """A LangChain ``BaseRetriever`` over this store."""
        return self._bridge("langchain", "ClaraRetriever", **kwargs)

    def as_langchain_compressor(self, **kwargs: Any) -> Any:
        """A LangChain document compressor (CLaRa rerank of another retriever's documents)."""
        return self._bridge("langchain", "ClaraDocumentCompressor", **kwargs)

    def as_langchain_chat_model(self, **kwargs: Any) -> Any:
        """A LangChain chat model that answers from CLaRa memories."""
        return self._bridge("langchain", "ClaraChatModel", **kwargs)

    def as_llama_index_retriever(self, **kwargs: Any) -> Any:
        """A LlamaIndex retriever over this store."""
        return self._bridge("llama_index", "ClaraRetriever", **kwargs)

    def as_llama_index_postprocessor(self, **kwargs: Any) -> Any:
        """A LlamaIndex node postprocessor (CLaRa rerank)."""
        return self._bridge("llama_index", "ClaraNodePostprocessor", **kwargs)

    def as_llama_index_query_engine(self, **kwargs: Any) -> Any:
        """A LlamaIndex query engine that retrieves and answers with CLaRa."""
        return self._bridge("llama_index", "make_query_engine", **kwargs)

    def as_llama_index_chat_engine(self, **kwargs: Any) -> Any:
        """A LlamaIndex chat engine (condense-plus-context style) whose generator reads the retrieved memories."""
        return self._bridge("llama_index", "make_chat_engine", **kwargs)

    def as_langchain_vectorstore(self, **kwargs: Any) -> Any:
        """A LangChain ``VectorStore`` over this store (``ClaraVectorStore``)."""
        return self._bridge("langchain", "ClaraVectorStore", **kwargs)
