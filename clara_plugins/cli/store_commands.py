"""``clara demo``, ``clara index``, ``clara ask``, ``clara search`` and ``clara info``: the store from the shell."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from clara_plugins.errors import InputError, StoreError

DEMO_QUESTIONS = 3


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register the store subcommands on the ``clara`` parser."""
    p = subparsers.add_parser("demo", help="index the bundled demo corpus with the tiny model and answer questions")
    p.add_argument("--db", help="store folder (default: a temporary folder)")
    p.add_argument("--model", default="tiny", help="model to use (default: the bundled tiny model)")
    p.add_argument("--limit", type=int, default=None, help="index only the first N passages")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_demo)

    p = subparsers.add_parser("index", help="chunk, compress and store .txt/.md/.jsonl files or folders")
    _db_args(p)
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (recursively)")
    p.add_argument("--batch-size", type=int, default=64, help="chunks compressed per step")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--layout", choices=["auto", "full", "pca"], default="auto", help="layout of a new store")
    p.set_defaults(func=cmd_index)

    for name, help_text, func in (
        ("ask", "answer a question from the stored memories", cmd_ask),
        ("search", "the chunks closest to a question", cmd_search),
    ):
        p = subparsers.add_parser(name, help=help_text)
        _db_args(p)
        p.add_argument("question")
        p.add_argument("-k", type=int, default=None, help="chunks to use (default: the model's generation_top_k)")
        p.add_argument("--json", action="store_true", help="print JSON")
        if name == "ask":
            p.add_argument("--max-new-tokens", type=int, default=None)
        p.set_defaults(func=func)

    p = subparsers.add_parser("info", help="documents, chunks and model of a store")
    p.add_argument("--db", required=True, help="store folder")
    p.add_argument("--collection", default="clara")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)


def _db_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", required=True, help="store folder")
    p.add_argument("--model", default=None, help="model (default: the one recorded in the store; 'tiny' for new)")
    p.add_argument("--collection", default="clara")
    p.add_argument("--device", default=None)


def _existing_store(db: str, collection: str) -> Any:
    """Open an existing store without creating anything."""
    from clara_plugins.store import ClaraStore

    if not (Path(db) / "chroma.sqlite3").is_file():
        msg = f"no CLaRa store in {db!r}; build one first with `clara index --db {db} PATH...`"
        raise StoreError(msg)
    store = ClaraStore(path=db, collection=collection)
    if not store.exists():
        msg = f"no collection {collection!r} in {db!r}; build it first with `clara index --db {db} PATH...`"
        raise StoreError(msg)
    return store


def _open_rag(args: argparse.Namespace, create: bool) -> Any:
    from clara_plugins.rag import ClaraRAG
    from clara_plugins.store import ClaraStore

    if create:
        store = ClaraStore(path=args.db, collection=args.collection, layout=getattr(args, "layout", "auto"))
    else:
        store = _existing_store(args.db, args.collection)
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

    if args.batch_size < 1:
        msg = f"--batch-size must be >= 1, got {args.batch_size}"
        raise InputError(msg)
    records = read_corpus(args.paths)
    if not records:
        msg = f"no documents found in {args.paths}"
        raise InputError(msg)
    rag = _open_rag(args, create=True)
    res = rag.index(records, batch_size=args.batch_size, show_progress=not args.no_progress)
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
    if args.json:
        print(
            json.dumps(
                {"question": args.question, "answer": answer.text, "sources": [_hit_dict(h) for h in answer.sources]}
            )
        )
    else:
        print(answer.text)
        print("sources:")
        _print_hits(answer.sources)
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
    info = _existing_store(args.db, args.collection).info()
    if args.json:
        print(json.dumps(dataclasses.asdict(info)))
        return 0
    print(f"store       {info.path} (collection {info.collection!r}, {info.mode} layout)")
    print(f"model       {info.model_source} (fingerprint {info.fingerprint})")
    print(f"documents   {info.n_docs}")
    print(f"chunks      {info.n_chunks}")
    print(f"memory      {info.n_mem} x {info.hidden_size} = {info.memory_dim} numbers per chunk")
    print(f"hnsw        {info.hnsw}")
    if info.disk_bytes is not None:
        print(f"disk        {info.disk_bytes / 2**20:.1f} MiB")
    return 0


def demo_records() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The bundled demo corpus ``{"id", "text", "title"?}`` and its questions ``{"question", "answer", "doc_id"}``.

    Questions come from ``demo_questions.jsonl`` (held-out questions first) when it is bundled, else from the
    ``question``/``answer`` fields of the corpus rows.
    """
    assets = importlib.resources.files("clara_plugins.assets")
    rows = [
        json.loads(line) for line in (assets / "demo_corpus.jsonl").read_text(encoding="utf-8").splitlines() if line
    ]
    qfile = assets / "demo_questions.jsonl"
    if qfile.is_file():
        qs = [json.loads(line) for line in qfile.read_text(encoding="utf-8").splitlines() if line]
        qs.sort(key=lambda q: q.get("split") != "heldout_question")
        questions = [{"question": q["question"], "answer": q["answers"][0], "doc_id": q["doc_id"]} for q in qs]
    else:
        questions = [
            {"question": r["question"], "answer": r["answer"], "doc_id": r["id"]} for r in rows if "question" in r
        ]
    return rows, questions


def cmd_demo(args: argparse.Namespace) -> int:
    """``clara demo``: index the demo corpus, answer a few of its questions, print answers with sources."""
    from clara_plugins.rag import ClaraRAG

    if args.limit is not None and args.limit < 1:
        msg = f"--limit must be >= 1, got {args.limit}"
        raise InputError(msg)
    rows, questions = demo_records()
    rows = rows[: args.limit] if args.limit else rows
    kept = {r["id"] for r in rows}
    asked = [q for q in questions if q["doc_id"] in kept][:DEMO_QUESTIONS]
    with tempfile.TemporaryDirectory(prefix="clara-demo-") as tmp:
        rag = ClaraRAG.from_pretrained(args.model, store=args.db or tmp)
        meta = [{"title": r["title"]} if r.get("title") else {"source": "demo"} for r in rows]
        res = rag.index(
            [{"id": r["id"], "text": r["text"], "metadata": m} for r, m in zip(rows, meta)], show_progress=not args.json
        )
        results = []
        for q in asked:
            ans = rag.ask(q["question"])
            results.append({**q, "answer_generated": ans.text, "sources": [_hit_dict(h) for h in ans.sources]})
        if args.json:
            print(json.dumps({"db": args.db, "indexed_chunks": rag.store.count(), "results": results}))
            return 0
        where = args.db or "a temporary store"
        print(f"indexed {len(rows)} passages ({res.chunks_added} new chunks) into {where} with model {args.model!r}")
        for r in results:
            print(f"\nQ: {r['question']}\nA: {r['answer_generated']}   (reference: {r['answer']})")
            for rank, h in enumerate(r["sources"], 1):
                gold = " <- the passage the question was written from" if h["doc_id"] == r["doc_id"] else ""
                print(f"  [{rank}] {h['score']:.3f} {h['doc_id']}: {' '.join(h['text'].split())[:90]}{gold}")
        sys.stdout.flush()
    return 0
