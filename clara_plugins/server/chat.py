"""``POST /v1/chat/completions``: validate a request into a job, answer it whole or as server-sent events.

The last message (role ``user``) is the question; earlier messages are not read by the generator. The answer is
read from the memories of the store's top ``clara_k`` chunks, or of the texts in ``clara_documents`` when the
request carries its own context. The chunks read come back in ``clara_sources``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from clara_plugins.errors import ClaraError
from clara_plugins.server.backend import context_hits
from clara_plugins.server.batching import ChatJob, StreamJob
from clara_plugins.server.errors import APIError, error_body
from clara_plugins.server.schemas import ChatRequest, message_text, unsupported_chat_field
from clara_plugins.server.settings import ServerSettings
from clara_plugins.store import Hit

MAX_STOPS = 4


def hit_dict(hit: Hit) -> dict[str, Any]:
    """A hit as JSON (id, text, score, metadata, doc_id, start, end)."""
    return asdict(hit)


def _question(req: ChatRequest) -> str:
    last = req.messages[-1]
    if last.role != "user":
        msg = f"the last message must have role 'user' (it is the question), got {last.role!r}"
        raise APIError(400, msg, "messages", "invalid_value")
    if isinstance(last.content, list) and any(p.type != "text" for p in last.content):
        raise APIError(400, "only text content parts can be read", "messages", "invalid_value")
    text = message_text(last)
    if not text.strip():
        raise APIError(400, "the last user message is empty", "messages", "invalid_value")
    return text


def _max_tokens(req: ChatRequest, settings: ServerSettings, default: int) -> int:
    value = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    name = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    if value is None:
        return min(settings.default_max_tokens or default, settings.max_tokens_limit)
    if not 1 <= value <= settings.max_tokens_limit:
        msg = f"{name} must be between 1 and {settings.max_tokens_limit}, got {value}"
        raise APIError(400, msg, name, "invalid_value")
    return value


def _stops(req: ChatRequest) -> list[str]:
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > MAX_STOPS or any(not s for s in stops):
        raise APIError(400, f"stop must be up to {MAX_STOPS} non-empty strings", "stop", "invalid_value")
    return stops


def _context(req: ChatRequest, settings: ServerSettings) -> list[Hit] | None:
    docs = req.clara_documents
    if docs is None:
        if req.clara_k is not None and not 1 <= req.clara_k <= settings.max_k:
            msg = f"clara_k must be between 1 and {settings.max_k}, got {req.clara_k}"
            raise APIError(400, msg, "clara_k", "invalid_value")
        return None
    if req.clara_k is not None or req.clara_where is not None:
        msg = "clara_k and clara_where select from the store; with clara_documents every given document is read"
        raise APIError(400, msg, "clara_k" if req.clara_k is not None else "clara_where", "invalid_value")
    if not 1 <= len(docs) <= settings.max_documents:
        msg = f"clara_documents must hold 1 to {settings.max_documents} texts, got {len(docs)}"
        raise APIError(400, msg, "clara_documents", "invalid_value")
    if any(not d.strip() for d in docs):
        raise APIError(400, "clara_documents has an empty text", "clara_documents", "invalid_value")
    return context_hits(docs)


def build_job(req: ChatRequest, settings: ServerSettings, default_max_tokens: int) -> tuple[ChatJob, list[str]]:
    """Check a chat request and turn it into a job plus its stop sequences.

    Raises:
        APIError: 404 for another model, 400 naming the field for anything the server cannot do as asked.
    """
    if req.model != settings.model_name:
        msg = f"the model {req.model!r} does not exist; this server serves {settings.model_name!r}"
        raise APIError(404, msg, "model", "model_not_found")
    refused = unsupported_chat_field(req)
    if refused:
        raise APIError(400, f"{refused[0]}: {refused[1]}", refused[0], "unsupported_value")
    job_cls = StreamJob if req.stream else ChatJob
    job = job_cls(
        question=_question(req),
        max_new_tokens=_max_tokens(req, settings, default_max_tokens),
        hits=_context(req, settings),
        k=req.clara_k,
        where=req.clara_where,
    )
    return job, _stops(req)


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """``text`` up to the first stop sequence, and whether one was found."""
    found = [text.find(s) for s in stops if s in text]
    return (text[: min(found)], True) if found else (text, False)


class StopScanner:
    """Streamed text with stop sequences removed: holds back just enough characters to see a stop split in two."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.buffer = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """The text that can be sent now, and whether a stop sequence ended the answer."""
        self.buffer += piece
        cut, stopped = cut_at_stop(self.buffer, self.stops)
        if stopped:
            self.buffer = ""
            return cut, True
        ready = len(self.buffer) - self.hold
        if ready <= 0:
            return "", False
        out, self.buffer = self.buffer[:ready], self.buffer[ready:]
        return out, False


class Completion:
    """Builds the response objects of one chat completion."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def usage(self, prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        total = prompt_tokens + completion_tokens
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}

    def whole(self, text: str, finish: str, usage: dict[str, int], sources: list[Hit]) -> dict[str, Any]:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        return {**self._head("chat.completion"), "choices": [{**choice, "logprobs": None}], "usage": usage,
                "clara_sources": [hit_dict(h) for h in sources]}  # fmt: skip

    def chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return sse({**self._head("chat.completion.chunk"), "choices": [choice], **extra})

    def usage_chunk(self, usage: dict[str, int]) -> str:
        return sse({**self._head("chat.completion.chunk"), "choices": [], "usage": usage})

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def public_error(err: BaseException) -> tuple[int, str, None, str]:
    """``(status, message, param, code)`` safe to show a client: our own errors' messages, nothing else."""
    if isinstance(err, APIError):
        return err.status, err.message, None, err.code or "error"
    if isinstance(err, ClaraError):
        return 400, str(err), None, type(err).__name__
    return 500, "internal server error; see the server log", None, "internal_error"


def finish_reason(stopped: bool, completion_tokens: int, max_new_tokens: int) -> str:
    """``"stop"`` (end of answer or stop sequence) or ``"length"`` (``max_tokens`` reached)."""
    return "length" if not stopped and completion_tokens >= max_new_tokens else "stop"


async def stream_events(
    job: StreamJob,
    hits: list[Hit],
    stops: list[str],
    completion: Completion,
    backend: Any,
    include_usage: bool,
    metrics: Any,
) -> AsyncIterator[str]:
    """The server-sent events of a streamed answer, ending with ``data: [DONE]``; read ``job.events``.

    The first event (the sources, ``hits``) was already taken from the queue by the caller.
    """
    scanner, raw, stopped = StopScanner(stops), [], False
    yield completion.chunk({"role": "assistant", "content": ""}, clara_sources=[hit_dict(h) for h in hits])
    prompt_tokens = backend.count_tokens(job.question) + backend.slots_per_document * len(hits)
    while True:
        kind, value = await job.events.get()
        if kind == "text" and not stopped:
            raw.append(value)
            out, stopped = scanner.feed(value)
            if stopped:
                job.cancel.set()  # the generator stops at its next token
            if out:
                yield completion.chunk({"content": out})
        elif kind == "error":
            yield sse(error_body(*public_error(value)))
            break
        elif kind == "end":
            if not stopped and scanner.buffer:
                yield completion.chunk({"content": scanner.buffer})
            completion_tokens = backend.count_tokens("".join(raw))
            metrics.prompt_tokens.inc(prompt_tokens)
            metrics.completion_tokens.inc(completion_tokens)
            yield completion.chunk({}, finish_reason(stopped, completion_tokens, job.max_new_tokens))
            if include_usage:
                yield completion.usage_chunk(completion.usage(prompt_tokens, completion_tokens))
            break
    yield sse("[DONE]")
