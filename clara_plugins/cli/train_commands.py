"""``clara train`` and ``clara eval``: the training module's stages and its evaluation table (extra ``train``)."""

from __future__ import annotations

import argparse
import json
import sys

from clara_plugins.errors import MissingExtraError


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by ``clara train`` and ``python -m clara_plugins.training``."""
    p.add_argument("--config", required=True, help="training config file (.json, .yaml or .toml; see docs/training.md)")
    p.add_argument("--stage", choices=["1", "2", "3", "retrieval"], help="overrides the config's stage")
    p.add_argument("--model", help="model to start from (overrides the config): 'tiny', a Hub id or a folder")
    p.add_argument("--train-file", help="overrides the config's train_file")
    p.add_argument("--output-dir", help="overrides the config's output_dir")
    p.add_argument("--max-steps", type=int, help="overrides the config's max_steps")
    p.add_argument("--resume-from", help="a checkpoint folder, or 'latest'")
    p.add_argument("--seed", type=int, help="overrides the config's seed")


def run_train(args: argparse.Namespace) -> int:
    """Load the config with the command-line overrides and train; prints where the model went."""
    try:
        from clara_plugins.training.config import load_config
        from clara_plugins.training.trainer import train
    except ImportError as err:  # accelerate / rank-bm25 missing
        raise MissingExtraError(getattr(err, "name", None) or "accelerate", "train") from err
    overrides = {
        "stage": args.stage,
        "model": args.model,
        "train_file": args.train_file,
        "output_dir": args.output_dir,
        "max_steps": args.max_steps,
        "resume_from": args.resume_from,
        "seed": args.seed,
    }
    config = load_config(args.config, **overrides)
    train(config)
    print(
        f"stage {config.stage} done: model in {config.output_dir}/final, metrics in {config.output_dir}/metrics.jsonl"
    )
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train CLaRa stage 1, 2, 3 or the supervised retrieval baseline from a config file",
        description="Train one stage (see docs/training.md). For several processes or GPUs run "
        "`accelerate launch -m clara_plugins.training --config FILE` instead.",
    )
    add_train_arguments(p)
    p.set_defaults(func=run_train)

    e = subparsers.add_parser(
        "eval",
        help="EM / F1 / cover-EM and Recall@1/3/5 / nDCG@10 of a model, with BM25 in the same table",
        description="Evaluate on official JSONL (stage 1, 2 or 3 rows; stage-3 rows need pos_index for recall) or a "
        "BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv).",
    )
    e.add_argument("--model", default="tiny", help="'tiny', a Hub id or a folder")
    e.add_argument("--subfolder", help="e.g. compression-16")
    e.add_argument("--data", required=True, help="JSONL file or BEIR folder")
    e.add_argument("--split", default="test", help="BEIR qrels split")
    e.add_argument("--k", type=int, default=5, help="documents given to the generator")
    e.add_argument("--max-examples", type=int, help="evaluate at most this many questions")
    e.add_argument("--no-generate", action="store_true", help="skip answer generation (retrieval metrics only)")
    e.add_argument("--max-new-tokens", type=int, default=32)
    e.add_argument("--device", help="cpu, cuda, mps (default: best available)")
    e.add_argument(
        "--json",
        nargs="?",
        const="-",
        dest="json_out",
        metavar="PATH",
        help="print the rows as JSON instead of the table (old form --json PATH: also write them to PATH)",
    )
    e.add_argument("--output", dest="json_out", metavar="PATH", help="also write the table rows to this JSON file")
    e.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    """Print the evaluation table (markdown) of ``args.model`` on ``args.data``."""
    try:
        from clara_plugins.training.evaluate import evaluate, format_table
    except ImportError as err:
        raise MissingExtraError(getattr(err, "name", None) or "rank-bm25", "train") from err
    from clara_plugins.model import ClaraModel

    model = ClaraModel.from_pretrained(args.model, subfolder=args.subfolder, device=args.device)
    table = evaluate(
        model,
        args.data,
        split=args.split,
        k=args.k,
        max_examples=args.max_examples,
        generate=not args.no_generate,
        max_new_tokens=args.max_new_tokens,
        progress=sys.stderr.isatty(),
    )
    if args.json_out == "-":
        print(json.dumps(table))
        return 0
    print(format_table(table))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as handle:
            json.dump(table, handle, indent=2)
    return 0
