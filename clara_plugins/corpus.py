"""Read documents to index from files and folders: ``.txt`` and ``.md`` (one document per file) and ``.jsonl``
(one document per line with a ``text`` field; ``id``/``_id``, ``title`` and a ``metadata`` dict are kept)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from clara_plugins.errors import InputError

logger = logging.getLogger(__name__)

SUFFIXES = (".txt", ".md", ".jsonl")


def iter_files(paths: Sequence[str | Path]) -> Iterator[Path]:
    """Files to read: the given files, and the supported files under given folders (recursively, sorted).

    Raises:
        InputError: a path does not exist, or a given file has an unsupported suffix.
    """
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
            if not found:
                logger.warning("no %s files under %s", "/".join(SUFFIXES), path)
            yield from found
        elif path.is_file():
            if path.suffix.lower() not in SUFFIXES:
                msg = f"cannot read {str(path)!r}: supported files are {', '.join(SUFFIXES)} (or a folder of them)"
                raise InputError(msg)
            yield path
        else:
            msg = f"path {str(path)!r} does not exist"
            raise InputError(msg)


def read_jsonl(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("file:line", object)`` for each non-empty line; a line that is not a JSON object is an error."""
    path = Path(path)
    if not path.is_file():
        msg = f"data file not found: {str(path)!r}"
        raise InputError(msg)
    try:
        handle = path.open("rb")
    except OSError as err:
        msg = f"cannot read {path}: {err.strerror or err}"
        raise InputError(msg) from err
    with handle:
        for line_no, raw in enumerate(handle, start=1):
            where = f"{path}:{line_no}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                msg = f"{where}: not UTF-8 text ({err.reason} at byte {err.start})"
                raise InputError(msg) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                msg = f"{where}: not valid JSON ({err.msg} at column {err.colno})"
                raise InputError(msg) from None
            if not isinstance(obj, dict):
                msg = f"{where}: expected a JSON object, got {type(obj).__name__}"
                raise InputError(msg)
            yield where, obj


def _jsonl_records(path: Path, text_field: str = "text") -> Iterator[dict[str, Any]]:
    for where, row in read_jsonl(path):
        if not isinstance(row.get(text_field), str):
            msg = f"{where} has no string field {text_field!r} (name the field with --text-field)"
            raise InputError(msg)
        if not row[text_field].strip():
            msg = f"{where} has an empty {text_field!r}"
            raise InputError(msg)
        meta = dict(row.get("metadata") or {}) if isinstance(row.get("metadata"), dict) else {}
        if isinstance(row.get("title"), str) and row["title"]:
            meta.setdefault("title", row["title"])
        meta["source"] = str(path)
        doc_id = row.get("id", row.get("_id"))
        yield {
            "text": row[text_field],
            "id": str(doc_id) if doc_id is not None else where.replace("#", "%23"),
            "metadata": meta,
        }


def read_corpus(paths: Sequence[str | Path], text_field: str = "text") -> list[dict[str, Any]]:
    """Records ``{"text", "id", "metadata"}`` for ``ClaraRAG.index``.

    A ``.txt``/``.md`` file is one document whose id is its resolved path; a ``.jsonl`` line is one document whose
    id is its ``id``/``_id`` field, else ``path:line``; its text is the ``text_field`` field. Every record gets
    ``metadata["source"]`` (the file).

    Raises:
        InputError: a missing path, an unsupported file, a bad JSONL line, an empty or undecodable file.
    """
    records: list[dict[str, Any]] = []
    for path in iter_files(paths):
        path = path.resolve()
        if path.suffix.lower() == ".jsonl":
            records.extend(_jsonl_records(path, text_field))
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            msg = f"{path} is not UTF-8 text ({err.reason})"
            raise InputError(msg) from err
        except OSError as err:  # unreadable (permissions), vanished, a broken link
            msg = f"cannot read {path}: {err.strerror or err}"
            raise InputError(msg) from err
        if not text.strip():
            msg = f"{path} is empty; remove it or give other paths"
            raise InputError(msg)
        # '#' separates document and chunk ids (ClaraRAG.delete), so it is escaped in ids made from paths
        records.append({"text": text, "id": str(path).replace("#", "%23"), "metadata": {"source": str(path)}})
    return records
