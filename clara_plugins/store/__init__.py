"""The CLaRa store: compressed memories of chunks in Chroma, ranked by exact CLaRa cosine.

``ClaraStore`` (``clara_store.py``) owns the collection and the records; a layout per way of keeping memories
(``full.py``, ``local.py``, ``shared.py``, behind ``layout.Layout``); record types and metadata keys in
``records.py``; Chroma access in ``chroma.py``; integrity (``checks.py``, ``lock.py``, ``verify.py``).
"""

from clara_plugins.store.checks import text_hash
from clara_plugins.store.clara_store import DEFAULT_HNSW, FORMAT_VERSION, ClaraStore
from clara_plugins.store.records import RESERVED_PREFIX, ChunkRecord, Hit, StoreInfo, validate_metadata

__all__ = [
    "DEFAULT_HNSW",
    "FORMAT_VERSION",
    "RESERVED_PREFIX",
    "ChunkRecord",
    "ClaraStore",
    "Hit",
    "StoreInfo",
    "text_hash",
    "validate_metadata",
]
