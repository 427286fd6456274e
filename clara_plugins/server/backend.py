"""The generator backend: what the server needs from a model, so that another engine can replace ours.

``ClaraBackend`` runs everything with a :class:`~clara_plugins.rag.ClaraRAG` in the calling thread; the server
calls it from its one model thread only (see ``batching.ModelWorker``). A vLLM backend (``prompt_embeds`` + LoRA)
would implement the same three generation methods; docs/server.md sketches it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from clara_plugins.rag import ClaraRAG, IndexResult, text_hash
from clara_plugins.store import Hit


class GeneratorBackend(Protocol):
    """Answers questions from the memories of given chunks, greedily."""

    def generate(self, questions: Sequence[str], hits: Sequence[Sequence[Hit]], max_new_tokens: int) -> list[str]:
        """One answer per question, each read from the memories of its own hits (one batched call)."""
        ...

    def stream(self, question: str, hits: Sequence[Hit], max_new_tokens: int, cancel: threading.Event) -> Iterator[str]:
        """The answer to one question, piece by piece; a backend that can stop early does so once ``cancel`` is set
        (the caller keeps reading until the iterator ends either way)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of a text in the generator's vocabulary."""
        ...


class ClaraBackend:
    """Retrieval, indexing and generation with a ``ClaraRAG`` (our own generator)."""

    def __init__(self, rag: ClaraRAG) -> None:
        self.rag = rag

    @property
    def slots_per_document(self) -> int:
        """Memory vectors the generator reads per document (counted as prompt tokens)."""
        return int(self.rag.model.n_mem)

    @property
    def default_max_tokens(self) -> int:
        """``config.max_new_tokens`` of the model (used when a request gives no ``max_tokens``)."""
        return int(self.rag.model.config.max_new_tokens)

    def search(self, question: str, k: int | None, where: dict[str, Any] | None) -> list[Hit]:
        return self.rag.search(question, k=k, where=where)

    def search_many(self, questions: Sequence[str], k: int | None, where: dict[str, Any] | None) -> list[list[Hit]]:
        return self.rag.search_many(questions, k=k, where=where)

    def generate(self, questions: Sequence[str], hits: Sequence[Sequence[Hit]], max_new_tokens: int) -> list[str]:
        return [a.text for a in self.rag.answer_many(questions, hits, max_new_tokens=max_new_tokens)]

    def stream(self, question: str, hits: Sequence[Hit], max_new_tokens: int, cancel: threading.Event) -> Iterator[str]:
        """Stops generating at the next token once ``cancel`` is set (closing the model's stream ends it)."""
        pieces = self.rag.stream_from_hits(question, hits, max_new_tokens=max_new_tokens)
        try:
            for piece in pieces:
                if cancel.is_set():
                    return
                yield piece
        finally:
            pieces.close()

    def count_tokens(self, text: str) -> int:
        return len(self.rag.model.tokenizer.encode(text, add_special_tokens=False))

    def index(self, records: list[dict[str, Any]]) -> IndexResult:
        return self.rag.index(records, show_progress=False)

    def delete_document(self, doc_id: str) -> int:
        """Delete every chunk of a document; returns how many chunks it had (0: unknown id, nothing deleted)."""
        status = self.rag.store.doc_status([doc_id])
        if doc_id not in status:
            return 0
        before = self.rag.store.count()
        self.rag.delete([doc_id])
        return before - self.rag.store.count()

    def count(self) -> int:
        return self.rag.store.count()


def context_hits(texts: Sequence[str]) -> list[Hit]:
    """Hits for texts a request carries (in the given order); the generator reads their memories."""
    return [Hit(id=text_hash(t), text=t, score=0.0, doc_id=text_hash(t), start=0, end=len(t)) for t in texts]
