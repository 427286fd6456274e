"""``clara check``: verify a store (checksums, scan, Chroma's HNSW index) and repair what is derived."""

from __future__ import annotations

import argparse

from clara_plugins.cli.store_options import add_db_args, open_store


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "check",
        help="verify a store: every record's text, memory and scan row, and that filtered searches find it",
        description="Check every record of a store against its checksums and that a where-filtered search (Chroma's "
        "HNSW index) finds it. With --repair, rebuild the scan files and put records HNSW lost back into it; "
        "damaged texts and memories are reported (re-index their documents). Exit code 0 when no problem is left.",
    )
    add_db_args(p, model=False)
    p.add_argument("--repair", action="store_true", help="rebuild what is derived")
    p.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    report = open_store(args, create=False).verify(repair=args.repair)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1
