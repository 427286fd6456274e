"""``python -m clara_plugins.training --config FILE`` (also under ``accelerate launch -m clara_plugins.training``)."""

from __future__ import annotations

import argparse
import logging
import sys

from clara_plugins.cli.train_commands import add_train_arguments, run_train
from clara_plugins.errors import ClaraError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clara_plugins.training",
        description="Train one CLaRa stage from a config file; under `accelerate launch` it runs data-parallel.",
    )
    add_train_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="info logging")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return run_train(args)
    except ClaraError as err:
        print(f"clara_plugins.training: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
