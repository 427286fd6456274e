"""Talking to Chroma: opening a client on a folder, telling a local client from a server, paging and batching reads
(one place for SQLite's variable limit), and turning chromadb's errors into ``StoreError``s."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from clara_plugins.errors import InputError, StoreError

GET_BATCH = 5000  # ids per Chroma get: SQLite caps the variables of one statement
IN_BATCH = 500  # values per ``$in`` filter


def open_client(path: str | Path | None) -> Any:
    """A PersistentClient on ``path`` (EphemeralClient when None); a damaged folder becomes a StoreError."""
    import chromadb
    from chromadb.errors import ChromaError

    if path is None:
        return chromadb.EphemeralClient()
    if Path(path).exists() and not Path(path).is_dir():
        msg = f"store path {str(path)!r} is a file, not a folder"
        raise StoreError(msg)
    try:
        return chromadb.PersistentClient(path=str(path))
    except (ChromaError, OSError, ValueError) as err:
        msg = (
            f"cannot open the Chroma store in {str(path)!r} ({err}). If a program outside clara-plugins is writing "
            "this folder, retry when it has finished (several processes writing one store should use a Chroma "
            "server: `chroma run --path DIR` and ClaraStore(client=chromadb.HttpClient(...))); otherwise the "
            "folder's chroma.sqlite3 is damaged or was written by an incompatible chromadb version"
        )
        raise StoreError(msg) from err


def client_folder(client: Any) -> Path | None:
    """The folder of a local persistent client, else None (server or in-memory client)."""
    try:
        settings = client.get_settings()
    except AttributeError:
        return None
    if not getattr(settings, "is_persistent", False):
        return None
    impl = str(getattr(settings, "chroma_api_impl", ""))
    if "fastapi" in impl.lower() or "async" in impl.lower():
        return None
    return Path(settings.persist_directory)


def chroma_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Turn chromadb's own errors inside a store method into a StoreError naming the folder or collection."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        from chromadb.errors import ChromaError, InvalidArgumentError

        try:
            return method(self, *args, **kwargs)
        except InvalidArgumentError as err:  # a bad argument (a collection name Chroma refuses...), not damage
            msg = f"Chroma refused {method.__name__} on the store {self.name!r}: {err}"
            raise InputError(msg) from err
        except ChromaError as err:
            where = self.local_folder or f"collection {self.name!r}"
            msg = (
                f"Chroma failed in {method.__name__} on the store in {where}: {type(err).__name__}: {err}. "
                "Its database (chroma.sqlite3) or index files may be damaged: run `clara check --db DIR`, and restore "
                "a backup or re-index if it cannot be repaired"
            )
            raise StoreError(msg) from err

    return wrapper


def get_by_ids(col: Any, ids: Sequence[str], include: list[str]) -> dict[str, tuple[Any, ...]]:
    """``id -> (value per include field)`` of the stored records among ``ids``, in batches of ``GET_BATCH``."""
    out: dict[str, tuple[Any, ...]] = {}
    ids = list(dict.fromkeys(ids))
    for start in range(0, len(ids), GET_BATCH):
        res = col.get(ids=ids[start : start + GET_BATCH], include=include)
        columns = [res[name] for name in include]
        out.update((cid, tuple(col_[i] for col_ in columns)) for i, cid in enumerate(res["ids"]))
    return out


def get_where_in(col: Any, key: str, values: Sequence[Any], include: list[str]) -> Iterator[dict[str, Any]]:
    """Chroma ``get`` results of the records whose metadata ``key`` is one of ``values``, ``IN_BATCH`` at a time."""
    values = list(dict.fromkeys(values))
    for start in range(0, len(values), IN_BATCH):
        yield col.get(where={key: {"$in": values[start : start + IN_BATCH]}}, include=include)


def pages(col: Any, include: list[str], page: int | None = None) -> Iterator[dict[str, Any]]:
    """Every record, ``page`` (default ``GET_BATCH``) at a time: one ``get`` of all records fails past SQLite's
    variable limit (~30k)."""
    start, page = 0, page or GET_BATCH
    while True:
        res = col.get(include=include, limit=page, offset=start)
        if not res["ids"]:
            return
        yield res
        start += page
