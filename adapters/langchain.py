"""LangChain integration: a retriever, a reranker (document compressor) and a chat model over one ``ClaraRAG``.

```python
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import RunnablePassthrough

retriever = rag.as_langchain_retriever(k=3)          # Documents with their store ids, metadata and scores
chat = rag.as_langchain_chat_model()                  # the generator: reads the stored memories, never the text
chain = (
    {"context": retriever, "question": RunnablePassthrough()}
    | ClaraContextPacker()                            # packs the Documents into the message for the generator
    | chat
    | StrOutputParser()
)
chain.invoke("Who wrote Hamlet?")
```

Also: ``ClaraVectorStore`` (a LangChain ``VectorStore`` over the same store), ``search_type`` / ``search_kwargs`` on
the retriever (similarity, MMR over the stored memories, a cosine threshold), and prompts with the context pasted
in (LangChain's RAG tutorial templates) understood by the chat model, see ``_stuffed``.

How documents reach the generator: ``ClaraContextPacker`` turns ``{"context": ..., "question": ...}`` into one
``HumanMessage`` whose content is the question and whose ``additional_kwargs["clara_context"]`` lists the
documents (text, store id, metadata). ``ClaraChatModel`` gives the generator the stored memory of every document
that names a chunk of the store and compresses the others on the fly; see its docstring for plain messages.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from clara_plugins.errors import InputError, MissingExtraError
from clara_plugins.retrieval import SearchOptions, run_search, search_options

try:
    from langchain_core.callbacks import (
        AsyncCallbackManagerForRetrieverRun,
        CallbackManagerForRetrieverRun,
        Callbacks,
    )
    from langchain_core.documents import BaseDocumentCompressor, Document
    from langchain_core.messages import HumanMessage
    from langchain_core.prompt_values import ChatPromptValue
    from langchain_core.retrievers import BaseRetriever
    from langchain_core.runnables import RunnableConfig, RunnableSerializable
    from pydantic import ConfigDict, Field, field_validator, model_validator
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by test_import_hygiene
    raise MissingExtraError("langchain-core", "langchain") from exc

from clara_plugins.adapters._common import RELEVANCE_KEY, check_positive, check_rag, hit_metadata, rerank
from clara_plugins.adapters._langchain_chat import CONTEXT_KEY, ClaraChatModel
from clara_plugins.adapters._langchain_vectorstore import ClaraVectorStore

logger = logging.getLogger(__name__)

__all__ = [
    "CONTEXT_KEY",
    "ClaraChatModel",
    "ClaraContextPacker",
    "ClaraDocumentCompressor",
    "ClaraRetriever",
    "ClaraVectorStore",
    "context_message",
]


def hit_to_document(hit: Any, score_key: str = "score") -> Document:
    """A LangChain ``Document`` for one ``Hit``: chunk text, user metadata plus CLaRa's keys, the store id."""
    return Document(page_content=hit.text, id=hit.id, metadata=hit_metadata(hit, score_key))


class ClaraRetriever(BaseRetriever):
    """Retrieves chunks from a CLaRa store: cosine between the query reasoner's vector and the stored memories.

    Attributes:
        rag: the ``ClaraRAG`` to search.
        k: chunks returned per query.
        where: Chroma filter on the user metadata, e.g. ``{"lang": "en"}``.
        search_type: ``"similarity"`` (default), ``"mmr"`` (maximal marginal relevance over the stored memories)
            or ``"similarity_score_threshold"`` (keeps chunks whose CLaRa cosine is at least ``score_threshold``).
        search_kwargs: LangChain's vector-store retriever arguments: ``k``, ``filter`` (= ``where``), ``fetch_k``
            and ``lambda_mult`` (mmr), ``score_threshold``; they win over ``k`` / ``where``. Anything else raises.

    ``invoke(query, k=..., filter=...)`` takes the same keywords for one call. Each ``Document`` has ``id`` = the
    chunk's store id, and metadata = the user metadata of its source document plus ``clara_id`` (the store id
    again, for pipelines that drop ``Document.id``), ``score`` (the cosine), ``doc_id``, ``start`` and ``end`` (the
    chunk's character offsets in its source document).
    """

    rag: Any = Field(exclude=True)
    k: int = 4
    where: dict[str, Any] | None = None
    search_type: str = "similarity"
    search_kwargs: dict[str, Any] = Field(default_factory=dict)

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @field_validator("rag")
    @classmethod
    def _valid_rag(cls, value: Any) -> Any:
        return check_rag(value)

    @field_validator("k")
    @classmethod
    def _valid_k(cls, value: Any) -> int:
        return check_positive("k", value)

    @model_validator(mode="after")
    def _valid_search(self) -> ClaraRetriever:
        self.options()  # raises naming a bad search_type or keyword now, not at the first query
        return self

    def options(self, **overrides: Any) -> SearchOptions:
        """The search this retriever runs, with per-call ``overrides`` (same keywords as ``search_kwargs``)."""
        call = {key: v for key, v in overrides.items() if v is not None}
        kwargs = {**_filter_as_where(self.search_kwargs), **_filter_as_where(call)}  # a per-call filter wins
        return search_options(self.search_type, kwargs, k=self.k, where=self.where)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        hits = run_search(self.rag, query, self.options(**kwargs))
        return [hit_to_document(hit) for hit in hits]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        # the model works on CPU/GPU synchronously: run it in a worker thread so the event loop stays free
        sync_manager = run_manager.get_sync()
        return await asyncio.to_thread(self._get_relevant_documents, query, run_manager=sync_manager, **kwargs)


def _filter_as_where(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with LangChain's ``filter`` renamed to ``where`` (both at once raises)."""
    if "filter" not in kwargs:
        return dict(kwargs)
    if "where" in kwargs:
        msg = "pass the metadata filter as filter or as where, not both"
        raise InputError(msg)
    out = dict(kwargs)
    out["where"] = out.pop("filter")
    return out


class ClaraDocumentCompressor(BaseDocumentCompressor):
    """Reranks Documents from any retriever with CLaRa's query reasoner and keeps the best ``top_n``.

    Documents that are already in the store (``metadata["clara_id"]``, ``Document.id``, or the same text) reuse
    their stored memories; the others are compressed on the fly (and not stored). Use it inside
    ``langchain_classic.retrievers.ContextualCompressionRetriever`` to rerank e.g. BM25 candidates.

    Attributes:
        rag: the ``ClaraRAG`` whose model scores and whose store is reused.
        top_n: Documents kept; fewer when fewer come in.

    The returned Documents are the incoming ones (same text, id and metadata) in the new order, with
    ``relevance_score`` (the cosine) added to their metadata.
    """

    rag: Any = Field(exclude=True)
    top_n: int = 3

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @field_validator("rag")
    @classmethod
    def _valid_rag(cls, value: Any) -> Any:
        return check_rag(value)

    @field_validator("top_n")
    @classmethod
    def _valid_top_n(cls, value: Any) -> int:
        return check_positive("top_n", value)

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Return the ``top_n`` Documents most relevant to ``query``, best first, scored."""
        if not documents:
            return []
        ranked = rerank(self.rag, query, [(d.page_content, d.metadata) for d in documents], self.top_n)
        out = []
        for i, score in ranked:
            doc = documents[i]
            out.append(
                Document(page_content=doc.page_content, id=doc.id, metadata={**doc.metadata, RELEVANCE_KEY: score})
            )
        return out


def _as_documents(context: Any) -> list[Document]:
    """Accept a list of Documents, one Document, a string or a list of strings."""
    if context is None:
        return []
    if isinstance(context, (str, Document)):
        context = [context]
    docs = []
    for item in context:
        if isinstance(item, str):
            item = Document(page_content=item)
        if not isinstance(item, Document):
            msg = f"context items must be Documents or strings, got {type(item).__name__}"
            raise InputError(msg)
        docs.append(item)
    return docs


def context_message(question: str, context: Any) -> HumanMessage:
    """The message ``ClaraChatModel`` reads: the question, with the documents in ``additional_kwargs``.

    Args:
        question: the user's question (the message content).
        context: Documents (from ``ClaraRetriever`` or any other retriever), one Document, a string, or strings.

    Returns:
        A ``HumanMessage`` with ``additional_kwargs["clara_context"]`` = one dict per document with its
        ``text``, ``id`` (store id or None) and ``metadata``.
    """
    if not isinstance(question, str):
        msg = f"question must be a string, got {type(question).__name__}"
        raise InputError(msg)
    packed = [{"text": d.page_content, "id": d.id, "metadata": dict(d.metadata)} for d in _as_documents(context)]
    return HumanMessage(content=question, additional_kwargs={CONTEXT_KEY: packed})


class ClaraContextPacker(RunnableSerializable[dict, ChatPromptValue]):
    """The step between a retriever and ``ClaraChatModel`` in an LCEL chain.

    Takes ``{"context": <Documents | str>, "question": <str>}`` (the keys are configurable) and returns a
    ``ChatPromptValue`` holding ``context_message(question, context)``.

    Attributes:
        context_key: input key of the documents.
        question_key: input key of the question.
    """

    context_key: str = "context"
    question_key: str = "question"

    def _pack(self, inputs: dict) -> ChatPromptValue:
        if not isinstance(inputs, dict) or self.question_key not in inputs:
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            msg = f"ClaraContextPacker needs a dict with keys {self.question_key!r} and {self.context_key!r}, got {got}"
            raise InputError(msg)
        message = context_message(inputs[self.question_key], inputs.get(self.context_key))
        return ChatPromptValue(messages=[message])

    def invoke(self, input: dict, config: RunnableConfig | None = None, **kwargs: Any) -> ChatPromptValue:
        """Pack the documents and the question into one message."""
        return self._call_with_config(self._pack, input, config, run_type="prompt")
