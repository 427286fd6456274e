"""Bulk indexing on an existing engine: many workers compress and store one corpus into one shared store.

Two engines, no scheduler of our own:

- **Ray Data**: the driver reads the corpus, leaves out the documents already stored whole, and maps batches of the
  rest over a pool of :class:`IndexActor` (``map_batches`` with ``ActorPoolStrategy``, ``num_gpus`` per actor). Each
  actor loads the model and opens the store once, then calls ``ClaraRAG.index`` on each batch it is given. Ray Data
  restarts an actor that dies and retries its batch, so a run in which one worker is killed still completes.
- **Launcher ranks** (``accelerate launch --multi_gpu``, ``torchrun``): every process started by the launcher reads
  the corpus and indexes the documents whose stable hash of the id, modulo ``WORLD_SIZE``, is its ``RANK``. A rank
  that dies makes the launcher stop the others; running the same command again finishes the job.

Either way a worker only ever calls ``ClaraRAG.index``, whose ids are deterministic (``doc#i``), whose writes are
upserts, which skips documents already stored whole and redoes partly stored ones: the run is idempotent and
resumable, and every chunk ends up stored exactly once.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from clara_plugins import errors
from clara_plugins.errors import ClaraError, InputError, MissingExtraError

logger = logging.getLogger(__name__)

PID_DIR_ENV = "CLARA_WORKER_PID_DIR"  # when set, each worker writes an empty file named after its pid there
COUNT_FIELDS = ("docs_added", "docs_skipped", "chunks_added", "chunks_reused", "chunk_s", "compress_s", "store_s")
MAX_DOCS_PER_BATCH = 256
SEED_DOCS = 2048  # documents indexed first, by one actor, into a new "shared" store (see seed_docs)


def shard_of(doc_id: str, world_size: int) -> int:
    """The rank that indexes ``doc_id``: a stable hash of the id (the same in every process and Python run, unlike
    ``hash()``), modulo ``world_size``."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % world_size


def launcher_rank() -> tuple[int, int, int] | None:
    """``(RANK, WORLD_SIZE, LOCAL_RANK)`` set by ``accelerate launch`` / ``torchrun``, or None outside a launcher
    (or with one process).

    Raises:
        InputError: the variables are set but malformed.
    """
    world = os.environ.get("WORLD_SIZE")
    if world in (None, "", "1"):
        return None
    try:
        rank, size = int(os.environ["RANK"]), int(world)
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError) as err:
        msg = f"WORLD_SIZE={world!r} is set but RANK={os.environ.get('RANK')!r} is not a rank: {err}"
        raise InputError(msg) from None
    if not 0 <= rank < size:
        msg = f"RANK={rank} is outside WORLD_SIZE={size}"
        raise InputError(msg)
    return rank, size, local


@dataclasses.dataclass
class BulkCounts:
    """What a bulk run did, summed over its workers (timings are worker-seconds)."""

    docs_added: int = 0
    docs_skipped: int = 0
    chunks_added: int = 0
    chunks_reused: int = 0
    chunk_s: float = 0.0
    compress_s: float = 0.0
    store_s: float = 0.0

    def add_all(self, rows: Sequence[Any]) -> None:
        """Add every row."""
        for row in rows:
            self.add(row)

    def add(self, other: Any) -> None:
        """Add the counts of another ``BulkCounts``, an ``IndexResult`` or a dict with the same fields."""
        get = other.get if isinstance(other, dict) else lambda name: getattr(other, name)
        for name in COUNT_FIELDS:
            setattr(self, name, getattr(self, name) + type(getattr(self, name))(get(name)))


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to open the model and the store, picklable: the ``clara index`` options.

    ``options`` are the command's options as a dict; the worker rebuilds the namespace and opens the store with
    the CLI's own ``open_store`` (so every store option reaches the workers unchanged) and the model with the
    CLI's rule (the store's recorded model unless ``--model`` is given).
    """

    options: dict[str, Any]
    device: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, device: str | None = None) -> WorkerSpec:
        """The spec of ``args`` with callables (the subcommand's ``func``) left out."""
        options = {k: v for k, v in vars(args).items() if not callable(v)}
        return cls(options=options, device=device)

    def namespace(self) -> argparse.Namespace:
        """The options as an ``argparse.Namespace``, with this spec's device."""
        return argparse.Namespace(**{**self.options, "device": self.device})

    @property
    def batch_size(self) -> int:
        return int(self.options.get("batch_size") or 64)


def open_worker_rag(spec: WorkerSpec) -> Any:
    """The ``ClaraRAG`` of one worker: ``--threads`` applied, the store opened (created when new), the model bound."""
    from clara_plugins.cli.store_commands import _open_rag

    threads = spec.options.get("threads")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    return _open_rag(spec.namespace(), create=True)


def note_worker_pid(role: str) -> None:
    """When ``CLARA_WORKER_PID_DIR`` is set, write ``<dir>/<pid>`` (content: ``role``) so that a supervisor or a
    test can find this worker's process."""
    folder = os.environ.get(PID_DIR_ENV)
    if folder:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, str(os.getpid())), "w") as f:
            f.write(role)


def check_shared_db(db: str | None) -> None:
    """Workers must share a store they can all reach: a folder or a server URL, never an in-memory one.

    Raises:
        InputError: ``db`` is empty or names an in-memory store.
    """
    if not db or db.strip() in ("", ":memory:"):
        msg = (
            f"--db {db!r}: workers need a store they all reach (a folder or a Chroma server URL), not an in-memory one"
        )
        raise InputError(msg)


# ---------------------------------------------------------------------------------------------- the driver's filter
def pending_records(
    store: Any, records: Sequence[dict[str, Any]], model: str | None = None
) -> tuple[list[dict[str, Any]], int]:
    """The records not yet stored whole (``ClaraRAG.index``'s rule), and how many were left out.

    The driver loads no model, so it leaves documents out only when the workers will use the store's own model
    (``model`` None or the source the store records); with another ``--model`` every record goes to the workers,
    whose ``bind`` then refuses a model that did not build the store (``ModelMismatchError``) as ``clara index`` does.
    """
    from clara_plugins.rag import doc_is_complete

    if not store.exists() or model not in (None, store.meta.get("clara_model")):
        return list(records), 0
    status = store.doc_status([r["id"] for r in records])
    todo = [r for r in records if not doc_is_complete(status.get(r["id"]), r["text"])]
    return todo, len(records) - len(todo)


def check_records(records: Sequence[dict[str, Any]]) -> None:
    """Validate every record as ``ClaraRAG.index`` would (texts, ids, metadata, duplicate ids) before any worker
    starts, so that bad input fails the whole run before anything is written."""
    from clara_plugins.rag import _normalize_docs

    _normalize_docs(list(records), None, None)


# ---------------------------------------------------------------------------------------------- Ray Data
def import_ray(verbose: bool = False) -> Any:
    """``ray`` with Ray Data, or a ``MissingExtraError`` naming the extra. Unless ``verbose``, Ray Data logs nothing
    (``RAY_DATA_LOG_LEVEL``, read when ``ray.data`` is first imported; a value already set wins): a worker's error
    still ends the run, and reaches the user as the CLI shows errors (:func:`clara_error_in`)."""
    if not verbose:
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "CRITICAL")
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise MissingExtraError("ray[data]", "distributed") from err
    return ray


class IndexActor:
    """A Ray Data map actor: loads the model and opens the store once, then indexes each batch of documents.

    A batch is ``{"doc": array of JSON records}``; the result is one row of counts per batch.
    """

    def __init__(self, spec: WorkerSpec) -> None:
        note_worker_pid("ray-actor")
        self.spec = spec
        self.rag = open_worker_rag(spec)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = [json.loads(str(doc)) for doc in batch["doc"]]
        res = self.rag.index(records, batch_size=self.spec.batch_size, show_progress=False)
        return {name: np.array([getattr(res, name)]) for name in COUNT_FIELDS}


def seed_docs(store: Any, args: argparse.Namespace) -> int:
    """Documents one actor indexes alone before the pool starts: a "shared" store that has no projection yet fits
    it once, on the first batch it is given, so that batch must be large (``ClaraRAG.index`` makes it 2,048
    chunks) and not a pool batch of a few documents. 0 for every other store."""
    if store.exists():
        return SEED_DOCS if store.fit_rows_wanted() > 0 else 0
    shared = getattr(args, "layout", "auto") == "shared" or bool(getattr(args, "memories", None))
    return SEED_DOCS if shared else 0


def docs_per_batch(n_docs: int, workers: int) -> int:
    """Documents per Ray batch: about four batches per worker (so a restarted worker redoes little and the pool
    stays busy to the end), at most ``MAX_DOCS_PER_BATCH``."""
    return max(1, min(MAX_DOCS_PER_BATCH, math.ceil(n_docs / (4 * workers))))


@contextlib.contextmanager
def ray_session(address: str | None, workers: int, verbose: bool, progress: bool) -> Iterator[Any]:
    """Connect to the Ray cluster at ``address`` (or ``RAY_ADDRESS``), else start a local one with a CPU per
    worker plus one; Ray's logs only with ``verbose``, Ray Data's progress bar with ``progress``. Shut down on
    exit."""
    ray = import_ray(verbose)
    address = address or os.environ.get("RAY_ADDRESS") or None
    level = logging.INFO if verbose else logging.ERROR
    kwargs: dict[str, Any] = {"logging_level": level, "log_to_driver": verbose, "include_dashboard": False}
    if address is None:
        kwargs["num_cpus"] = workers + 1
    ray.init(address=address, **kwargs)
    ray.data.DataContext.get_current().enable_progress_bars = progress
    try:
        yield ray
    finally:
        ray.shutdown()


def index_with_ray(
    records: list[dict[str, Any]], spec: WorkerSpec, workers: int, gpus: float, seed: int = 0, **ray_opts: Any
) -> Any:
    """Index ``records`` (already filtered) with ``workers`` Ray Data actors; the summed counts.

    Args:
        records: Records ``{"text", "id", "metadata"}``.
        spec: What each actor opens.
        workers: Actors in the pool.
        gpus: GPUs per actor (``num_gpus``; 0 runs them on CPU).
        seed: The first ``seed`` records are indexed first, as one batch of one actor (``seed_docs``).
        **ray_opts: ``address``, ``verbose`` and ``progress`` for :func:`ray_session`.
    """
    counts = BulkCounts()
    if not records:
        return counts
    session = ray_session(
        ray_opts.get("address"), workers, bool(ray_opts.get("verbose")), bool(ray_opts.get("progress"))
    )
    with session as ray:
        check_local_gpus(ray, workers * gpus, local=not (ray_opts.get("address") or os.environ.get("RAY_ADDRESS")))
        first, rest = (records[:seed], records[seed:]) if seed else ([], records)
        try:
            if first:
                logger.info("fitting the store's projection: %d documents on one worker first", len(first))
                counts.add_all(_map(ray, first, spec, 1, gpus, len(first)))
            if rest:
                counts.add_all(_map(ray, rest, spec, workers, gpus, docs_per_batch(len(rest), workers)))
        except Exception as err:  # Ray wraps a worker's error in its own types: surface ours as the CLI shows them
            raise clara_error_in(err) or err from None
    return counts


def _map(ray: Any, records: list[dict[str, Any]], spec: WorkerSpec, workers: int, gpus: float, per_batch: int) -> Any:
    """Rows of counts of ``records`` indexed by a pool of ``workers`` actors, ``per_batch`` documents a batch."""
    items = [{"doc": json.dumps(r)} for r in records]
    ds = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / per_batch))
    out = ds.map_batches(
        IndexActor,
        fn_constructor_kwargs={"spec": spec},
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=1,
        num_gpus=gpus,
        batch_size=per_batch,
        batch_format="numpy",
    )
    return out.take_all()


def check_local_gpus(ray: Any, needed: float, local: bool) -> None:
    """On a local Ray started here, refuse a pool that needs more GPUs than the machine has (its actors would wait
    for them forever). A cluster joined with an address may add nodes, so it is not checked.

    Raises:
        InputError: ``--workers`` x ``--gpus-per-worker`` exceeds the GPUs Ray found.
    """
    have = float(ray.cluster_resources().get("GPU", 0))
    if local and needed > have:
        msg = f"--workers x --gpus-per-worker needs {needed:g} GPUs; this machine has {have:g} (Ray found them)"
        raise InputError(msg)


def clara_error_in(err: BaseException) -> ClaraError | None:
    """The ``ClaraError`` a Ray worker raised, from a Ray exception: found in its cause chain, else rebuilt from the
    ``clara_plugins.errors.Name: message`` line of its text (the error of an actor's constructor arrives as text)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ClaraError):
            return seen
        seen = seen.__cause__ or seen.__context__
    found = re.search(r"clara_plugins\.errors\.(\w+): (.*)", str(err))
    cls = getattr(errors, found.group(1), None) if found else None
    if found and isinstance(cls, type) and issubclass(cls, ClaraError) and cls is not errors.MissingExtraError:
        return cls(found.group(2).strip())
    return None


# ---------------------------------------------------------------------------------------------- launcher ranks
def rank_device(requested: str | None, local_rank: int) -> str | None:
    """The device of one rank: ``cuda:LOCAL_RANK`` when CUDA is there (also for a plain ``--device cuda``; with more
    ranks than GPUs on a node they share them in turn), else ``requested`` (None: the model's default, CPU here)."""
    import torch

    if requested in (None, "cuda") and torch.cuda.is_available():
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return requested


def _process_group() -> tuple[Any, bool]:
    """``torch.distributed`` with a process group (a gloo one initialised here when the launcher gave
    ``MASTER_ADDR``) and whether it was initialised here; ``(None, False)`` without one."""
    import torch.distributed as dist

    if not dist.is_available():
        return None, False
    if dist.is_initialized():
        return dist, False
    if not os.environ.get("MASTER_ADDR"):
        return None, False
    # ranks wait for each other only at the start (rank 0 opening the store) and at the end (the slowest shard)
    dist.init_process_group("gloo", timeout=datetime.timedelta(days=1))
    return dist, True


def index_as_rank(records: list[dict[str, Any]], spec: WorkerSpec, rank: int, world: int) -> tuple[Any, bool]:
    """Index this rank's shard of ``records``; returns the counts and whether they are the totals of every rank.

    With a process group (``MASTER_ADDR`` set: accelerate and torchrun set it) rank 0 creates or opens the store
    first while the others wait (two processes never race to create it), and the counts of every rank are gathered
    to all of them at the end. Without one every rank returns its own counts.
    """
    note_worker_pid(f"rank-{rank}")
    mine = [r for r in records if shard_of(r["id"], world) == rank]
    logger.info("rank %d of %d: %d of %d documents", rank, world, len(mine), len(records))
    dist, ours = _process_group()
    if dist is not None and rank != 0:
        dist.barrier()
    rag = open_worker_rag(spec)
    if dist is not None and rank == 0:
        dist.barrier()
    res = rag.index(mine, batch_size=spec.batch_size, show_progress=rank == 0 and not spec.options.get("no_progress"))
    counts = BulkCounts()
    counts.add(res)
    if dist is None:
        return counts, False
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, dataclasses.asdict(counts))
    total = BulkCounts()
    for part in gathered:
        total.add(part)
    if ours:
        dist.destroy_process_group()
    return total, True


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``fn(*args, **kwargs)`` and its wall time in seconds."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0
