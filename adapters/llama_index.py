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
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by test_import_hygiene
    raise MissingExtraError("llama-index-core", "llama-index") from exc

from clara_plugins.adapters._common import ID_KEY, PROVENANCE_KEYS, check_positive, check_rag, rerank
from clara_plugins.adapters._llama_index_llm import ClaraLLM, ClaraSynthesizer

logger = logging.getLogger(__name__)

__all__ = [
    "ClaraLLM",
    "ClaraNodePostprocessor",
    "ClaraRetriever",
    "ClaraSynthesizer",
    "make_query_engine",
]

_HIDDEN_KEYS = [ID_KEY, *PROVENANCE_KEYS]  # kept out of the text LlamaIndex embeds or shows to a text LLM


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
        k: nodes per query (``similarity_top_k`` is accepted as LlamaIndex's name for it).
        where: Chroma filter on the user metadata, e.g. ``{"lang": "en"}``.
        callback_manager: LlamaIndex callback manager.
        verbose: LlamaIndex's verbose flag.
    """

    def __init__(
        self,
        rag: Any,
        k: int = 4,
        similarity_top_k: int | None = None,
        where: dict[str, Any] | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        self._rag = check_rag(rag)
        self.where = where
        self.k = check_positive("similarity_top_k" if similarity_top_k is not None else "k", similarity_top_k or k)
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @property
    def rag(self) -> Any:
        """The ``ClaraRAG`` searched."""
        return self._rag

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [hit_to_node(hit) for hit in self._rag.search(query_bundle.query_str, k=self.k, where=self.where)]

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
    k: int = 4,
    streaming: bool = False,
    node_postprocessors: Sequence[BaseNodePostprocessor] | None = None,
    max_new_tokens: int | None = None,
    callback_manager: CallbackManager | None = None,
) -> RetrieverQueryEngine:
    """A ``RetrieverQueryEngine``: ``ClaraRetriever`` -> optional postprocessors -> ``ClaraSynthesizer``.

    Args:
        rag: the ``ClaraRAG`` to retrieve from and generate with.
        k: chunks retrieved per query.
        streaming: return streaming responses (``response.response_gen`` / ``async_response_gen()``).
        node_postprocessors: postprocessors run between retrieval and generation.
        max_new_tokens: most new tokens per answer (default: the model's ``max_new_tokens``).
        callback_manager: LlamaIndex callback manager.

    Returns:
        The query engine; its responses carry the retrieved nodes as ``source_nodes``.
    """
    llm = ClaraLLM(rag=rag, max_new_tokens=max_new_tokens)
    synthesizer = ClaraSynthesizer(llm=llm, streaming=streaming, callback_manager=callback_manager)
    return RetrieverQueryEngine(
        retriever=ClaraRetriever(rag, k=k, callback_manager=callback_manager),
        response_synthesizer=synthesizer,
        node_postprocessors=list(node_postprocessors or []),
        callback_manager=callback_manager,
    )
