"""``clara index`` with many workers: ``--engine ray --workers N``, or under ``accelerate launch`` / ``torchrun``
(one rank per process). The engine is in :mod:`clara_plugins.bulk_index`; this module holds the options and output."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from clara_plugins.errors import InputError


def add_bulk_args(p: argparse.ArgumentParser) -> None:
    """``--engine``, ``--workers``, ``--gpus-per-worker``, ``--ray-address`` of ``clara index``."""
    g = p.add_argument_group("many workers (see README: Bulk indexing)")
    g.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process (one shard per rank under accelerate launch/torchrun); ray: Ray Data actors",
    )
    g.add_argument(
        "--workers", type=int, default=1, metavar="N", help="Ray actors, each loading the model once (default 1)"
    )
    g.add_argument(
        "--gpus-per-worker", type=float, default=0.0, metavar="G", help="GPUs per Ray actor (default 0: CPU)"
    )
    g.add_argument(
        "--ray-address", default=None, metavar="ADDR", help="Ray cluster to join (default: RAY_ADDRESS, else start one)"
    )


def bulk_requested(args: argparse.Namespace) -> bool:
    """Whether ``clara index`` runs as several workers (Ray, a launcher's rank, or options asking for it)."""
    from clara_plugins.bulk_index import launcher_rank

    wants = getattr(args, "engine", "local") != "local" or getattr(args, "workers", 1) != 1
    return wants or getattr(args, "gpus_per_worker", 0) != 0 or launcher_rank() is not None


def _check(args: argparse.Namespace, ranks: Any) -> None:
    from clara_plugins.bulk_index import check_shared_db

    if args.workers < 1:
        msg = f"--workers must be >= 1, got {args.workers}"
        raise InputError(msg)
    if args.gpus_per_worker < 0:
        msg = f"--gpus-per-worker must be >= 0, got {args.gpus_per_worker}"
        raise InputError(msg)
    if args.engine != "ray" and (args.workers != 1 or args.gpus_per_worker or args.ray_address):
        msg = "--workers, --gpus-per-worker and --ray-address need --engine ray (or start ranks with accelerate launch)"
        raise InputError(msg)
    if args.engine == "ray" and ranks is not None:
        msg = f"--engine ray under a launcher (WORLD_SIZE={ranks[1]}): start clara index once, Ray starts the workers"
        raise InputError(msg)
    if args.sync:
        msg = "--sync runs in one process (it deletes what is gone after indexing): drop --engine/--workers/launcher"
        raise InputError(msg)
    check_shared_db(args.db)


def _read(args: argparse.Namespace) -> list[dict[str, Any]]:
    from clara_plugins.bulk_index import check_records
    from clara_plugins.corpus import read_corpus

    records = read_corpus(args.paths, text_field=args.text_field)
    if not records:
        msg = f"no documents found in {args.paths}"
        raise InputError(msg)
    check_records(records)
    return records


def _run_ray(args: argparse.Namespace, records: list[dict[str, Any]]) -> Any:
    from clara_plugins import bulk_index as bulk
    from clara_plugins.cli.store_options import is_url, open_store

    store = open_store(args, create=True)
    todo, skipped = bulk.pending_records(store, records, args.model)
    if args.ray_address and not is_url(args.db):
        bulk.logger.warning(
            "--db %s is a folder: every Ray node must see it at this path (a shared filesystem)", args.db
        )
    device = args.device or ("cuda" if args.gpus_per_worker > 0 else "cpu")
    spec = bulk.WorkerSpec.from_args(args, device=device)
    opts = {"address": args.ray_address, "verbose": args.verbose > 0, "progress": not args.no_progress}
    counts = bulk.index_with_ray(todo, spec, args.workers, args.gpus_per_worker, bulk.seed_docs(store, args), **opts)
    counts.docs_skipped += skipped
    return counts


def cmd_bulk_index(args: argparse.Namespace) -> int:
    """``clara index`` as several workers: check, read every path, index, print the totals (rank 0 only)."""
    from clara_plugins import bulk_index as bulk
    from clara_plugins.cli.lifecycle_commands import prepare_index
    from clara_plugins.cli.store_options import open_store

    ranks = bulk.launcher_rank()
    _check(args, ranks)
    if args.engine == "ray":
        bulk.import_ray(args.verbose > 0)  # fail before reading anything when ray is missing
    prepare_index(args)
    records = _read(args)
    if args.engine == "ray":
        (counts, wall), total, workers = bulk.timed(_run_ray, args, records), True, args.workers
    else:
        rank, world, local = ranks if ranks else (0, 1, 0)
        spec = bulk.WorkerSpec.from_args(args, device=bulk.rank_device(args.device, local))
        ((counts, total), wall), workers = bulk.timed(bulk.index_as_rank, records, spec, rank, world), world
        if total and rank != 0:
            return 0
    _print(args, counts, open_store(args, create=False).count(), workers, wall, total, ranks)
    return 0


def _print(
    args: argparse.Namespace, counts: Any, store_chunks: int, workers: int, wall: float, total: bool, ranks: Any
) -> None:
    who = "all workers" if total else f"rank {ranks[0]} of {ranks[1]}"
    engine = "launcher" if ranks and args.engine == "local" else args.engine
    out = {**dataclasses.asdict(counts), "store_chunks": store_chunks, "engine": engine, "workers": workers}
    out.update({"wall_s": round(wall, 3), "counts_of": who})
    if args.json:
        print(json.dumps(out))
        return
    print(
        f"indexed {counts.docs_added} documents ({counts.chunks_added} chunks, {counts.chunks_reused} reused), "
        f"skipped {counts.docs_skipped} already stored, with {workers} workers ({engine}, counts of {who}) "
        f"in {wall:.1f}s; store now has {store_chunks} chunks"
    )
