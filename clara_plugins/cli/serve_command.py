"""``clara serve``: load the model once and serve a store over an OpenAI-compatible HTTP API (docs/server.md)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Any

from clara_plugins.cli.store_options import add_db_args
from clara_plugins.errors import MissingExtraError

logger = logging.getLogger(__name__)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``clara serve``."""
    p = subparsers.add_parser("serve", help="serve a store over an OpenAI-compatible HTTP API")
    add_db_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", default=None, help="model id clients send (default: the --model value)")
    p.add_argument("--api-key-file", default=None, help="file of read keys (also read from $CLARA_API_KEYS)")
    p.add_argument("--write-key-file", default=None, help="file of write keys (also read from $CLARA_WRITE_KEYS)")
    p.add_argument("--allow-no-auth", action="store_true", help="allow a non-loopback --host without any key")
    p.add_argument("--max-batch", type=int, default=8, help="most chat requests per generator call (1: no batching)")
    p.add_argument("--batch-window-ms", type=float, default=5.0, help="wait for more requests when idle")
    p.add_argument("--max-tokens-limit", type=int, default=512, help="largest max_tokens a request may ask")
    p.add_argument("--max-request-bytes", type=int, default=1_000_000, help="largest request body (else 413)")
    p.add_argument("--max-concurrent", type=int, default=64, help="requests in flight before 429")
    p.add_argument("--cors-origin", action="append", default=[], help="allow CORS from this origin (repeatable)")
    p.add_argument("--graceful-timeout", type=float, default=30.0, help="seconds to finish requests on SIGTERM")
    p.set_defaults(func=cmd_serve)


def open_rag(args: argparse.Namespace) -> tuple[Any, str]:
    """The ``ClaraRAG`` to serve (the store is created if new) and the model's name."""
    from clara_plugins.cli.store_commands import _open_rag

    rag = _open_rag(args, create=True)
    return rag, str(args.model or rag.store.meta.get("clara_model") or "tiny")


def settings_from_args(args: argparse.Namespace) -> Any:
    """``ServerSettings`` from the command line and the key environment variables / files, checked before the model
    is loaded (an exposed address without keys fails at once)."""
    from clara_plugins.server.settings import READ_KEYS_ENV, WRITE_KEYS_ENV, ServerSettings, check_exposure, load_keys

    settings = ServerSettings(
        model_name=args.model_name or args.model or "clara",
        read_keys=load_keys(READ_KEYS_ENV, args.api_key_file),
        write_keys=load_keys(WRITE_KEYS_ENV, args.write_key_file),
        max_batch=args.max_batch,
        batch_window_ms=args.batch_window_ms,
        max_tokens_limit=args.max_tokens_limit,
        max_request_bytes=args.max_request_bytes,
        max_concurrent=args.max_concurrent,
        cors_origins=tuple(args.cors_origin),
    )
    check_exposure(args.host, settings, args.allow_no_auth)
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    """``clara serve``: runs until SIGTERM / Ctrl-C, then finishes in-flight requests and stops."""
    try:
        import uvicorn

        from clara_plugins.server.app import create_app
    except ImportError as err:
        raise MissingExtraError(err.name or "fastapi", "server") from err
    if logging.getLogger().getEffectiveLevel() > logging.INFO:  # startup and shutdown of a server are worth a line
        logging.getLogger("clara_plugins.server").setLevel(logging.INFO)
    settings = settings_from_args(args)
    rag, model_name = open_rag(args)
    if not args.model_name:
        settings = dataclasses.replace(settings, model_name=model_name)
    app = create_app(rag, settings)
    if not settings.auth_enabled:
        logger.warning("no API key configured: anyone who can reach %s:%d can read and write", args.host, args.port)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, timeout_graceful_shutdown=args.graceful_timeout, log_level="info"
    )
    print(f"clara serve: model {settings.model_name!r} on http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.Server(config).run()
    return 0
