"""What the store keeps besides memories, in one place: the record and hit types, the metadata keys of a record and
of a collection, and the checks on user metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clara_plugins.errors import InputError

RESERVED_PREFIX = "clara_"  # user metadata keys may not start with it

# keys of a chunk record's Chroma metadata (besides the user's own)
DOC = "clara_doc"  # id of the chunk's document
START, END = "clara_start", "clara_end"  # character span of the chunk in its document
INDEX, N_CHUNKS = "clara_i", "clara_n"  # position of the chunk, chunks of the document
DOC_HASH, HASH = "clara_dochash", "clara_hash"  # content hashes of the document and of the chunk text
ROW = "clara_row"  # where the memory is: a row of the sidecar file ("pca") or of a shard ("shared")
SHARD = "clara_shard"  # "shared": the shard file holding the memory
CRC = "clara_crc"  # "shared": CRC-32 of the memory's stored bytes

# keys of the collection's Chroma metadata
FORMAT = "clara_format"
FINGERPRINT = "clara_fingerprint"
MODEL = "clara_model"
LAYOUT = "clara_mode"  # the key predates the word "layout"; stores keep it
MEMORY_DIM, N_MEM, HIDDEN_SIZE = "clara_memory_dim", "clara_n_mem", "clara_hidden_size"
MEMORY_DTYPE = "clara_memory_dtype"
ANN_DIM = "clara_ann_dim"  # width of the projection Chroma indexes ("pca", "shared"); memory_dim in "full"
CANDIDATES = "clara_candidates"
FP_BASE = "clara_fp_base"  # 1: the fingerprint covers the base weights (v2)
MEMORIES_URL = "clara_memories_url"  # "shared": fsspec URL of the memory shards


@dataclass
class Hit:
    """One retrieved chunk.

    Attributes:
        id: Chunk id (``"{doc_id}#{i}"``).
        text: The chunk's text.
        score: Exact CLaRa cosine between the question and the chunk's memory (higher is better).
        metadata: The user metadata of the chunk's document.
        doc_id: Id of the document the chunk comes from.
        start: Character offset of the chunk in its document.
        end: Character offset just past the chunk.
    """

    id: str
    text: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)
    doc_id: str = ""
    start: int = 0
    end: int = 0


@dataclass
class ChunkRecord:
    """What the store keeps about one chunk besides its memory."""

    id: str
    text: str
    doc_id: str
    start: int
    end: int
    index: int  # position of the chunk in its document
    n_chunks: int  # chunks of the document (a document is complete when all are stored)
    doc_hash: str  # hash of the whole document text
    hash: str  # hash of the chunk text (content address of its memory)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class StoreInfo:
    """What ``clara info`` reports."""

    collection: str
    path: str | None
    layout: str
    fingerprint: str
    model_source: str | None
    memory_dim: int
    n_mem: int
    hidden_size: int
    n_chunks: int
    n_docs: int
    hnsw: dict[str, Any]
    memory_dtype: str = "float16"
    memories_url: str | None = None
    memories_bytes: int | None = None  # "shared": bytes of every shard under memories_url
    disk_bytes: int | None = None


def record_meta(rec: ChunkRecord) -> dict[str, Any]:
    """The Chroma metadata of a chunk record (the user's keys and the store's)."""
    return {
        **rec.metadata,
        DOC: rec.doc_id,
        START: rec.start,
        END: rec.end,
        INDEX: rec.index,
        N_CHUNKS: rec.n_chunks,
        DOC_HASH: rec.doc_hash,
        HASH: rec.hash,
    }


def hit_from(cid: str, text: str | None, meta: dict[str, Any] | None, score: float) -> Hit:
    """A Hit from a Chroma record (the store's keys become fields, the user's stay metadata)."""
    meta = dict(meta or {})
    user = {k: v for k, v in meta.items() if not k.startswith(RESERVED_PREFIX)}
    return Hit(
        id=cid,
        text=text or "",
        score=score,
        metadata=user,
        doc_id=str(meta.get(DOC, cid)),
        start=int(meta.get(START, 0)),
        end=int(meta.get(END, len(text or ""))),
    )


def user_where(where: dict[str, Any] | None) -> dict[str, Any] | None:
    """A user's Chroma ``where`` filter, checked for type (None or {} mean no filter)."""
    if where is not None and not isinstance(where, dict):
        msg = f"where must be a dict of Chroma metadata filters, got {type(where).__name__}"
        raise InputError(msg)
    return where or None


def validate_metadata(metadata: Any, where: str) -> dict[str, Any]:
    """Check user metadata against what Chroma accepts; returns a copy.

    Raises:
        InputError: naming the record (``where``), the key and the value.
    """
    from chromadb.api.types import validate_metadata as chroma_validate

    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        msg = f"metadata of {where} must be a dict, got {type(metadata).__name__}"
        raise InputError(msg)
    for key in metadata:
        if isinstance(key, str) and key.startswith(RESERVED_PREFIX):
            msg = f"metadata key {key!r} of {where} starts with the reserved prefix {RESERVED_PREFIX!r}; rename it"
            raise InputError(msg)
    if not metadata:
        return {}
    try:
        chroma_validate(metadata)
    except (ValueError, TypeError) as err:
        msg = f"metadata of {where} is not accepted by Chroma: {err}"
        raise InputError(msg) from err
    for key, value in metadata.items():
        if value is None or (isinstance(value, list) and not value):
            msg = f"metadata value of key {key!r} in {where} is {value!r}; Chroma cannot store it, drop the key"
            raise InputError(msg)
    return dict(metadata)
