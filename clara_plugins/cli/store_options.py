"""``--db`` and its connection options, shared by the store subcommands: a local folder, or a Chroma server URL
(``http://host:port``) reached with ``chromadb.HttpClient`` (``--tenant``, ``--database``, ``--header``, a bearer
token from an environment variable)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from clara_plugins.errors import InputError, StoreError

TOKEN_ENV = "CLARA_CHROMA_TOKEN"


def add_db_args(p: argparse.ArgumentParser, model: bool = True) -> None:
    """``--db``, ``--collection``, the server options and (with ``model``) ``--model`` and ``--device``."""
    p.add_argument("--db", required=True, help="store folder, or a Chroma server URL such as http://127.0.0.1:8000")
    p.add_argument("--collection", default="clara", help="Chroma collection of the store (default: clara)")
    server = p.add_argument_group("Chroma server (when --db is a URL)")
    server.add_argument("--tenant", default=None, help="Chroma tenant (default: the server's default tenant)")
    server.add_argument("--database", default=None, help="Chroma database (default: the server's default database)")
    server.add_argument(
        "--header", action="append", default=[], metavar="KEY=VALUE", help="HTTP header sent to the server (repeat)"
    )
    server.add_argument(
        "--token-env",
        default=TOKEN_ENV,
        metavar="VAR",
        help=f"environment variable holding a bearer token for the server (default: {TOKEN_ENV}; read when set)",
    )
    storage = p.add_argument_group("object storage (stores in the 'shared' layout)")
    storage.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec option for the memories URL, e.g. endpoint_url=http://127.0.0.1:9000 (repeat; JSON values "
        "are parsed). Credentials may also come from the usual environment variables (AWS_ACCESS_KEY_ID...)",
    )
    if model:
        p.add_argument("--model", default=None, help="model (default: the one recorded in the store; 'tiny' for new)")
        p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda when available)")


def is_url(db: str) -> bool:
    """Whether ``--db`` names a server (``scheme://...``) rather than a folder."""
    return "://" in db


def _headers(args: argparse.Namespace) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in args.header:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            msg = f"--header must be KEY=VALUE, got {item!r}"
            raise InputError(msg)
        headers[key.strip()] = value
    token = os.environ.get(args.token_env or "")
    if token and not any(k.lower() == "authorization" for k in headers):
        headers["Authorization"] = f"Bearer {token}"
    return headers


def http_client(args: argparse.Namespace) -> Any:
    """A ``chromadb.HttpClient`` for ``--db http(s)://host[:port]``, checked with a heartbeat.

    Raises:
        InputError: another scheme, a path after the port, or a malformed URL.
        StoreError: the server cannot be reached, or refuses the tenant or database.
    """
    import chromadb

    url = urlsplit(args.db)
    if url.scheme not in ("http", "https") or not url.hostname:
        msg = f"--db {args.db!r}: a server URL must be http://HOST[:PORT] or https://HOST[:PORT]"
        raise InputError(msg)
    if url.path not in ("", "/") or url.query or url.username:
        msg = f"--db {args.db!r}: give only http(s)://HOST[:PORT]; paths, queries and user info are not supported"
        raise InputError(msg)
    port = url.port or (443 if url.scheme == "https" else 8000)
    kwargs: dict[str, Any] = {"host": url.hostname, "port": port, "ssl": url.scheme == "https"}
    kwargs["headers"] = _headers(args)
    for name in ("tenant", "database"):
        if getattr(args, name):
            kwargs[name] = getattr(args, name)
    try:
        client = chromadb.HttpClient(**kwargs)
        client.heartbeat()
    except Exception as err:  # chromadb raises ValueError, httpx errors, ChromaError...: all mean "cannot use it"
        msg = f"cannot use the Chroma server at {args.db} ({type(err).__name__}: {err})"
        raise StoreError(msg) from err
    return client


def storage_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--storage-option KEY=VALUE`` as a dict (a value that parses as JSON is used parsed: ``anon=true``)."""
    out: dict[str, Any] = {}
    for item in getattr(args, "storage_option", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            msg = f"--storage-option must be KEY=VALUE, got {item!r}"
            raise InputError(msg)
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def _refuse_server_options(args: argparse.Namespace) -> None:
    given = [f"--{n}" for n in ("tenant", "database", "header") if getattr(args, n, None)]
    if given:
        msg = f"{', '.join(given)} only apply to a Chroma server URL (--db http://HOST:PORT), not to folder {args.db!r}"
        raise InputError(msg)


def open_store(args: argparse.Namespace, create: bool) -> Any:
    """The store named by ``--db``/``--collection``; without ``create`` it must already exist (nothing is created).

    Raises:
        StoreError: no store there (with the command that builds one), or the server cannot be used.
    """
    from clara_plugins.store import ClaraStore

    kwargs = {
        "layout": getattr(args, "layout", "auto"),
        "memory_dtype": getattr(args, "memory_dtype", "float16"),
        "memories": getattr(args, "memories", None),
        "storage_options": storage_options(args),
    }
    if is_url(args.db):
        store = ClaraStore(client=http_client(args), collection=args.collection, **kwargs)
    else:
        _refuse_server_options(args)
        if not create and not (Path(args.db) / "chroma.sqlite3").is_file():
            msg = f"no CLaRa store in {args.db!r}; build one first with `clara index --db {args.db} PATH...`"
            raise StoreError(msg)
        store = ClaraStore(path=args.db, collection=args.collection, **kwargs)
    if not create and not store.exists():
        msg = f"no collection {args.collection!r} in {args.db!r}; build it with `clara index --db {args.db} PATH...`"
        raise StoreError(msg)
    return store
