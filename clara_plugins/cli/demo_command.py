"""``clara demo``: what CLaRa does, in seconds, on the bundled tiny model and corpus (see ``clara_plugins.demo``)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from typing import Any

from clara_plugins.errors import InputError

DEFAULT_THREADS = 1  # measured: on 2 shared cores one thread compresses fastest (bench/bench_demo_threads.py)
DEFAULT_PASSAGES = 120  # about 140 chunks: under 10 s of compression on one busy laptop core
DEFAULT_QUESTIONS = 3
_STARTED = time.perf_counter()  # this module is imported when the parser is built, before torch


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``clara demo``."""
    p = subparsers.add_parser(
        "demo",
        help="compress a sample of the bundled corpus once, then retrieve for held-out questions",
        description="Index a sample of the bundled demo corpus with the bundled tiny model (compress once), then "
        "for a few held-out questions show the retrieved chunks (gold passage marked), BM25's rank of the gold "
        "passage, and the generator's prompt (memory slots vs text tokens) with its measured prefill time.",
    )
    p.add_argument("--db", help="store folder (default: a temporary folder, deleted afterwards)")
    p.add_argument("--model", default="tiny", help="model to use (default: the bundled tiny model)")
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--passages", type=int, default=DEFAULT_PASSAGES, help=f"passages to index (default {DEFAULT_PASSAGES})"
    )
    size.add_argument("--all", action="store_true", help="index the whole corpus (1,000 passages, ~1,170 chunks)")
    size.add_argument("--limit", type=int, dest="passages", help=argparse.SUPPRESS)  # old name of --passages
    p.add_argument("--questions", type=int, default=DEFAULT_QUESTIONS, help=f"questions (default {DEFAULT_QUESTIONS})")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch CPU threads (default 1; 0: torch's)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print one JSON object (no progress bar)")
    p.set_defaults(func=cmd_demo)


def _check(args: argparse.Namespace) -> None:
    for name in ("passages", "questions"):
        if getattr(args, name) < 1:
            msg = f"--{name} must be >= 1, got {getattr(args, name)}"
            raise InputError(msg)
    if args.db and "://" in args.db:
        msg = f"clara demo --db takes a folder, got {args.db!r}; use `clara index --db URL` for a Chroma server"
        raise InputError(msg)
    if args.threads < 0:
        msg = f"--threads must be >= 0, got {args.threads}"
        raise InputError(msg)


def cmd_demo(args: argparse.Namespace) -> int:
    """``clara demo``: index a sample of the demo corpus, then show retrieval, prompt sizes and prefill times."""
    import torch

    _check(args)
    if args.json or args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)  # a process-wide setting: give it back to a caller of main()


def _run(args: argparse.Namespace) -> int:
    from clara_plugins.demo import demo_records, pick_sample, run_demo
    from clara_plugins.rag import ClaraRAG

    rows, questions = demo_records()
    sample, asked = pick_sample(rows, questions, None if args.all else args.passages, args.questions)
    with tempfile.TemporaryDirectory(prefix="clara-demo-") as tmp:
        rag = ClaraRAG.from_pretrained(args.model, store=args.db or tmp, device=args.device)
        if not args.json:
            print(
                f"Compressing {len(sample)} of {len(rows)} demo passages once into CLaRa memories (--all: every one)",
                flush=True,
            )
        show = not (args.json or args.no_progress)
        report = run_demo(rag, sample, asked, args.model, len(rows), show_progress=show)
    elapsed = time.perf_counter() - _STARTED
    if args.json:
        print(json.dumps({**report.to_dict(), "elapsed_s": elapsed}))
    else:
        print_report(report, args.db)
        print(f"Demo took {elapsed:.0f} s, model loading included; `clara demo --all` indexes all {len(rows)} passages")
    sys.stdout.flush()
    return 0


def _clip(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _rank(rank: int | None, n: int) -> str:
    return f"{rank} of {n}" if rank is not None else f"not in the {n} chunks"


def print_report(report: Any, db: str | None) -> None:
    """The human-readable demo output."""
    r = report
    speed = f", {r.chunks_compressed / r.compress_s:.0f} chunks/s" if r.compress_s > 0 else ""
    print(
        f"{r.chunks_compressed} chunks compressed in {r.compress_s:.1f} s ({r.threads} thread(s){speed}); "
        f"the store ({db or 'temporary'}) holds {r.chunks} chunks of {r.passages_indexed} passages. "
        "Questions below only read stored memories: nothing is compressed again."
    )
    if r.note:
        print(f"\nNOTE: {r.note}")
    for i, q in enumerate(r.questions, 1):
        _print_question(i, q, r.chunks, r.note is not None)
    _print_summary(r)


def _print_question(i: int, q: Any, n_chunks: int, tiny: bool) -> None:
    p = q.prompt
    print(f"\nQ{i} (held out from training): {q.question}")
    print(f"   reference answer: {q.reference_answer}   (gold passage: {q.gold_doc_id})")
    print(f"   CLaRa's top {len(q.hits)} of {n_chunks} chunks:")
    for rank, h in enumerate(q.hits, 1):
        mark = "  <== GOLD passage" if h["gold"] else ""
        print(f"   [{rank}] {h['score']:.3f} {h['doc_id']}: {_clip(h['text'], 70)}{mark}")
    print(f"   gold passage rank: CLaRa {_rank(q.gold_rank_clara, n_chunks)}, BM25 {_rank(q.gold_rank_bm25, n_chunks)}")
    print(
        f"   generator prompt: {p.chunks} x {p.slots_per_chunk} memory slots ({p.clara_tokens} positions in all) "
        f"vs {p.text_tokens} tokens for the same chunks as text ({p.text_tokens / p.clara_tokens:.1f}x)"
    )
    print(
        f"   prefill on this machine: CLaRa {1000 * p.clara_prefill_s:.1f} ms vs text {1000 * p.text_prefill_s:.1f} ms "
        f"({p.text_prefill_s / p.clara_prefill_s:.1f}x; same base decoder, best of 3)"
    )
    label = "generated text (tiny model, NOT an answer)" if tiny else "generated text"
    print(f"   {label}: {q.generated_text!r}")


def _print_summary(r: Any) -> None:
    n = len(r.questions)
    k = len(r.questions[0].hits) if r.questions else 0
    clara = sum(q.gold_rank_clara is not None and q.gold_rank_clara <= k for q in r.questions)
    bm25 = sum(q.gold_rank_bm25 is not None and q.gold_rank_bm25 <= k for q in r.questions)
    print(f"\nGold passage in the top {k}: CLaRa {clara}/{n}, BM25 {bm25}/{n} (on {r.chunks} chunks).")
    if r.note:
        print("Reminder: the tiny model's generated text is not an answer; see the NOTE above for real answers.")
