"""``clara convert``: official ``.pth`` checkpoint -> our safetensors format."""

from __future__ import annotations

import argparse


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert an official CLaRa checkpoint (.pth) into the safetensors format",
        description="Read an official CLaRa checkpoint (local folder or Hub id, with --subfolder) with "
        "weights_only loading, and write it once in the clara-plugins safetensors format.",
    )
    p.add_argument("source", help="local folder or Hub id, e.g. apple/CLaRa-7B-Instruct")
    p.add_argument("target", help="output folder")
    p.add_argument("--subfolder", help="e.g. compression-16")
    p.add_argument("--base-model", help="override the base model id recorded in config.json")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="dtype of the saved weights")
    p.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    from clara_plugins.model import ClaraModel

    out = ClaraModel.convert_official(
        args.source, args.target, subfolder=args.subfolder, base_model=args.base_model, dtype=args.dtype
    )
    print(f"wrote {out}")
    return 0
