"""``clara index``, ``clara ask``, ``clara search`` and ``clara info``: the store from the shell."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from clara_plugins.cli.bulk_command import add_bulk_args, bulk_requested, cmd_bulk_index
from clara_plugins.cli.lifecycle_commands import add_index_args, cmd_sync, prepare_index
from clara_plugins.cli.store_options import add_db_args, open_store
from clara_plugins.errors import InputError, StoreError

TINY_NOTE = (
    "the bundled tiny model ranks passages but cannot answer: the text above is not an answer. For answers, index "
    "with an official checkpoint on a GPU (--model apple/CLaRa-7B-E2E, see the README) or a model from `clara train`"
)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register the store subcommands on the ``clara`` parser."""
    p = subparsers.add_parser("index", help="chunk, compress and store .txt/.md/.jsonl files or folders")
    add_db_args(p)
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (recursively)")
    add_index_args(p)
    add_bulk_args(p)
    p.add_argument(
        "--sync", action="store_true", help="also delete stored documents read from PATHs that are gone (= clara sync)"
    )
    p.set_defaults(func=cmd_index)

    for name, help_text, func in (
        ("ask", "answer a question from the stored memories", cmd_ask),
        ("search", "the chunks closest to a question", cmd_search),
    ):
        p = subparsers.add_parser(name, help=help_text)
        add_db_args(p)
        p.add_argument("question")
        p.add_argument("-k", type=int, default=None, help="chunks to use (default: the model's generation_top_k)")
        p.add_argument("--json", action="store_true", help="print JSON")
        if name == "ask":
            p.add_argument("--max-new-tokens", type=int, default=None)
        p.set_defaults(func=func)

    p = subparsers.add_parser("info", help="documents, chunks and model of a store")
    add_db_args(p, model=False)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)


def _open_rag(args: argparse.Namespace, create: bool) -> Any:
    from clara_plugins.rag import ClaraRAG

    store = open_store(args, create)
    model = args.model
    if model is None and store.exists():
        model = store.meta.get("clara_model") or None
        if model is None:
            msg = f"the store in {args.db!r} does not record its model; pass --model"
            raise StoreError(msg)
    return ClaraRAG.from_pretrained(model or "tiny", store=store, device=args.device)


def cmd_index(args: argparse.Namespace) -> int:
    """``clara index``: read the paths first (bad input fails before anything is written), then index."""
    from clara_plugins.corpus import read_corpus

    if bulk_requested(args):  # --engine ray, or a rank of accelerate launch / torchrun
        return cmd_bulk_index(args)
    if args.sync:
        return cmd_sync(args)

    prepare_index(args)
    records = read_corpus(args.paths, text_field=args.text_field)
    if not records:
        msg = f"no documents found in {args.paths}"
        raise InputError(msg)
    rag = _open_rag(args, create=True)
    res = rag.index(records, batch_size=args.batch_size, show_progress=not args.no_progress)
    if args.json:
        print(json.dumps({**dataclasses.asdict(res), "store_chunks": rag.store.count()}))
        return 0
    print(
        f"indexed {res.docs_added} documents ({res.chunks_added} chunks, {res.chunks_reused} reused), "
        f"skipped {res.docs_skipped} already stored; store now has {rag.store.count()} chunks"
    )
    return 0


def _hit_dict(hit: Any) -> dict[str, Any]:
    return dataclasses.asdict(hit)


def _print_hits(hits: list[Any]) -> None:
    for rank, h in enumerate(hits, 1):
        text = " ".join(h.text.split())
        print(f"[{rank}] {h.score:.4f} {h.doc_id} [{h.start}:{h.end}] {text[:160]}")


def cmd_ask(args: argparse.Namespace) -> int:
    """``clara ask``."""
    rag = _open_rag(args, create=False)
    answer = rag.ask(args.question, k=args.k, max_new_tokens=args.max_new_tokens)
    note = TINY_NOTE if rag.model.source == "tiny" else None
    if args.json:
        out = {"question": args.question, "answer": answer.text, "sources": [_hit_dict(h) for h in answer.sources]}
        print(json.dumps({**out, "note": note} if note else out))
    else:
        print(answer.text)
        print("sources:")
        _print_hits(answer.sources)
        if note:
            print(f"note: {note}", file=sys.stderr)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """``clara search``."""
    rag = _open_rag(args, create=False)
    hits = rag.search(args.question, k=args.k)
    if args.json:
        print(json.dumps({"question": args.question, "hits": [_hit_dict(h) for h in hits]}))
    else:
        _print_hits(hits)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """``clara info``."""
    info = open_store(args, create=False).info()
    if args.json:
        print(json.dumps(dataclasses.asdict(info)))
        return 0
    print(f"store       {info.path} (collection {info.collection!r}, {info.layout} layout)")
    print(f"model       {info.model_source} (fingerprint {info.fingerprint})")
    print(f"documents   {info.n_docs}")
    print(f"chunks      {info.n_chunks}")
    print(f"memory      {info.n_mem} x {info.hidden_size} = {info.memory_dim} numbers per chunk ({info.memory_dtype})")
    if info.memories_url:
        print(f"memories    {info.memories_url} ({(info.memories_bytes or 0) / 2**20:.1f} MiB of shards)")
    print(f"hnsw        {info.hnsw}")
    if info.disk_bytes is not None:
        print(f"disk        {info.disk_bytes / 2**20:.1f} MiB")
    return 0
