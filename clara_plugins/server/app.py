"""The ASGI app: routes, lifespan (model thread, batcher, clean shutdown) and middleware (size limit, metrics)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse

from clara_plugins.rag import ClaraRAG
from clara_plugins.server.auth import authorize
from clara_plugins.server.backend import ClaraBackend
from clara_plugins.server.batching import Batcher, ChatJob, ModelWorker, StreamJob
from clara_plugins.server.chat import Completion, build_job, cut_at_stop, finish_reason, hit_dict, stream_events
from clara_plugins.server.errors import APIError, install_error_handlers
from clara_plugins.server.limits import BodyLimitMiddleware, Slots
from clara_plugins.server.metrics import Metrics
from clara_plugins.server.schemas import ChatRequest, IndexRequest, SearchRequest
from clara_plugins.server.settings import ServerSettings

logger = logging.getLogger(__name__)


class ServerState:
    """Everything a request handler needs: the backend, settings, model thread, batcher, metrics and slots."""

    def __init__(self, backend: ClaraBackend, settings: ServerSettings) -> None:
        self.backend, self.settings = backend, settings
        self.metrics = Metrics()
        self.worker = ModelWorker()
        self.batcher = Batcher(backend, self.worker, settings.max_batch, settings.batch_window_ms / 1000, self.metrics)
        self.slots = Slots(settings.max_concurrent)
        self.metrics.in_flight.set_function(lambda: self.slots.used)
        self.started = int(time.time())
        self.closing = False


def _state(request: Request) -> ServerState:
    return request.app.state.clara


def read_access(request: Request) -> ServerState:
    """Dependency of read endpoints (checked before the body is parsed)."""
    state = _state(request)
    authorize(request, state.settings, write=False)
    return state


def write_access(request: Request) -> ServerState:
    """Dependency of write endpoints."""
    state = _state(request)
    authorize(request, state.settings, write=True)
    return state


ReadState = Annotated[ServerState, Depends(read_access)]
WriteState = Annotated[ServerState, Depends(write_access)]


@asynccontextmanager
async def _held(state: ServerState) -> AsyncIterator[None]:
    if state.closing:
        raise APIError(503, "the server is shutting down", None, "shutting_down")
    state.slots.acquire()
    try:
        yield
    finally:
        state.slots.release()


def create_app(rag: ClaraRAG | ClaraBackend, settings: ServerSettings | None = None) -> FastAPI:
    """The server's ASGI app over a ``ClaraRAG`` (or a backend with the same methods).

    Args:
        rag: The loaded model and store.
        settings: Limits, keys and batching; default :class:`ServerSettings()`.
    """
    settings = settings or ServerSettings()
    backend = rag if isinstance(rag, ClaraBackend) else ClaraBackend(rag)
    state = ServerState(backend, settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.batcher.start()
        logger.info("serving model %r (auth %s)", settings.model_name, "on" if settings.auth_enabled else "off")
        yield
        await shutdown(state)

    app = FastAPI(title="clara serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.clara = state
    install_error_handlers(app)
    _add_routes(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_headers=["*"],
                           allow_methods=["GET", "POST", "DELETE"])  # fmt: skip
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app


async def shutdown(state: ServerState) -> None:
    """Refuse new work, fail queued chat jobs (503), let the running model call finish, release the store."""
    state.closing = True
    await state.batcher.close()
    await asyncio.get_running_loop().run_in_executor(None, state.worker.shutdown)
    logger.info("model thread stopped; store released")


def _add_routes(app: FastAPI) -> None:
    app.get("/health")(health)
    app.get("/metrics")(metrics)
    app.get("/v1/models")(list_models)
    app.get("/v1/models/{model_id}")(get_model)
    app.post("/v1/chat/completions")(chat_completions)
    app.post("/v1/search")(search)
    app.post("/v1/index")(index)
    app.delete("/v1/documents/{doc_id}")(delete_document)


async def health(request: Request) -> dict[str, Any]:
    """Liveness and load (no key needed)."""
    state = _state(request)
    status = "shutting_down" if state.closing else "ok"
    return {"status": status, "model": state.settings.model_name, "in_flight": state.slots.used,
            "queued": state.batcher.queue.qsize()}  # fmt: skip


async def metrics(state: ReadState) -> Response:
    """Prometheus metrics."""
    return Response(state.metrics.render(), media_type=state.metrics.content_type)


def _model_card(state: ServerState) -> dict[str, Any]:
    return {"id": state.settings.model_name, "object": "model", "created": state.started, "owned_by": "clara-plugins"}


async def list_models(state: ReadState) -> dict[str, Any]:
    """``GET /v1/models``: the one model this server answers with."""
    return {"object": "list", "data": [_model_card(state)]}


async def get_model(model_id: str, state: ReadState) -> dict[str, Any]:
    """``GET /v1/models/{id}``."""
    if model_id != state.settings.model_name:
        raise APIError(404, f"the model {model_id!r} does not exist", "model", "model_not_found")
    return _model_card(state)


async def search(body: SearchRequest, state: ReadState) -> dict[str, Any]:
    """``POST /v1/search``: the ``k`` stored chunks closest to ``query``, with scores and provenance."""
    if body.k is not None and not 1 <= body.k <= state.settings.max_k:
        raise APIError(400, f"k must be between 1 and {state.settings.max_k}, got {body.k}", "k", "invalid_value")
    async with _held(state):
        hits = await state.worker.run(state.backend.search, body.query, body.k, body.where)
    return {"object": "list", "query": body.query, "data": [hit_dict(h) for h in hits]}


async def index(body: IndexRequest, state: WriteState) -> dict[str, Any]:
    """``POST /v1/index``: chunk, compress and store documents (validated before anything is written)."""
    if len(body.documents) > state.settings.max_documents:
        msg = f"documents must hold at most {state.settings.max_documents} entries, got {len(body.documents)}"
        raise APIError(400, msg, "documents", "invalid_value")
    records = [{"text": d} if isinstance(d, str) else d.model_dump(exclude_none=True) for d in body.documents]
    async with _held(state):
        result = await state.worker.run(state.backend.index, records)
        count = await state.worker.run(state.backend.count)
    return {"object": "index.result", **asdict(result), "chunks_in_store": count}


async def delete_document(doc_id: str, state: WriteState) -> dict[str, Any]:
    """``DELETE /v1/documents/{id}``: every chunk of the document; 404 when no such document is stored."""
    async with _held(state):
        removed = await state.worker.run(state.backend.delete_document, doc_id)
    if not removed:
        raise APIError(404, f"no document with id {doc_id!r} in the store", "doc_id", "document_not_found")
    return {"id": doc_id, "object": "document.deleted", "deleted": True, "chunks_deleted": removed}


async def chat_completions(body: ChatRequest, state: ReadState) -> Response:
    """``POST /v1/chat/completions`` (OpenAI-compatible; ``stream: true`` for server-sent events)."""
    job, stops = build_job(body, state.settings, state.backend.default_max_tokens)
    if isinstance(job, StreamJob):
        return await _stream(body, job, stops, state)
    async with _held(state):
        text, hits = await state.batcher.submit(job)
    return JSONResponse(_whole_answer(state, job, text, hits, stops))


def _whole_answer(state: ServerState, job: ChatJob, text: str, hits: list, stops: list[str]) -> dict[str, Any]:
    completion_tokens = state.backend.count_tokens(text)
    text, stopped = cut_at_stop(text, stops)
    prompt_tokens = state.backend.count_tokens(job.question) + state.backend.slots_per_document * len(hits)
    state.metrics.prompt_tokens.inc(prompt_tokens)
    state.metrics.completion_tokens.inc(completion_tokens)
    completion = Completion(state.settings.model_name)
    finish = finish_reason(stopped, completion_tokens, job.max_new_tokens)
    return completion.whole(text, finish, completion.usage(prompt_tokens, completion_tokens), hits)


async def _stream(body: ChatRequest, job: StreamJob, stops: list[str], state: ServerState) -> Response:
    """Start the job, wait for its sources (errors before the first byte keep their HTTP status), then stream."""
    if state.closing:
        raise APIError(503, "the server is shutting down", None, "shutting_down")
    state.slots.acquire()  # released by _end_stream, however the stream ends
    task = asyncio.create_task(state.batcher.stream(job))
    try:
        kind, value = await job.events.get()
    except BaseException:
        _end_stream(state, job, task)
        raise
    if kind == "error":
        _end_stream(state, job, task)
        raise value
    include_usage = bool((body.stream_options or {}).get("include_usage"))
    events = stream_events(job, value, stops, Completion(state.settings.model_name), state.backend, include_usage,
                           state.metrics)  # fmt: skip
    return ClosingStreamingResponse(events, on_close=lambda: _end_stream(state, job, task),
                                    media_type="text/event-stream", headers={"Cache-Control": "no-cache"})  # fmt: skip


def _end_stream(state: ServerState, job: StreamJob, task: asyncio.Task) -> None:
    """The stream is over (finished, failed or the client left): stop sending, free the slot."""
    job.cancel.set()
    state.slots.release()
    task.add_done_callback(_log_task_error)


def _log_task_error(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("stream job failed: %s", task.exception())


class ClosingStreamingResponse(StreamingResponse):
    """A streaming response that runs ``on_close`` exactly once however it ends (done, error, disconnect)."""

    def __init__(self, content: Any, on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


class MetricsMiddleware:
    """Count requests and time them (a streamed answer until its last byte), labelled by route template."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status, tick = [500], time.perf_counter()

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(endpoint, scope["method"], str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - tick)
