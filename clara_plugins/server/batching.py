"""One thread owns the model; concurrent chat requests are collected into batched generator calls.

``ModelWorker`` runs every call that touches the model (search, index, delete, generation) on one thread, in
order: torch modules are not safe to run concurrently with adapter switching. ``Batcher`` collects chat jobs
while the worker is busy (or for ``window`` seconds when it is idle), up to ``max_batch``, and answers them with
one generator call. Streaming jobs are not batched: each holds the worker while it generates.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from clara_plugins.server.errors import APIError
from clara_plugins.server.metrics import Metrics
from clara_plugins.store import Hit

logger = logging.getLogger(__name__)
T = TypeVar("T")


class ModelWorker:
    """A single thread that runs model calls one after another."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clara-model")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the model thread and wait for it without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def shutdown(self) -> None:
        """Drop queued calls and wait for the running one to finish."""
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class ChatJob:
    """One chat question: answered from ``hits`` if given, else from the store's top ``k``."""

    question: str
    max_new_tokens: int
    hits: list[Hit] | None = None
    k: int | None = None
    where: dict[str, Any] | None = None
    future: asyncio.Future | None = None


@dataclass
class StreamJob(ChatJob):
    """A streamed chat question; pieces go to ``events`` as ``(kind, value)``; ``cancel`` stops the output."""

    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)


def _resolve(loop: asyncio.AbstractEventLoop, fut: asyncio.Future, result: Any = None, error: Any = None) -> None:
    """Set a future's result or exception from the model thread (a future already cancelled is left alone)."""

    def settle() -> None:
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    loop.call_soon_threadsafe(settle)


class Batcher:
    """Collect chat jobs and answer them in batches on the model thread.

    Args:
        backend: The generator backend (``search``, ``generate``).
        worker: The model thread.
        max_batch: Most jobs per generator call.
        window_s: How long to wait for more jobs once the first arrives and the worker is idle.
        metrics: Where batch sizes and generation times go.
    """

    def __init__(self, backend: Any, worker: ModelWorker, max_batch: int, window_s: float, metrics: Metrics) -> None:
        self.backend, self.worker, self.metrics = backend, worker, metrics
        self.max_batch, self.window_s = max_batch, window_s
        self.queue: asyncio.Queue[ChatJob] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start collecting (call from the event loop)."""
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run_forever(), name="clara-batcher")

    async def submit(self, job: ChatJob) -> tuple[str, list[Hit]]:
        """Queue a job and wait for ``(answer, sources)``."""
        if self._task is None or self._task.done():
            raise APIError(503, "the server is shutting down", None, "shutting_down")
        job.future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(job)
        self.metrics.queued.inc()
        return await job.future

    async def _collect(self) -> list[ChatJob]:
        batch = [await self.queue.get()]
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), left))
            except asyncio.TimeoutError:
                break
        self.metrics.queued.dec(len(batch))
        return batch

    async def _run_forever(self) -> None:
        while True:
            batch = [job for job in await self._collect() if not job.future.done()]
            if not batch:
                continue
            try:
                await self.worker.run(self._answer, batch)
            except Exception as err:  # the worker was shut down under us
                for job in batch:
                    _resolve(self._loop, job.future, error=err)

    def _answer(self, jobs: list[ChatJob]) -> None:
        """On the model thread: one retrieval per (k, where), then one generator call per ``max_new_tokens``."""
        groups: dict[int, list[tuple[ChatJob, list[Hit]]]] = defaultdict(list)
        for job, hits in self._retrieve(jobs):
            groups[job.max_new_tokens].append((job, hits))
        for max_new_tokens, group in groups.items():
            self._generate(group, max_new_tokens)

    def _retrieve(self, jobs: list[ChatJob]) -> list[tuple[ChatJob, list[Hit]]]:
        """Each job with its hits: given ones, or the store's (jobs failing here are resolved with the error)."""
        ready = [(job, job.hits) for job in jobs if job.hits is not None]
        by_query: dict[str, list[ChatJob]] = defaultdict(list)
        for job in jobs:
            if job.hits is None:
                by_query[json.dumps([job.k, job.where], sort_keys=True, default=str)].append(job)
        for same in by_query.values():
            try:
                found = self.backend.search_many([j.question for j in same], same[0].k, same[0].where)
            except Exception as err:
                for job in same:
                    _resolve(self._loop, job.future, error=err)
                continue
            ready += list(zip(same, found))
        return ready

    def _generate(self, group: list[tuple[ChatJob, list[Hit]]], max_new_tokens: int) -> None:
        tick = time.perf_counter()
        try:
            texts = self.backend.generate([j.question for j, _ in group], [h for _, h in group], max_new_tokens)
        except Exception as err:
            for job, _ in group:
                _resolve(self._loop, job.future, error=err)
            return
        self.metrics.generate_seconds.observe(time.perf_counter() - tick)
        self.metrics.batch_size.observe(len(group))
        for (job, hits), text in zip(group, texts):
            _resolve(self._loop, job.future, result=(text, hits))

    async def stream(self, job: StreamJob) -> None:
        """Run a streaming job on the model thread (not batched); its events arrive on ``job.events``."""
        self._loop = self._loop or asyncio.get_running_loop()
        try:
            await self.worker.run(self._stream, job)
        except BaseException as err:  # the worker was shut down before the job ran: the reader must not wait forever
            job.events.put_nowait(("error", APIError(503, "the server is shutting down", None, "shutting_down")))
            if not isinstance(err, Exception):
                raise

    def _stream(self, job: StreamJob) -> None:
        """On the model thread: emit ``("hits", hits)``, ``("text", piece)``..., then ``("end", None)``.

        Once ``job.cancel`` is set (client gone, stop sequence seen) the backend stops generating at its next token
        and nothing more is sent; its generation thread has finished before the next model call starts.
        """
        put = self.queue_putter(job)
        if job.cancel.is_set():
            put(("end", None))
            return
        try:
            hits = job.hits if job.hits is not None else self.backend.search(job.question, job.k, job.where)
            put(("hits", hits))
            tick = time.perf_counter()
            for piece in self.backend.stream(job.question, hits, job.max_new_tokens, job.cancel):
                if not job.cancel.is_set():
                    put(("text", piece))
            self.metrics.generate_seconds.observe(time.perf_counter() - tick)
            self.metrics.batch_size.observe(1)
        except Exception as err:
            put(("error", err))
            return
        put(("end", None))

    def queue_putter(self, job: StreamJob) -> Callable[[tuple[str, Any]], None]:
        """A thread-safe ``put`` into a stream job's event queue."""
        loop = self._loop
        return lambda item: loop.call_soon_threadsafe(job.events.put_nowait, item)

    async def close(self) -> None:
        """Stop collecting; jobs still queued get 503."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self.queue.empty():
            job = self.queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(APIError(503, "the server is shutting down", None, "shutting_down"))
