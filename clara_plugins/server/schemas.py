"""Request bodies of the OpenAI-compatible and native endpoints (pydantic; a schema violation is a 422).

Chat requests accept OpenAI's fields; unknown extra fields are allowed (clients send many) and ignored, but
fields asking for something the generator cannot do (sampling, ``n > 1``, tools, logprobs, penalties) are refused
with a 400 naming the field by :func:`unsupported_chat_field`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt


class ContentPart(BaseModel):
    """One part of a message's content; only text parts can be read."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """One chat message."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions``; ``clara_*`` fields are ours (OpenAI clients send them via ``extra_body``)."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    stop: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: StrictInt | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None
    clara_documents: list[str] | None = None
    clara_k: StrictInt | None = None
    clara_where: dict[str, Any] | None = None


class SearchRequest(BaseModel):
    """``POST /v1/search``."""

    model_config = ConfigDict(extra="forbid")
    query: str
    k: StrictInt | None = None
    where: dict[str, Any] | None = None


class IndexDocument(BaseModel):
    """One document of ``POST /v1/index``."""

    model_config = ConfigDict(extra="forbid")
    text: str
    id: str | None = None
    metadata: dict[str, Any] | None = None


class IndexRequest(BaseModel):
    """``POST /v1/index``: documents as texts or ``{text, id, metadata}`` records."""

    model_config = ConfigDict(extra="forbid")
    documents: list[str | IndexDocument] = Field(min_length=1)


def unsupported_chat_field(req: ChatRequest) -> tuple[str, str] | None:
    """``(field, reason)`` of the first field asking for something the greedy generator cannot do, else None."""
    checks = (
        ("temperature", req.temperature not in (None, 0), "the generator is greedy: send temperature 0 or omit it"),
        ("top_p", req.top_p not in (None, 1), "the generator is greedy: send top_p 1 or omit it"),
        ("n", req.n not in (None, 1), "only n=1 is supported"),
        ("presence_penalty", req.presence_penalty not in (None, 0), "penalties are not supported"),
        ("frequency_penalty", req.frequency_penalty not in (None, 0), "penalties are not supported"),
        ("logprobs", bool(req.logprobs), "logprobs are not supported"),
        ("logit_bias", bool(req.logit_bias), "logit_bias is not supported"),
        ("tools", bool(req.tools or req.functions), "tools and functions are not supported"),
        ("response_format", _structured(req.response_format), "only response_format type 'text' is supported"),
    )
    for name, bad, reason in checks:
        if bad:
            return name, reason
    return None


def _structured(fmt: dict[str, Any] | None) -> bool:
    return fmt is not None and fmt.get("type") != "text"


def message_text(message: ChatMessage) -> str:
    """The text of a message (text parts joined); other parts are refused by the caller."""
    if isinstance(message.content, str) or message.content is None:
        return message.content or ""
    return "".join(p.text or "" for p in message.content if p.type == "text")
