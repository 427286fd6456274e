"""``ClaraLLM`` and ``ClaraSynthesizer`` (re-exported by ``clara_plugins.adapters.llama_index``).

``ClaraLLM`` is CLaRa's generator behind LlamaIndex's LLM interface. What it reads, per call:

- ``nodes=`` (nodes, ``NodeWithScore``, strings): exactly those (stored memories for stored chunks);
- a QA prompt template (``predict`` / ``stream`` / ``apredict`` / ``astream`` with ``{context_str}`` and
  ``{query_str}``, as every LlamaIndex response synthesizer and chat engine sends, custom templates included): the
  question is ``query_str`` and the documents are the chunks of ``context_str`` (split at blank lines, stored chunks
  found by content hash, ``key: value`` metadata headers dropped, other pieces compressed on the fly);
- a prompt string filling a known template (LlamaIndex's text QA prompt, see ``_stuffed``): the same, parsed;
- ``chat``: the last user message is the question, system messages are context (a known template's context slot,
  else the whole text; LlamaIndex's instruction-only QA system prompt is skipped);
- otherwise the prompt is the question and ``k`` chunks are retrieved from the store, unless the prompt is longer
  than the query reasoner reads or pastes stored chunks (``PromptError``). Refine prompts (several calls per
  answer) and the condense prompt of chat engines raise ``PromptError`` too.

``ClaraSynthesizer`` is the response synthesizer that passes the retrieved nodes themselves to ``ClaraLLM``
(LlamaIndex's built-in synthesizers pass only their text).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from clara_plugins.errors import InputError, MissingExtraError

try:
    from llama_index.core.base.llms.types import (
        ChatMessage,
        ChatResponse,
        ChatResponseGen,
        CompletionResponse,
        CompletionResponseAsyncGen,
        CompletionResponseGen,
        LLMMetadata,
        MessageRole,
    )
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.callbacks import CallbackManager
    from llama_index.core.llms import CustomLLM
    from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
    from llama_index.core.response_synthesizers import BaseSynthesizer
    from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore
    from llama_index.core.types import RESPONSE_TEXT_TYPE
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by test_import_hygiene
    raise MissingExtraError("llama-index-core", "llama-index") from exc

from clara_plugins.adapters._common import aiter_in_thread, check_positive, check_rag, references
from clara_plugins.adapters._stuffed import (
    SUPPORTED_WAY,
    PromptError,
    check_question,
    is_instruction,
    parse,
    split_context,
)

logger = logging.getLogger(__name__)

TEXT_WINDOW = 1_000_000  # tokens of text LlamaIndex may pack into one prompt (see ClaraLLM.context_window)
_NODES_KWARG = "clara_nodes"  # how ClaraSynthesizer hands the nodes through BaseSynthesizer.synthesize


def _item(item: BaseNode | NodeWithScore | str | tuple[str, dict | None]) -> tuple[str, dict | None]:
    if isinstance(item, tuple):  # already (text, metadata), e.g. from split_context
        return item
    if isinstance(item, str):
        return item, None
    node = item.node if isinstance(item, NodeWithScore) else item
    return node.get_content(metadata_mode=MetadataMode.NONE), node.metadata


class ClaraLLM(CustomLLM):
    """CLaRa's generator as a LlamaIndex LLM: answers from compressed memories, never from pasted text.

    Attributes:
        model_name: name reported in ``metadata`` (default: where the model was loaded from).
        k: chunks retrieved when a call brings no nodes (default: the model's ``generation_top_k``).
        max_new_tokens: most new tokens per answer (default: the model's ``max_new_tokens``).
        context_window: what ``metadata`` reports (default ``TEXT_WINDOW``): how much text LlamaIndex may pack
            into one prompt. The generator never reads that text (each document takes ``n_mem + 1`` positions), so
            the default is large: a response synthesizer then sends all of a query's nodes in one prompt, never in
            several refine steps.
    """

    model_name: str = Field(default="")
    k: int | None = Field(default=None)
    max_new_tokens: int | None = Field(default=None)
    context_window: int | None = Field(default=None)

    _rag: Any = PrivateAttr()

    def __init__(self, rag: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._rag = check_rag(rag)
        self.model_name = self.model_name or str(rag.model.source or "clara")
        for name in ("k", "max_new_tokens"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))

    @classmethod
    def class_name(cls) -> str:
        return "ClaraLLM"

    @property
    def rag(self) -> Any:
        """The ``ClaraRAG`` that generates."""
        return self._rag

    @property
    def metadata(self) -> LLMMetadata:
        """LlamaIndex's description of this LLM."""
        model = self._rag.model
        window = self.context_window or TEXT_WINDOW
        num_output = self.max_new_tokens or model.config.max_new_tokens
        return LLMMetadata(context_window=window, num_output=num_output, model_name=self.model_name)

    def _refs(self, question: str, nodes: Sequence[Any] | None) -> list[Any]:
        if not question.strip():
            msg = "the prompt (the question) is empty"
            raise InputError(msg)
        if nodes is not None:
            return [hit for _, hit in references(self._rag, [_item(n) for n in nodes])]
        k = self.k or self._rag.default_k
        return list(self._rag.search(check_question(self._rag, question), k=k))

    def _understood(self, prompt: str, nodes: Sequence[Any] | None) -> tuple[str, Sequence[Any] | None]:
        """The question and nodes of a call: a prompt filling a known RAG template gives both (docs/integrations)."""
        stuffed = parse(prompt) if nodes is None else None
        if stuffed is None:
            return prompt, nodes
        if stuffed.question is None:
            msg = f"the prompt fills a template that has no question slot. Instead, {SUPPORTED_WAY}"
            raise PromptError(msg)
        return stuffed.question, split_context(self._rag, stuffed.context, headers=True)

    def _answer(self, prompt: str, nodes: Sequence[Any] | None) -> CompletionResponse:
        prompt, nodes = self._understood(prompt, nodes)
        refs = self._refs(prompt, nodes)
        answer = self._rag.answer_from_hits(prompt, refs, max_new_tokens=self.max_new_tokens)
        return CompletionResponse(text=answer.text, raw={"sources": refs})

    def _stream(self, prompt: str, nodes: Sequence[Any] | None) -> CompletionResponseGen:
        prompt, nodes = self._understood(prompt, nodes)
        refs = self._refs(prompt, nodes)
        text = ""
        for piece in self._rag.stream_from_hits(prompt, refs, max_new_tokens=self.max_new_tokens):
            text += piece
            yield CompletionResponse(text=text, delta=piece, raw={"sources": refs})

    @llm_completion_callback()
    def complete(
        self, prompt: str, formatted: bool = False, nodes: Sequence[Any] | None = None, **kwargs: Any
    ) -> CompletionResponse:
        """Answer the question ``prompt`` from ``nodes`` (or from the store when None)."""
        return self._answer(prompt, nodes)

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, nodes: Sequence[Any] | None = None, **kwargs: Any
    ) -> CompletionResponseGen:
        """Stream the answer to ``prompt`` as it is generated (``text`` so far plus ``delta``)."""
        return self._stream(prompt, nodes)

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, nodes: Sequence[Any] | None = None, **kwargs: Any
    ) -> CompletionResponse:
        """``complete`` in a worker thread, so the event loop stays free."""
        return await asyncio.to_thread(self._answer, prompt, nodes)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, nodes: Sequence[Any] | None = None, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        """``stream_complete`` with generation in worker threads, so the event loop stays free."""
        return aiter_in_thread(lambda: self._stream(prompt, nodes))

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answer the last user message; system messages are plain-text context, compressed on the fly."""
        question, nodes = self._chat_inputs(messages)
        nodes = nodes if nodes is not None else kwargs.pop("nodes", None)
        response = self.complete(question, nodes=nodes, **kwargs)
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=response.text), raw=response.raw)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Stream the answer to the last user message (see ``chat``)."""
        question, nodes = self._chat_inputs(messages)
        nodes = nodes if nodes is not None else kwargs.pop("nodes", None)
        stream = self.stream_complete(question, nodes=nodes, **kwargs)

        def gen() -> ChatResponseGen:
            for r in stream:
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=r.text), delta=r.delta)

        return gen()

    def _chat_inputs(self, messages: Sequence[ChatMessage]) -> tuple[str, list[Any] | None]:
        users = [m for m in messages if m.role == MessageRole.USER]
        if not users:
            msg = "ClaraLLM.chat needs a user message (the question)"
            raise InputError(msg)
        items, understood = [], False
        for m in messages:
            text = m.content or ""
            if m.role != MessageRole.SYSTEM or not text.strip() or is_instruction(text):
                continue
            stuffed = parse(text)  # a known template's context slot, else the whole text is context
            items.extend(split_context(self._rag, stuffed.context if stuffed else text, headers=True))
            understood = True
        return users[-1].content or "", items if understood else None

    # ---- LlamaIndex's prompt-template entry points (what response synthesizers and chat engines call) -----------

    def _slots(self, prompt: Any, prompt_args: dict[str, Any]) -> tuple[str, list[Any]] | None:
        """``(question, context items)`` of a QA prompt (one with ``{context_str}`` and ``{query_str}``), else None."""
        args = {**(getattr(prompt, "kwargs", None) or {}), **prompt_args}
        if "existing_answer" in args or "context_msg" in args:
            msg = (
                "ClaraLLM got a refine prompt: it answers once from the memories of all the context, it cannot "
                "refine an answer over several prompts. Use response_mode='compact' (the default) with ClaraLLM's "
                f"default context_window, or {SUPPORTED_WAY}"
            )
            raise PromptError(msg)
        if "context_str" not in args or "query_str" not in args:
            return None
        return str(args["query_str"]), split_context(self._rag, str(args["context_str"]), headers=True)

    def predict(self, prompt: Any, **prompt_args: Any) -> str:
        """LlamaIndex's ``predict``. A QA prompt (``{context_str}`` and ``{query_str}``, as every response
        synthesizer and chat engine sends) is answered for ``query_str`` from the chunks of ``context_str``."""
        slots = self._slots(prompt, prompt_args)
        if slots is None:
            return super().predict(prompt, **prompt_args)
        return self.complete(slots[0], nodes=slots[1]).text

    def stream(self, prompt: Any, **prompt_args: Any) -> Any:
        """LlamaIndex's ``stream``; QA prompts as in ``predict``."""
        slots = self._slots(prompt, prompt_args)
        if slots is None:
            return super().stream(prompt, **prompt_args)
        return (r.delta or "" for r in self.stream_complete(slots[0], nodes=slots[1]))

    async def apredict(self, prompt: Any, **prompt_args: Any) -> str:
        """LlamaIndex's ``apredict``; QA prompts as in ``predict``."""
        slots = self._slots(prompt, prompt_args)
        if slots is None:
            return await super().apredict(prompt, **prompt_args)
        return (await self.acomplete(slots[0], nodes=slots[1])).text

    async def astream(self, prompt: Any, **prompt_args: Any) -> Any:
        """LlamaIndex's ``astream``; QA prompts as in ``predict``."""
        slots = self._slots(prompt, prompt_args)
        if slots is None:
            return await super().astream(prompt, **prompt_args)
        return _deltas(await self.astream_complete(slots[0], nodes=slots[1]))


class ClaraSynthesizer(BaseSynthesizer):
    """Response synthesizer that gives ``ClaraLLM`` the nodes (their stored memories), not their text.

    Args:
        llm: the ``ClaraLLM`` to answer with (or pass ``rag`` to make one).
        rag: a ``ClaraRAG``, used when ``llm`` is None.
        streaming: return streaming responses.
        max_new_tokens: answer length of the ``ClaraLLM`` made from ``rag`` (set it on ``llm`` otherwise).
        callback_manager: LlamaIndex callback manager.
    """

    def __init__(
        self,
        llm: ClaraLLM | None = None,
        rag: Any = None,
        streaming: bool = False,
        max_new_tokens: int | None = None,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        if llm is None and rag is None:
            msg = "ClaraSynthesizer needs llm (a ClaraLLM) or rag (a ClaraRAG)"
            raise InputError(msg)
        if llm is not None and max_new_tokens is not None:
            msg = "max_new_tokens applies to the ClaraLLM made from rag; set it on the llm you pass instead"
            raise InputError(msg)
        llm = llm if llm is not None else ClaraLLM(rag=rag, max_new_tokens=max_new_tokens)
        if not isinstance(llm, ClaraLLM):
            msg = f"llm must be a ClaraLLM (it reads memories, not text), got {type(llm).__name__}"
            raise InputError(msg)
        super().__init__(llm=llm, callback_manager=callback_manager, streaming=streaming)

    def _get_prompts(self) -> dict[str, Any]:
        return {}  # no text prompt template: the generator's prompt is fixed by the checkpoint

    def _update_prompts(self, prompts: dict[str, Any]) -> None:
        if prompts:
            msg = f"ClaraSynthesizer has no prompt templates to update, got {sorted(prompts)}"
            raise InputError(msg)

    def synthesize(self, query: Any, nodes: list[NodeWithScore], *args: Any, **kwargs: Any) -> Any:
        """LlamaIndex's ``synthesize``, with the nodes themselves handed to ``get_response``."""
        return super().synthesize(query, nodes, *args, **{_NODES_KWARG: nodes, **kwargs})

    async def asynthesize(self, query: Any, nodes: list[NodeWithScore], *args: Any, **kwargs: Any) -> Any:
        """LlamaIndex's ``asynthesize``, with the nodes themselves handed to ``aget_response``."""
        return await super().asynthesize(query, nodes, *args, **{_NODES_KWARG: nodes, **kwargs})

    def get_response(self, query_str: str, text_chunks: Sequence[str], **kwargs: Any) -> RESPONSE_TEXT_TYPE:
        """Answer from the nodes handed by ``synthesize`` (or compress ``text_chunks`` when called directly)."""
        nodes = kwargs.pop(_NODES_KWARG, None)
        nodes = list(text_chunks) if nodes is None else nodes
        if self._streaming:
            return (r.delta or "" for r in self._llm.stream_complete(query_str, nodes=nodes))
        return self._llm.complete(query_str, nodes=nodes).text

    async def aget_response(self, query_str: str, text_chunks: Sequence[str], **kwargs: Any) -> RESPONSE_TEXT_TYPE:
        """Async ``get_response``; streaming responses come as an async generator."""
        nodes = kwargs.pop(_NODES_KWARG, None)
        nodes = list(text_chunks) if nodes is None else nodes
        if self._streaming:
            return _deltas(await self._llm.astream_complete(query_str, nodes=nodes))
        return (await self._llm.acomplete(query_str, nodes=nodes)).text


async def _deltas(stream: AsyncIterator[CompletionResponse]) -> AsyncIterator[str]:
    async for r in stream:
        yield r.delta or ""
