"""``ClaraVectorStore``: a LangChain ``VectorStore`` over a CLaRa store (re-exported by ``adapters.langchain``).

```python
store = ClaraVectorStore.from_documents(docs, embedding=None, rag=rag)   # or ClaraVectorStore(rag=rag)
store.add_documents(more_docs, ids=["a", "b"])
store.similarity_search_with_score("Who wrote Hamlet?", k=3)              # [(Document, CLaRa cosine), ...]
store.max_marginal_relevance_search("Who wrote Hamlet?", k=3, fetch_k=10)
retriever = store.as_retriever(search_type="mmr", search_kwargs={"k": 3})
```

CLaRa computes its own vectors (the compressor's memories for documents, the query reasoner's vector for
questions), so there is no separate embedding function: ``embedding`` must be None and ``embeddings`` is None.

A LangChain document is one CLaRa document: its id (``ids=`` / ``Document.id``, else a new uuid) is the document
id, and what comes back carries that id and the user metadata, nothing else. A text longer than the compressor
reads (``doc_max_length`` tokens) is stored as several chunks; a search then returns the matching chunk's text
under the document's id, and ``get_by_ids`` returns all its chunks in order.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from clara_plugins.errors import InputError, MissingExtraError

try:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import VectorStore
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by test_import_hygiene
    raise MissingExtraError("langchain-core", "langchain") from exc

from clara_plugins.adapters._common import check_rag
from clara_plugins.retrieval import mmr_search, run_search, search_options


def _no_embedding(embedding: Any) -> None:
    if embedding is not None:
        msg = (
            f"embedding must be None: CLaRa computes its own vectors (got {type(embedding).__name__}); "
            "the model of the ClaraRAG is the embedding"
        )
        raise InputError(msg)


def _no_kwargs(method: str, kwargs: dict[str, Any]) -> None:
    if kwargs:
        msg = f"ClaraVectorStore.{method} got unsupported keyword arguments {sorted(kwargs)}"
        raise InputError(msg)


class ClaraVectorStore(VectorStore):
    """LangChain ``VectorStore`` over a ``ClaraRAG``: documents compressed once, searched by CLaRa cosine.

    Args:
        rag: the ``ClaraRAG`` whose model computes the vectors and whose store holds them.
        embedding: must be None (CLaRa computes its own vectors); accepted for LangChain's signature.
    """

    def __init__(self, rag: Any, embedding: Embeddings | None = None) -> None:
        _no_embedding(embedding)
        self.rag = check_rag(rag)

    @property
    def embeddings(self) -> Embeddings | None:
        """None: CLaRa's vectors come from its own compressor and query reasoner, not an ``Embeddings`` object."""
        return None

    # ---- writing ------------------------------------------------------------------------------------------------

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
        *,
        ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Compress and store texts; an id already stored is replaced (same text: nothing to do).

        Returns:
            The document ids (a new uuid for each text without one).
        """
        _no_kwargs("add_texts", kwargs)
        texts = list(texts)
        if ids is not None and len(ids) != len(texts):
            msg = f"ids has {len(ids)} entries for {len(texts)} texts"
            raise InputError(msg)
        doc_ids = [i if i else uuid.uuid4().hex for i in (ids or [None] * len(texts))]
        metas = [dict(m or {}) for m in metadatas] if metadatas is not None else None
        self.rag.index(texts, ids=doc_ids, metadatas=metas, show_progress=False)
        return doc_ids

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        """Delete documents (every chunk) by id; unknown ids are ignored. ``ids=None`` raises (no delete-all)."""
        _no_kwargs("delete", kwargs)
        if ids is None:
            msg = "ClaraVectorStore.delete needs ids (deleting everything is not offered; drop the collection)"
            raise InputError(msg)
        self.rag.delete(list(ids))
        return True

    # ---- reading ------------------------------------------------------------------------------------------------

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The stored documents with these ids (all chunks of each, in order); unknown ids are left out."""
        return [self._document(hit) for hit in self.rag.store.records_by_doc(list(ids))]

    @staticmethod
    def _document(hit: Any) -> Document:
        return Document(page_content=hit.text, id=hit.doc_id, metadata=dict(hit.metadata))

    def similarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        """The ``k`` documents closest to ``query`` by CLaRa cosine (``filter``: a Chroma filter on metadata)."""
        return [doc for doc, _ in self.similarity_search_with_score(query, k=k, filter=filter, **kwargs)]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """``(document, CLaRa cosine)`` pairs, best first (the score is a similarity: higher is closer)."""
        _no_kwargs("similarity_search_with_score", kwargs)
        hits = run_search(self.rag, query, search_options("similarity", {"k": k, "filter": filter}))
        return [(self._document(hit), hit.score) for hit in hits]

    def similarity_search_with_relevance_scores(
        self, query: str, k: int = 4, score_threshold: float | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Like ``similarity_search_with_score``; the relevance score is the CLaRa cosine itself (-1 to 1), and
        ``score_threshold`` keeps documents whose cosine is at least that."""
        pairs = self.similarity_search_with_score(query, k=k, **kwargs)
        return pairs if score_threshold is None else [(d, s) for d, s in pairs if s >= score_threshold]

    def _select_relevance_score_fn(self) -> Any:
        return lambda score: score  # the CLaRa cosine is already a similarity

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """Maximal marginal relevance over CLaRa vectors (cosines between stored memories), see ``mmr_search``."""
        _no_kwargs("max_marginal_relevance_search", kwargs)
        options = search_options("mmr", {"k": k, "fetch_k": fetch_k, "lambda_mult": lambda_mult, "filter": filter})
        hits = mmr_search(self.rag, query, options.k, options.fetch_k, options.lambda_mult, options.where)
        return [self._document(hit) for hit in hits]

    @classmethod
    def from_documents(
        cls, documents: list[Document], embedding: Embeddings | None = None, **kwargs: Any
    ) -> ClaraVectorStore:
        """A store over ``rag=`` holding ``documents`` with their ids and metadata (``embedding`` must be None)."""
        return super().from_documents(documents, embedding, **kwargs)

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None = None,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        rag: Any = None,
        **kwargs: Any,
    ) -> ClaraVectorStore:
        """A store over ``rag`` holding ``texts`` (``embedding`` must be None; ``rag`` is required)."""
        _no_kwargs("from_texts", kwargs)
        if rag is None:
            msg = "ClaraVectorStore.from_texts needs rag= (a ClaraRAG: its model computes the vectors)"
            raise InputError(msg)
        store = cls(rag=rag, embedding=embedding)
        store.add_texts(texts, metadatas, ids=ids)
        return store
