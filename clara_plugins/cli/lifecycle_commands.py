"""``clara sync`` (make a store mirror files and folders) and ``clara delete`` (documents by id or source file)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from clara_plugins.cli.store_options import add_db_args, open_store
from clara_plugins.errors import InputError


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``clara sync`` and ``clara delete``."""
    p = subparsers.add_parser(
        "sync",
        help="make a store mirror files/folders: index new and changed documents, delete removed ones",
        description="Index new and changed documents under PATHs (unchanged chunks keep their memories) and delete "
        "the stored documents that came from files under PATHs and are gone. Same as `clara index --sync`.",
    )
    add_db_args(p)
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (recursively)")
    add_index_args(p)
    p.set_defaults(func=cmd_sync)

    p = subparsers.add_parser("delete", help="delete documents by id, or every document read from given files")
    add_db_args(p, model=False)
    p.add_argument("doc_ids", nargs="*", metavar="DOC_ID", help="document ids (see `clara search --json`)")
    p.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="PATH",
        help="delete the documents read from this file or from files under this folder (repeat)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_delete)


def add_index_args(p: argparse.ArgumentParser) -> None:
    """Options shared by ``index`` and ``sync``."""
    p.add_argument("--batch-size", type=int, default=64, help="chunks compressed per step (default 64)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--layout",
        choices=["auto", "full", "pca", "shared"],
        default="auto",
        help="layout of a new store (default auto: 'shared' with --memories, 'pca' for wide memories in a folder, "
        "else 'full'; see docs/store.md)",
    )
    p.add_argument(
        "--memories",
        default=None,
        metavar="URL",
        help="'shared' layout: fsspec URL where a new store keeps its memory shards (s3://bucket/prefix, gs://..., "
        "a shared folder); every client then finds it in the store",
    )
    p.add_argument(
        "--memory-dtype",
        choices=["float16", "float32", "int8"],
        default="float16",
        help="how a new 'pca' or 'shared' store keeps memories (int8: about half the bytes of float16; docs/store.md)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--text-field", default="text", metavar="NAME", help="text field of .jsonl lines (default: text)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's; 1 is often fastest on a busy laptop)",
    )


def prepare_index(args: argparse.Namespace) -> None:
    """Check the options shared by ``index`` and ``sync`` and apply ``--threads``."""
    if args.batch_size < 1:
        msg = f"--batch-size must be >= 1, got {args.batch_size}"
        raise InputError(msg)
    if args.threads is not None:
        if args.threads < 1:
            msg = f"--threads must be >= 1, got {args.threads}"
            raise InputError(msg)
        import torch

        torch.set_num_threads(args.threads)


def cmd_sync(args: argparse.Namespace) -> int:
    """``clara sync`` / ``clara index --sync``: read every path first, then index, then delete what is gone."""
    from clara_plugins.cli.store_commands import _open_rag
    from clara_plugins.corpus import read_corpus
    from clara_plugins.sync import sync

    prepare_index(args)
    records = read_corpus(args.paths, text_field=args.text_field)
    rag = _open_rag(args, create=True)
    res = sync(rag, records, args.paths, batch_size=args.batch_size, show_progress=not args.no_progress)
    idx = res.index
    counts = {
        "added": len(res.added),
        "changed": len(res.changed),
        "unchanged": len(res.unchanged),
        "removed": len(res.removed),
        "chunks_compressed": idx.chunks_added - idx.chunks_reused if idx else 0,
        "chunks_reused": idx.chunks_reused if idx else 0,
        "store_chunks": rag.store.count(),
    }
    if args.json:
        print(json.dumps({**counts, "removed_ids": res.removed, "changed_ids": res.changed, "added_ids": res.added}))
        return 0
    print(
        f"synced {len(records)} documents: {counts['added']} added, {counts['changed']} changed, "
        f"{counts['unchanged']} unchanged, {counts['removed']} removed "
        f"({counts['chunks_compressed']} chunks compressed, {counts['chunks_reused']} reused); "
        f"store now has {counts['store_chunks']} chunks"
    )
    return 0


def _targets(store: Any, args: argparse.Namespace) -> list[str]:
    from clara_plugins.sync import docs_from_sources

    if not args.doc_ids and not args.source:
        msg = "give document ids and/or --source PATH"
        raise InputError(msg)
    targets = list(dict.fromkeys(args.doc_ids))
    for src in args.source:
        found = docs_from_sources(store, [src])
        if not found:
            msg = f"--source {src!r}: no stored document was read from it (nothing deleted)"
            raise InputError(msg)
        targets += [d for d in found if d not in targets]
    return targets


def cmd_delete(args: argparse.Namespace) -> int:
    """``clara delete``: every chunk of the named documents; unknown ids are an error and delete nothing."""
    from clara_plugins.sync import delete_documents

    store = open_store(args, create=False)
    targets = _targets(store, args)
    chunks = delete_documents(store, targets)
    if args.json:
        print(json.dumps({"deleted": targets, "chunks_deleted": chunks, "store_chunks": store.count()}))
        return 0
    print(f"deleted {len(targets)} documents ({chunks} chunks); store now has {store.count()} chunks")
    for d in targets:
        print(f"  {d}")
    return 0
