"""Full memories in object storage: append-only shard files read by byte range, through fsspec.

The ``"shared"`` store layout keeps records and short search vectors in Chroma and the full memories here, so that
every client of a Chroma server, on any machine, reads the same memories: ``s3://bucket/prefix`` (s3fs),
``gs://`` (gcsfs), ``az://`` (adlfs), ``memory://`` (tests) or a shared filesystem path.

Each :meth:`ObjectShards.write` puts ONE new object ``shards/<uuid4>-<counter>.shard`` (never overwritten: names
are unique across processes and machines, and the put asks the server to refuse an existing name):

    offset 0       header, 64 bytes, little-endian: magic b"CLARASHD", format version (u16), header size (u16),
                   dtype name (8 bytes, NUL-padded), dim (u32), group (u32, 0 unless int8), rows (u64),
                   row_bytes (u64), data offset (u64) and a CRC-32 of the 52 bytes before it (u32), zero padding
    offset 64      ``rows`` fixed-size rows: row i is at ``64 + i * row_bytes`` (fp16 / fp32 values, or int8 codes
                   followed by one float32 scale per ``group`` values, as :mod:`clara_plugins.quantize` packs them)
    after the rows one CRC-32 per row (u32): a shard can be checked without Chroma (:meth:`ObjectShards.check_shard`)

A Chroma record keeps a :class:`RowLocation` (shard name, row, CRC-32 of the row's bytes) in its metadata.
:meth:`ObjectShards.read` fetches the rows it is given with byte-range requests, ranges of one shard that lie close
together merged into one request (``merge_gap``), all requests of a call issued concurrently (``cat_ranges``: one
``asyncio.gather`` on s3fs / gcsfs / adlfs). Every row is checked against its CRC, and its shard's header against
the store's dim and dtype; damaged, truncated or missing data raises :class:`~clara_plugins.errors.StoreError`
naming the shard and rows, never returns other numbers.

Credentials and endpoints: ``storage_options`` are passed to the filesystem (for s3fs, e.g.
``{"endpoint_url": "http://127.0.0.1:9000", "key": ..., "secret": ...}``), or come from the environment the
backend reads (s3fs through botocore: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``).
"""

from __future__ import annotations

import itertools
import logging
import os
import struct
import threading
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clara_plugins.errors import ConfigError, InputError, StoreError
from clara_plugins.quantize import bytes_per_row, dequantize_rows, quantize_rows
from clara_plugins.store.checks import row_crcs

logger = logging.getLogger(__name__)

MAGIC = b"CLARASHD"
VERSION = 1
HEADER_SIZE = 64
_HEADER = struct.Struct("<8sHH8sIIQQQ")  # magic, version, header size, dtype, dim, group, rows, row_bytes, offset
_CRC = struct.Struct("<I")
_ITEM = {"float16": 2, "float32": 4, "int8": 1}
_SHARDS = "shards"
_BLOBS = "blobs"
_BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
_CHECK_HINT = "run `clara check` on the store (damaged memories need a re-index of their documents or a backup)"


@dataclass(frozen=True)
class RowLocation:
    """Where one chunk's memory is: what its Chroma record keeps (``clara_shard``, ``clara_row``, ``clara_crc``).

    Attributes:
        shard: Shard file name relative to the store's root URL (``shards/<uuid>-<n>.shard``).
        row: Row index inside the shard.
        crc: CRC-32 of the row's stored bytes.
    """

    shard: str
    row: int
    crc: int


@dataclass(frozen=True)
class ShardHeader:
    """The decoded 64-byte header of a shard file."""

    dtype: str
    dim: int
    group: int
    rows: int
    row_bytes: int

    def pack(self) -> bytes:
        """The 64 header bytes."""
        name = self.dtype.encode("ascii")
        fields = (self.dim, self.group, self.rows, self.row_bytes, HEADER_SIZE)
        body = _HEADER.pack(MAGIC, VERSION, HEADER_SIZE, name, *fields)
        head = body + _CRC.pack(zlib.crc32(body))
        return head + b"\0" * (HEADER_SIZE - len(head))

    @classmethod
    def unpack(cls, raw: bytes, url: str) -> ShardHeader:
        """Decode and check the header bytes of the shard at ``url``."""
        if len(raw) < HEADER_SIZE:
            msg = f"memory shard {url} is truncated: {len(raw)} of its {HEADER_SIZE} header bytes; {_CHECK_HINT}"
            raise StoreError(msg)
        body = raw[: _HEADER.size]
        magic, version, size, dtype, dim, group, rows, row_bytes, offset = _HEADER.unpack(body)
        (crc,) = _CRC.unpack_from(raw, _HEADER.size)
        if magic != MAGIC or crc != zlib.crc32(body):
            msg = f"memory shard {url} has a damaged header (bad magic or header CRC); {_CHECK_HINT}"
            raise StoreError(msg)
        if version != VERSION or size != HEADER_SIZE or offset != HEADER_SIZE:
            msg = f"memory shard {url} has format version {version}; this clara-plugins reads version {VERSION}"
            raise StoreError(msg)
        return cls(dtype.rstrip(b"\0").decode("ascii"), dim, group, rows, row_bytes)

    def row_offset(self, row: int) -> int:
        """Byte offset of ``row`` in the file."""
        return HEADER_SIZE + row * self.row_bytes

    def file_size(self) -> int:
        """Bytes of the whole shard file: header, rows, row CRCs."""
        return HEADER_SIZE + self.rows * (self.row_bytes + _CRC.size)


def _filesystem(url: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    """``(fsspec filesystem, root path)`` for ``url``; a missing backend names the package to install."""
    import fsspec.core

    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except ImportError as err:
        protocol = url.split("://", 1)[0] if "://" in url else "file"
        package = _BACKENDS.get(protocol, f"the fsspec backend of {protocol}://")
        msg = f"memories at {url} need {package}, which is not installed: pip install {package} ({err})"
        raise StoreError(msg) from err


def _is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


class ObjectShards:
    """Flattened memory rows ``[dim]`` in append-only shard objects under one root URL.

    Args:
        url: Root of the store's memories: ``s3://bucket/prefix``, ``gs://...``, ``az://...``, ``memory://...``
            or a (shared) filesystem path.
        dim: Length of one flattened memory (``n_mem * hidden``).
        dtype: ``"float16"`` (default), ``"float32"`` or ``"int8"`` (per-group float32 scales).
        group: Values per int8 scale: the hidden size, for one scale per memory vector. int8 only.
        storage_options: Passed to the fsspec filesystem (credentials, ``endpoint_url``, ...).
        verify: Check every row read against its CRC-32 (headers and lengths are always checked).
        merge_gap: Ranges of one shard at most this many bytes apart are read in one request; ``None`` reads
            each row with its own request.
    """

    def __init__(
        self,
        url: str,
        dim: int,
        dtype: str = "float16",
        group: int | None = None,
        storage_options: dict | None = None,
        verify: bool = True,
        *,
        merge_gap: int | None = 1 << 20,
    ) -> None:
        if dtype not in _ITEM:
            msg = f"dtype must be one of {sorted(_ITEM)}, got {dtype!r}"
            raise ConfigError(msg)
        if dtype == "int8" and (not group or dim % group):
            msg = f"int8 memories need a group (the hidden size) that divides dim={dim}, got group={group}"
            raise ConfigError(msg)
        self.url = url.rstrip("/")
        self.fs, self.root = _filesystem(self.url, storage_options)
        self.root = self.root.rstrip("/")
        self.dim, self.dtype, self.verify, self.merge_gap = dim, dtype, verify, merge_gap
        self.group = group if dtype == "int8" else 0
        row_bytes = bytes_per_row(dim, group) if dtype == "int8" else dim * _ITEM[dtype]
        self.layout = ShardHeader(dtype, dim, self.group, 0, row_bytes)
        self._session = uuid.uuid4().hex  # with the counter: names unique across processes and machines
        self._counter = itertools.count()
        self._headers: dict[str, ShardHeader] = {}  # shards are immutable: a checked header stays valid
        self._lock = threading.Lock()

    @property
    def row_bytes(self) -> int:
        """Stored bytes of one row."""
        return self.layout.row_bytes

    def shard_url(self, name: str) -> str:
        """Full URL of a shard or blob name."""
        return f"{self.url}/{name}"

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    # ---- writing -----------------------------------------------------------------------------------------
    def write(self, rows: np.ndarray) -> list[RowLocation]:
        """Store ``rows [N, dim]`` as one new shard object; returns where each row is, in order.

        Raises:
            InputError: ``rows`` is not ``[N, dim]``.
            StoreError: values that do not fit the dtype (NaN, inf, fp16 overflow): nothing is written.
        """
        if np.ndim(rows) != 2 or np.shape(rows)[1] != self.dim:
            msg = f"memories must have shape [N, {self.dim}], got {list(np.shape(rows))}"
            raise InputError(msg)
        if len(rows) == 0:
            return []
        data = self._encode(rows)  # (N, row_bytes) uint8
        crcs = row_crcs(data)
        with self._lock:
            name = f"{_SHARDS}/{self._session}-{next(self._counter):08d}.shard"
        header = ShardHeader(self.dtype, self.dim, self.group, len(data), self.row_bytes)
        self._put(name, b"".join([header.pack(), data.tobytes(), crcs.astype("<u4").tobytes()]), create=True)
        self._headers[name] = header
        return [RowLocation(name, i, int(c)) for i, c in enumerate(crcs)]

    def _encode(self, rows: np.ndarray) -> np.ndarray:
        if self.dtype == "int8":
            try:
                codes, scales = quantize_rows(np.asarray(rows, dtype=np.float32), self.group)
            except InputError as err:
                msg = f"memories cannot be stored as int8: {err}; nothing was stored"
                raise StoreError(msg) from err
            return np.concatenate([codes.view(np.uint8), scales.view(np.uint8)], axis=1)
        with np.errstate(over="ignore"):  # an overflow becomes inf, refused just below
            values = np.ascontiguousarray(rows, dtype="<f2" if self.dtype == "float16" else "<f4")
        if not np.isfinite(values).all():
            msg = f"memories are not finite in {self.dtype} (NaN, inf or overflow); nothing was stored"
            raise StoreError(msg)
        return values.view(np.uint8).reshape(len(values), -1)

    def put_object(self, name: str, data: bytes, create: bool = True) -> None:
        """Write the object ``name`` (relative to the root) whole; with ``create`` an existing one is refused."""
        self._put(name, bytes(data), create)

    def _put(self, name: str, data: bytes, create: bool) -> None:
        """Write one object whole: an object-store put (atomic), or a temp file renamed into place locally."""
        path = self._path(name)
        if _is_local(self.fs):
            self._put_local(path, data, create)
            return
        try:
            self.fs.pipe_file(path, data, mode="create" if create else "overwrite")
        except FileExistsError as err:
            msg = f"memory object {self.shard_url(name)} already exists; shard objects are never overwritten"
            raise StoreError(msg) from err

    def _put_local(self, path: str, data: bytes, create: bool) -> None:
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if create and os.path.exists(path):
            os.unlink(tmp)
            msg = f"memory object {path} already exists; shard objects are never overwritten"
            raise StoreError(msg)
        os.replace(tmp, path)

    # ---- reading -----------------------------------------------------------------------------------------
    def read(self, locations: Sequence[RowLocation]) -> np.ndarray:
        """The rows at ``locations`` as float32 ``[N, dim]``, in the order given.

        Raises:
            StoreError: a shard is missing, truncated, has a header that disagrees with this store, or a row fails
                its CRC; the message names the shard URL and rows.
        """
        locs = list(locations)
        out = np.empty((len(locs), self.dim), dtype=np.float32)
        if not locs:
            return out
        wanted = sorted({(loc.shard, loc.row) for loc in locs})
        raw = self._fetch(wanted)  # (shard, row) -> row bytes
        data = np.stack([np.frombuffer(raw[(loc.shard, loc.row)], dtype=np.uint8) for loc in locs])
        if self.verify:
            self._check_crcs(locs, data)
        return self._decode(data, out)

    def _decode(self, data: np.ndarray, out: np.ndarray) -> np.ndarray:
        if self.dtype == "int8":
            codes = np.ascontiguousarray(data[:, : self.dim]).view(np.int8)
            scales = np.ascontiguousarray(data[:, self.dim :]).view("<f4")
            out[:] = dequantize_rows(codes, scales)
        else:
            out[:] = data.view("<f2" if self.dtype == "float16" else "<f4")
        return out

    def _check_crcs(self, locs: list[RowLocation], data: np.ndarray) -> None:
        got = row_crcs(data)
        bad: dict[str, list[int]] = {}
        for loc, crc in zip(locs, got):
            if int(crc) != loc.crc:
                bad.setdefault(loc.shard, []).append(loc.row)
        for shard, rows in bad.items():
            msg = (
                f"memory shard {self.shard_url(shard)} is damaged: row(s) {_rows(rows)} fail their CRC-32; the "
                f"bytes are not what the store wrote, so no result is served from them; {_CHECK_HINT}"
            )
            raise StoreError(msg)

    def _fetch(self, wanted: list[tuple[str, int]]) -> dict[tuple[str, int], bytes]:
        """Bytes of each ``(shard, row)``, headers of shards not seen yet fetched in the same concurrent call."""
        by_shard: dict[str, list[int]] = {}
        for shard, row in wanted:
            by_shard.setdefault(shard, []).append(row)
        requests: list[tuple[str, int, int, list[tuple[int, int, int]]]] = []  # path, start, end, pieces
        for shard, rows in by_shard.items():
            pieces = [(-1, 0, HEADER_SIZE)] if shard not in self._headers else []
            pieces += [(r, self.layout.row_offset(r), self.layout.row_offset(r) + self.row_bytes) for r in rows]
            requests += [(shard, s, e, p) for s, e, p in _merge(pieces, self.merge_gap)]
        blocks = self.fs.cat_ranges([self._path(r[0]) for r in requests], [r[1] for r in requests],
                                    [r[2] for r in requests], on_error="return")  # fmt: skip
        out: dict[tuple[str, int], bytes] = {}
        headers: dict[str, bytes] = {}
        short: dict[str, list[int]] = {}
        for (shard, start, _, pieces), block in zip(requests, blocks):
            block = self._block_or_raise(shard, block, [p[0] for p in pieces])
            for row, s, e in pieces:
                piece = block[s - start : e - start]
                if row < 0:
                    headers[shard] = piece
                elif len(piece) < e - s:
                    short.setdefault(shard, []).append(row)
                else:
                    out[(shard, row)] = piece
        for shard, raw in headers.items():
            self._check_header(shard, raw, by_shard[shard])
        for shard, rows in by_shard.items():
            self._check_rows(shard, rows, short.get(shard, []))
        return out

    def _block_or_raise(self, shard: str, block: bytes | BaseException, rows: list[int]) -> bytes:
        """A fetched block, or the StoreError its error means (missing shard, range past the end)."""
        if not isinstance(block, BaseException):
            return block
        url, shown = self.shard_url(shard), _rows([r for r in rows if r >= 0]) or "header"
        if isinstance(block, FileNotFoundError):
            msg = f"memory shard {url} is missing (rows {shown} were asked for); {_CHECK_HINT}"
        elif "range" in str(block).lower():  # HTTP 416: the shard ends before the range starts
            msg = f"memory shard {url} is truncated: rows {shown} lie past its end; {_CHECK_HINT}"
        else:
            msg = f"could not read memory shard {url} (rows {shown}): {block}"
        raise StoreError(msg) from block

    def _check_header(self, shard: str, raw: bytes, rows: list[int]) -> None:
        url = self.shard_url(shard)
        header = ShardHeader.unpack(raw, url)
        mine = (self.dtype, self.dim, self.group, self.row_bytes)
        theirs = (header.dtype, header.dim, header.group, header.row_bytes)
        if theirs != mine:
            msg = (
                f"memory shard {url} holds {header.dtype} rows of dim {header.dim} (group {header.group}), but this "
                f"store reads {self.dtype} rows of dim {self.dim} (group {self.group}): rows {_rows(rows)} cannot "
                f"be served from it; {_CHECK_HINT}"
            )
            raise StoreError(msg)
        self._headers[shard] = header

    def _check_rows(self, shard: str, rows: list[int], short: list[int]) -> None:
        header, url = self._headers[shard], self.shard_url(shard)
        beyond = [r for r in rows if r >= header.rows]
        if beyond:
            msg = f"memory shard {url} has {header.rows} rows; rows {_rows(beyond)} do not exist; {_CHECK_HINT}"
            raise StoreError(msg)
        if short:
            msg = f"memory shard {url} is truncated: rows {_rows(short)} are cut short; {_CHECK_HINT}"
            raise StoreError(msg)

    # ---- whole-shard checks, blobs, listing ----------------------------------------------------------------
    def check_shard(self, shard: str) -> list[int]:
        """Rows of ``shard`` whose bytes fail the CRC-32 kept in the shard itself (``[]``: intact).

        Raises:
            StoreError: the shard is missing, truncated, or its header disagrees with this store.
        """
        url = self.shard_url(shard)
        try:
            raw = self.fs.cat_file(self._path(shard))
        except FileNotFoundError as err:
            msg = f"memory shard {url} is missing; {_CHECK_HINT}"
            raise StoreError(msg) from err
        self._check_header(shard, raw[:HEADER_SIZE], [])
        header = self._headers[shard]
        if len(raw) != header.file_size():
            what = "truncated: " if len(raw) < header.file_size() else ""
            msg = f"memory shard {url} is {what}{len(raw)} bytes, its header says {header.file_size()}; {_CHECK_HINT}"
            raise StoreError(msg)
        end = header.row_offset(header.rows)
        data = np.frombuffer(raw, dtype=np.uint8, count=end - HEADER_SIZE, offset=HEADER_SIZE)
        stored = np.frombuffer(raw, dtype="<u4", offset=end)
        return [int(i) for i in np.flatnonzero(row_crcs(data.reshape(header.rows, -1)) != stored)]

    def put_blob(self, name: str, data: bytes) -> None:
        """Store a small named object (e.g. the search projection) under ``blobs/``, replacing any earlier one."""
        self._put(f"{_BLOBS}/{_blob_name(name)}", bytes(data), create=False)

    def get_blob(self, name: str) -> bytes | None:
        """The blob stored under ``name``, or ``None`` when there is none."""
        path = self._path(f"{_BLOBS}/{_blob_name(name)}")
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError:
            return None

    def shards(self) -> list[str]:
        """Names of every shard under the root (relative to it), sorted."""
        return sorted(self.sizes())

    def nbytes(self) -> int:
        """Total bytes of every shard under the root (blobs not included)."""
        return int(sum(self.sizes().values()))

    def sizes(self) -> dict[str, int]:
        """Bytes of each shard under the root, by name (listed afresh: other processes add shards)."""
        folder = self._path(_SHARDS)
        self.fs.invalidate_cache(folder)  # other processes add shards: never answer from a cached listing
        try:
            found = self.fs.find(folder, detail=True)
        except FileNotFoundError:
            return {}
        prefix = len(self.root.rstrip("/")) + 1 if self.root else 0
        return {p[prefix:]: int(info["size"]) for p, info in found.items() if p.endswith(".shard")}


def _merge(pieces: list[tuple[int, int, int]], gap: int | None) -> list[tuple[int, int, list[tuple[int, int, int]]]]:
    """Group ``(row, start, end)`` byte ranges into requests ``(start, end, pieces)``: ranges at most ``gap`` bytes
    apart share one request; ``gap=None`` gives each range its own."""
    out: list[tuple[int, int, list[tuple[int, int, int]]]] = []
    for piece in sorted(pieces, key=lambda p: p[1]):
        if out and gap is not None and piece[1] - out[-1][1] <= gap:
            start, end, members = out[-1]
            out[-1] = (start, max(end, piece[2]), [*members, piece])
        else:
            out.append((piece[1], piece[2], [piece]))
    return out


def _rows(rows: Sequence[int]) -> str:
    rows = sorted(set(rows))
    return ", ".join(str(r) for r in rows[:10]) + (f" ... ({len(rows)} rows)" if len(rows) > 10 else "")


def _blob_name(name: str) -> str:
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        msg = f"blob name must be a relative path without '.' or '..' parts, got {name!r}"
        raise InputError(msg)
    return name
