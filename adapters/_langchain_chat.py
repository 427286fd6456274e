"""``ClaraChatModel``: CLaRa's generator as a LangChain chat model (re-exported by ``adapters.langchain``).

The generator reads compressed memories, never document text. What it reads, per call, in this order:

1. documents packed into a message (``additional_kwargs["clara_context"]``, see ``ClaraContextPacker``): a document
   naming a chunk of the store (``id`` / ``metadata["clara_id"]``) reuses its stored memory; any other document is
   looked up by content or compressed on the fly;
2. a message filling a known RAG template (LangChain hub ``rlm/rag-prompt``, the RAG tutorial's system prompt for
   ``create_retrieval_chain``, see ``_stuffed``): its context slot is split back into the stored chunks it pastes
   (found by content hash; other pieces compressed on the fly), and its question slot, if any, is the question;
3. the text of other ``SystemMessage``s, taken as plain-text context (split the same way);
4. else, with ``retrieve=True`` (the default), the ``k`` best chunks of the store for the question, provided the
   question is one the query reasoner reads whole (at most ``doc_max_length`` tokens, no pasted stored chunks):
   anything else raises ``PromptError`` naming the supported way, never a search with template text.

The question is the template's question slot, else the text of the last ``HumanMessage``. Earlier turns of a
conversation are not shown to the generator: a CLaRa prompt holds one question.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from clara_plugins.errors import InputError, MissingExtraError

try:
    from langchain_core.callbacks import CallbackManagerForLLMRun
    from langchain_core.language_models import BaseChatModel, LangSmithParams
    from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage
    from langchain_core.messages.ai import UsageMetadata
    from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
    from pydantic import ConfigDict, Field, field_validator, model_validator
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by test_import_hygiene
    raise MissingExtraError("langchain-core", "langchain") from exc

from clara_plugins.adapters._common import StopFilter, check_positive, check_rag, references
from clara_plugins.adapters._stuffed import (
    SUPPORTED_WAY,
    PromptError,
    check_question,
    is_instruction,
    parse,
    split_context,
)

logger = logging.getLogger(__name__)

CONTEXT_KEY = "clara_context"  # additional_kwargs key of a message that carries documents for ClaraChatModel
_CALL_KWARGS = ("model", "max_tokens", "k", "stream")  # per-call keyword arguments _generate/_stream accept


@dataclass
class _Call:
    """One generation request, resolved from messages and arguments."""

    question: str
    refs: list[Any]  # Hits, in the order the generator sees them
    max_new_tokens: int | None
    stop: list[str]


class ClaraChatModel(BaseChatModel):
    """CLaRa's generator as a chat model: answers from compressed documents, never from pasted text.

    Attributes:
        rag: the ``ClaraRAG`` whose model generates and whose store provides memories.
        model_name: name reported in traces and ``response_metadata`` (alias ``model``; default: where the model
            was loaded from, e.g. ``apple/CLaRa-7B-Instruct``).
        k: chunks retrieved when a call brings no context (default: the model's ``generation_top_k``).
        retrieve: retrieve from the store when a call brings no context; if False such calls are an error.
        max_tokens: most new tokens per answer (default: the model's ``max_new_tokens``).
        temperature: CLaRa decodes greedily; only None or 0 are accepted.
        stop: stop sequences; the answer is cut before the first one.
        streaming: make ``invoke`` use the streaming path.
    """

    rag: Any = Field(exclude=True)
    model_name: str = Field(default="", alias="model")
    k: int | None = None
    retrieve: bool = True
    max_tokens: int | None = None
    temperature: float | None = None
    stop: list[str] | None = None
    streaming: bool = False

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    @field_validator("rag")
    @classmethod
    def _valid_rag(cls, value: Any) -> Any:
        return check_rag(value)

    @model_validator(mode="after")
    def _default_model_name(self) -> ClaraChatModel:
        if not self.model_name:
            self.model_name = str(self.rag.model.source or "clara")
        return self

    @field_validator("k", "max_tokens")
    @classmethod
    def _valid_counts(cls, value: Any, info: Any) -> int | None:
        return None if value is None else check_positive(info.field_name, value)

    @field_validator("temperature")
    @classmethod
    def _valid_temperature(cls, value: Any) -> float | None:
        if value not in (None, 0, 0.0):
            msg = f"temperature must be None or 0 (CLaRa decodes greedily), got {value!r}"
            raise InputError(msg)
        return value

    @property
    def _llm_type(self) -> str:
        return "clara-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "k": self.k, "retrieve": self.retrieve, "max_tokens": self.max_tokens}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="clara", ls_model_name=kwargs.get("model") or self.model_name, ls_model_type="chat"
        )
        if self.temperature is not None:
            params["ls_temperature"] = self.temperature
        if max_tokens := kwargs.get("max_tokens", self.max_tokens):
            params["ls_max_tokens"] = max_tokens
        if stops := stop or self.stop:
            params["ls_stop"] = stops
        return params

    # ---- resolving a call -------------------------------------------------------------------------------------

    def _prepare(self, messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> _Call:
        unknown = sorted(set(kwargs) - set(_CALL_KWARGS))
        if unknown:
            msg = f"ClaraChatModel got unsupported keyword arguments {unknown} (no tool calling or structured output)"
            raise InputError(msg)
        if kwargs.get("model") not in (None, self.model_name):
            msg = f"model={kwargs['model']!r}: ClaraChatModel cannot switch models per call (it is {self.model_name!r})"
            raise InputError(msg)
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            check_positive("max_tokens", max_tokens)
        question, refs = self._inputs(messages, kwargs.get("k"))
        return _Call(question, refs, max_tokens, list(stop or self.stop or []))

    def _inputs(self, messages: Sequence[BaseMessage], k: int | None) -> tuple[str, list[Any]]:
        """The question and the documents (``Hit``s) of a call, by the rules of the module docstring."""
        question = _question(messages)
        items, asked, understood = [], None, False
        for message in messages:
            packed = message.additional_kwargs.get(CONTEXT_KEY)
            stuffed = parse(message.text) if packed is None and message.text.strip() else None
            if packed is not None:
                items.extend(_unpack(packed))
            elif stuffed is not None:  # a known RAG template: its context slot and (if any) its question slot
                items.extend(split_context(self.rag, stuffed.context))
                asked = stuffed.question or asked
                if message.text == question and stuffed.question is None:
                    msg = f"the last human message fills a template that has no question slot. Instead, {SUPPORTED_WAY}"
                    raise PromptError(msg)
            elif isinstance(message, SystemMessage) and message.text.strip() and not is_instruction(message.text):
                items.extend(split_context(self.rag, message.text))  # plain-text context
            understood = understood or packed is not None or stuffed is not None
        if items or understood:  # an empty context from a template is an error in the core, not a new search
            return asked or question, [hit for _, hit in references(self.rag, items)]
        if not self.retrieve:
            msg = "the messages carry no context (no clara_context, no system message) and retrieve=False"
            raise InputError(msg)
        k = k if k is not None else self.k or self.rag.default_k
        return question, list(self.rag.search(check_question(self.rag, question), k=check_positive("k", k)))

    # ---- generation -------------------------------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._prepare(messages, stop, kwargs)
        answer = self.rag.answer_from_hits(call.question, call.refs, max_new_tokens=call.max_new_tokens)
        text = StopFilter(call.stop).apply(answer.text)
        message = AIMessage(
            content=text, response_metadata=self._response_metadata(call), usage_metadata=self._usage(call, text)
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call = self._prepare(messages, stop, kwargs)
        cut = StopFilter(call.stop)
        emitted = []
        for piece in self.rag.stream_from_hits(call.question, call.refs, max_new_tokens=call.max_new_tokens):
            text = cut.feed(piece)
            if text:
                emitted.append(text)
                yield ChatGenerationChunk(message=AIMessageChunk(content=text))
            if cut.stopped:
                break  # the model finishes in its own thread (holding its lock) and the rest is dropped
        tail = cut.flush()
        emitted.append(tail)
        last = AIMessageChunk(
            content=tail,
            chunk_position="last",
            response_metadata=self._response_metadata(call),
            usage_metadata=self._usage(call, "".join(emitted)),
        )
        yield ChatGenerationChunk(message=last)  # BaseChatModel reports each chunk to the callbacks

    def _response_metadata(self, call: _Call) -> dict[str, Any]:
        sources = [{"id": ref.id, "doc_id": ref.doc_id, "start": ref.start, "end": ref.end} for ref in call.refs]
        return {"model_name": self.model_name, "model_provider": "clara", "clara_sources": sources}

    def _usage(self, call: _Call, text: str) -> UsageMetadata:
        # the generator's prompt: template + question + n_mem + 1 positions per document (memories count as tokens)
        prompt_tokens = int(self.rag.model.build_prompts([call.question], [len(call.refs)])["input_ids"].shape[1])
        output_tokens = len(self.rag.model.tokenizer(text, add_special_tokens=False)["input_ids"])
        return UsageMetadata(
            input_tokens=prompt_tokens, output_tokens=output_tokens, total_tokens=prompt_tokens + output_tokens
        )


def _question(messages: Sequence[BaseMessage]) -> str:
    """The text of the last human message (of the last message when there is none)."""
    if not messages:
        msg = "ClaraChatModel needs at least one message"
        raise InputError(msg)
    humans = [m for m in messages if isinstance(m, HumanMessage)]
    question = (humans or list(messages))[-1].text
    if not question.strip():
        msg = "the question (the last human message) is empty"
        raise InputError(msg)
    return question


def _unpack(packed: Any) -> list[tuple[str, dict | None]]:
    """``(text, metadata)`` of each document in the ``clara_context`` list of a message."""
    if not isinstance(packed, list):
        msg = f"additional_kwargs[{CONTEXT_KEY!r}] must be a list of dicts, got {type(packed).__name__}"
        raise InputError(msg)
    items = []
    for item in packed:
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            msg = f"each {CONTEXT_KEY} item needs a 'text' string, got {item!r:.80}"
            raise InputError(msg)
        items.append((item["text"], item.get("metadata")))
    return items
