"""LlamaIndex integration: a retriever, a node postprocessor (reranker), an LLM and a response synthesizer.

```python
engine = rag.as_llama_index_query_engine(k=3)            # = make_query_engine(rag=rag, k=3)
response = engine.query("Who wrote Hamlet?")
print(response.response, [n.node.node_id for n in response.source_nodes])
```

LlamaIndex's own synthesizers send the nodes' text to the LLM. ``ClaraSynthesizer`` instead hands the nodes
themselves to ``ClaraLLM``, whose generator reads their compressed memories: the stored memory for a node that
came from the store (``metadata["clara_id"]``), a memory compressed on the fly for any other node.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from clara_plugins.errors import InputError, MissingExtraError

try:
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.bridge.pydantic import PrivateAttr
    from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
    from llama_index.core.chat_engine import CondensePlusContextChatEngine
    from llama_index.core.memory import Memory
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.schema import (
        BaseNode,
        MetadataMode,
        NodeRelationship,
        NodeWithScore,
        QueryBundle,
        RelatedNodeInfo,
        TextNode,
    )
    from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilters
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by test_import_hygiene
    raise MissingExtraError("llama-index-core", "llama-index") from exc

from clara_plugins.adapters._common import ID_KEY, PROVENANCE_KEYS, check_positive, check_rag, rerank
from clara_plugins.adapters._llama_index_llm import ClaraLLM, ClaraSynthesizer
from clara_plugins.retrieval import SearchOptions, run_search, search_options

logger = logging.getLogger(__name__)

__all__ = [
    "ClaraChatEngine",
    "ClaraLLM",
    "ClaraNodePostprocessor",
    "ClaraRetriever",
    "ClaraSynthesizer",
    "make_chat_engine",
    "make_query_engine",
]

_HIDDEN_KEYS = [ID_KEY, *PROVENANCE_KEYS]  # kept out of the text LlamaIndex embeds or shows to a text LLM


_OPERATORS = {"==": "$eq", "!=": "$ne", ">": "$gt", ">=": "$gte", "<": "$lt", "<=": "$lte", "in": "$in", "nin": "$nin"}


def top_k(k: int | None, similarity_top_k: int | None, default: int = 4) -> int:
    """One count from ``k`` or LlamaIndex's ``similarity_top_k`` (both at once raises)."""
    if k is not None and similarity_top_k is not None:
        msg = f"pass k or similarity_top_k, not both (got k={k!r}, similarity_top_k={similarity_top_k!r})"
        raise InputError(msg)
    if similarity_top_k is not None:
        return check_positive("similarity_top_k", similarity_top_k)
    return check_positive("k", default if k is None else k)


def as_where(where: dict[str, Any] | None, filters: MetadataFilters | None) -> dict[str, Any] | None:
    """A Chroma filter from ``where`` or from LlamaIndex ``MetadataFilters`` (both at once raises)."""
    if where is not None and filters is not None:
        msg = "pass where (a Chroma filter) or filters (LlamaIndex MetadataFilters), not both"
        raise InputError(msg)
    if filters is None:
        return where
    if not isinstance(filters, MetadataFilters):
        msg = f"filters must be llama_index MetadataFilters, got {type(filters).__name__}"
        raise InputError(msg)
    return filters_to_where(filters)


def filters_to_where(filters: MetadataFilters) -> dict[str, Any] | None:
    """LlamaIndex ``MetadataFilters`` as a Chroma ``where``: ==, !=, >, >=, <, <=, in, nin under and / or.

    Raises:
        InputError: an operator or condition Chroma's metadata filter has no equivalent for, named.
    """
    clauses = []
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            clauses.append(filters_to_where(f))
            continue
        op = FilterOperator(f.operator).value
        if op not in _OPERATORS:
            msg = f"MetadataFilter operator {op!r} (key {f.key!r}) is not supported; use one of {list(_OPERATORS)}"
            raise InputError(msg)
        clauses.append({f.key: {_OPERATORS[op]: f.value}})
    clauses = [c for c in clauses if c]
    condition = FilterCondition(filters.condition or FilterCondition.AND).value
    if condition not in ("and", "or"):
        msg = f"MetadataFilters condition {condition!r} is not supported; use 'and' or 'or'"
        raise InputError(msg)
    if len(clauses) <= 1:
        return clauses[0] if clauses else None
    return {f"${condition}": clauses}


_MMR_KWARGS = {"mmr_threshold": "lambda_mult", "mmr_prefetch_k": "fetch_k"}  # LlamaIndex name -> SearchOptions


def _llama_search_options(
    mode: Any, kwargs: dict[str, Any] | None, k: int, where: dict[str, Any] | None
) -> SearchOptions:
    """LlamaIndex's ``vector_store_query_mode`` / ``vector_store_kwargs`` as validated ``SearchOptions``."""
    mode = getattr(mode, "value", mode)  # VectorStoreQueryMode or its string
    if mode not in ("default", "mmr"):
        msg = f"vector_store_query_mode={mode!r} is not supported; use 'default' or 'mmr'"
        raise InputError(msg)
    kwargs = dict(kwargs or {})
    allowed = _MMR_KWARGS if mode == "mmr" else {}
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        msg = (
            f"vector_store_kwargs {unknown} not supported with vector_store_query_mode={mode!r}; "
            f"it takes {list(allowed)}"
        )
        raise InputError(msg)
    search_kwargs = {_MMR_KWARGS[key]: value for key, value in kwargs.items()}
    return search_options("mmr" if mode == "mmr" else "similarity", search_kwargs, k=k, where=where)


def hit_to_node(hit: Any) -> NodeWithScore:
    """A ``NodeWithScore`` for one ``Hit``: a ``TextNode`` with the chunk's store id, text, offsets and metadata."""
    metadata = {**(hit.metadata or {}), ID_KEY: hit.id, "doc_id": hit.doc_id, "start": hit.start, "end": hit.end}
    node = TextNode(
        id_=hit.id,
        text=hit.text,
        metadata=metadata,
        start_char_idx=hit.start,
        end_char_idx=hit.end,
        excluded_embed_metadata_keys=list(_HIDDEN_KEYS),
        excluded_llm_metadata_keys=list(_HIDDEN_KEYS),
    )
    if hit.doc_id is not None:
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=str(hit.doc_id))
    return NodeWithScore(node=node, score=float(hit.score))


def node_item(node: BaseNode | NodeWithScore | str) -> tuple[str, dict | None]:
    """``(text, metadata)`` of a node, as the shared helpers take documents."""
    if isinstance(node, str):
        return node, None
    if isinstance(node, NodeWithScore):
        node = node.node
    return node.get_content(metadata_mode=MetadataMode.NONE), node.metadata


class ClaraRetriever(BaseRetriever):
    """Retrieves chunks from a CLaRa store as ``NodeWithScore`` of ``TextNode``.

    Each node has ``node_id`` = the chunk's store id, the cosine as score, the source document as its SOURCE
    relationship, character offsets, and metadata = the user metadata plus ``clara_id``, ``doc_id``, ``start``,
    ``end`` (those four are excluded from embedding and LLM text).

    Args:
        rag: the ``ClaraRAG`` to search.
        k: nodes per query (default 4); ``similarity_top_k`` is LlamaIndex's name for it (pass one of the two).
        where: Chroma filter on the user metadata, e.g. ``{"lang": "en"}``.
        filters: LlamaIndex ``MetadataFilters`` (converted to a Chroma filter; pass it or ``where``).
        vector_store_query_mode: ``"default"`` (similarity) or ``"mmr"`` (maximal marginal relevance over the
            stored memories), LlamaIndex's names.
        vector_store_kwargs: with ``"mmr"``: ``mmr_threshold`` (LlamaIndex's relevance weight, LangChain's
            ``lambda_mult``; default 0.5) and ``mmr_prefetch_k`` (candidates fetched first; default 20).
        callback_manager: LlamaIndex callback manager.
        verbose: LlamaIndex's verbose flag.
    """

    def __init__(
        self,
        rag: Any,
        k: int | None = None,
        similarity_top_k: int | None = None,
        where: dict[str, Any] | None = None,
        filters: MetadataFilters | None = None,
        vector_store_query_mode: str = "default",
        vector_store_kwargs: dict[str, Any] | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        self._rag = check_rag(rag)
        self.k = top_k(k, similarity_top_k)
        self.where = as_where(where, filters)
        self.options = _llama_search_options(vector_store_query_mode, vector_store_kwargs, self.k, self.where)
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @property
    def rag(self) -> Any:
        """The ``ClaraRAG`` searched."""
        return self._rag

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [hit_to_node(hit) for hit in run_search(self._rag, query_bundle.query_str, self.options)]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)


class ClaraNodePostprocessor(BaseNodePostprocessor):
    """Reranks nodes from any retriever or index with CLaRa's query reasoner and keeps the best ``top_n``.

    Nodes that are already in the store (``metadata["clara_id"]`` or the same text) reuse their stored memories;
    the others are compressed on the fly (and not stored). The nodes come back unchanged, best first, with the
    cosine as their score.

    Args:
        rag: the ``ClaraRAG`` whose model scores and whose store is reused.
        top_n: nodes kept; fewer when fewer come in.
    """

    top_n: int = 3

    _rag: Any = PrivateAttr()

    def __init__(self, rag: Any, top_n: int = 3, **kwargs: Any) -> None:
        super().__init__(top_n=check_positive("top_n", top_n), **kwargs)
        self._rag = check_rag(rag)

    @classmethod
    def class_name(cls) -> str:
        return "ClaraNodePostprocessor"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            msg = "ClaraNodePostprocessor needs the query: pass query_bundle or query_str"
            raise InputError(msg)
        if not nodes:
            return []
        with self.callback_manager.event(
            CBEventType.RERANKING,
            payload={EventPayload.NODES: nodes, EventPayload.QUERY_STR: query_bundle.query_str},
        ) as event:
            ranked = rerank(self._rag, query_bundle.query_str, [node_item(n) for n in nodes], self.top_n)
            out = [NodeWithScore(node=nodes[i].node, score=score) for i, score in ranked]
            event.on_end(payload={EventPayload.NODES: out})
        return out


def make_query_engine(
    rag: Any,
    k: int | None = None,
    streaming: bool = False,
    node_postprocessors: Sequence[BaseNodePostprocessor] | None = None,
    max_new_tokens: int | None = None,
    callback_manager: CallbackManager | None = None,
    similarity_top_k: int | None = None,
    where: dict[str, Any] | None = None,
    filters: MetadataFilters | None = None,
    **retriever_kwargs: Any,
) -> RetrieverQueryEngine:
    """A ``RetrieverQueryEngine``: ``ClaraRetriever`` -> optional postprocessors -> ``ClaraSynthesizer``.

    Args:
        rag: the ``ClaraRAG`` to retrieve from and generate with.
        k: chunks retrieved per query (default 4; or ``similarity_top_k``).
        streaming: return streaming responses (``response.response_gen`` / ``async_response_gen()``).
        node_postprocessors: postprocessors run between retrieval and generation.
        max_new_tokens: most new tokens per answer (default: the model's ``max_new_tokens``).
        callback_manager: LlamaIndex callback manager.
        similarity_top_k: LlamaIndex's name for ``k``.
        where: Chroma filter on the user metadata.
        filters: LlamaIndex ``MetadataFilters`` (instead of ``where``).
        **retriever_kwargs: other ``ClaraRetriever`` arguments (``vector_store_query_mode``, ``vector_store_kwargs``).

    Returns:
        The query engine; its responses carry the retrieved nodes as ``source_nodes``.
    """
    llm = ClaraLLM(rag=rag, max_new_tokens=max_new_tokens)
    synthesizer = ClaraSynthesizer(llm=llm, streaming=streaming, callback_manager=callback_manager)
    retriever = ClaraRetriever(
        rag,
        k=k,
        similarity_top_k=similarity_top_k,
        where=where,
        filters=filters,
        callback_manager=callback_manager,
        **retriever_kwargs,
    )
    return RetrieverQueryEngine(
        retriever=retriever,
        response_synthesizer=synthesizer,
        node_postprocessors=list(node_postprocessors or []),
        callback_manager=callback_manager,
    )


class ClaraChatEngine(CondensePlusContextChatEngine):
    """LlamaIndex's ``CondensePlusContextChatEngine`` whose answers are generated from the retrieved nodes' memories.

    Each turn retrieves for the latest user message (CLaRa does not rewrite follow-up questions: the condense step
    is skipped) and hands the nodes themselves to ``ClaraLLM`` through ``ClaraSynthesizer``; the answer's
    ``source_nodes`` are exactly the nodes the generator read. The chat history is kept in the engine's memory as
    usual but not shown to the generator (a CLaRa prompt holds one question and its documents).
    """

    def _get_response_synthesizer(self, chat_history: list[Any], streaming: bool = False) -> ClaraSynthesizer:
        return ClaraSynthesizer(llm=self._llm, streaming=streaming, callback_manager=self.callback_manager)


def make_chat_engine(
    rag: Any,
    k: int | None = None,
    similarity_top_k: int | None = None,
    where: dict[str, Any] | None = None,
    filters: MetadataFilters | None = None,
    node_postprocessors: Sequence[BaseNodePostprocessor] | None = None,
    max_new_tokens: int | None = None,
    chat_history: Sequence[Any] | None = None,
    callback_manager: CallbackManager | None = None,
    **retriever_kwargs: Any,
) -> ClaraChatEngine:
    """A ``ClaraChatEngine`` (condense-plus-context style) over ``rag``: ``rag.as_llama_index_chat_engine()``.

    Args:
        rag: the ``ClaraRAG`` to retrieve from and generate with.
        k: chunks retrieved per turn (default 4; or ``similarity_top_k``).
        similarity_top_k: LlamaIndex's name for ``k``.
        where: Chroma filter on the user metadata.
        filters: LlamaIndex ``MetadataFilters`` (instead of ``where``).
        node_postprocessors: postprocessors run between retrieval and generation.
        max_new_tokens: most new tokens per answer.
        chat_history: earlier ``ChatMessage``s to start from.
        callback_manager: LlamaIndex callback manager.
        **retriever_kwargs: other ``ClaraRetriever`` arguments (``vector_store_query_mode``, ``vector_store_kwargs``).
    """
    retriever = ClaraRetriever(
        rag,
        k=k,
        similarity_top_k=similarity_top_k,
        where=where,
        filters=filters,
        callback_manager=callback_manager,
        **retriever_kwargs,
    )
    llm = ClaraLLM(rag=rag, max_new_tokens=max_new_tokens, callback_manager=callback_manager)
    return ClaraChatEngine(
        retriever=retriever,
        llm=llm,
        memory=Memory.from_defaults(chat_history=list(chat_history or [])),
        skip_condense=True,
        node_postprocessors=list(node_postprocessors or []),
        callback_manager=callback_manager,
    )
