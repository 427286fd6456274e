"""The ``clara`` command. Each module in ``_COMMAND_MODULES`` adds its subcommands through ``add_commands``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from collections.abc import Sequence

from clara_plugins import __version__
from clara_plugins.errors import ClaraError

# each module defines add_commands(subparsers); a subcommand's parser sets `func(args) -> int`
_COMMAND_MODULES = [
    "clara_plugins.cli.convert",
    "clara_plugins.cli.demo_command",
    "clara_plugins.cli.store_commands",
    "clara_plugins.cli.lifecycle_commands",
    "clara_plugins.cli.train_commands",
    "clara_plugins.cli.serve_command",
    "clara_plugins.cli.check_command",
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser of the ``clara`` command."""
    parser = argparse.ArgumentParser(
        prog="clara",
        description="CLaRa: compress documents once into memory vectors, retrieve and answer from them.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    parser.add_argument("--version", action="version", version=f"clara {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).add_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clara`` command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # transformers 5 warns about its own renamed attribute whenever peft wraps a model: noise for a CLI user
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    if getattr(args, "no_progress", False):  # also transformers' "Loading weights" bar
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ClaraError as err:
        print(f"clara {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
