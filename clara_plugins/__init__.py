"""clara-plugins: CLaRa compressed-memory retrieval and generation, for LangChain and LlamaIndex apps.

The core (this package) imports neither LangChain nor LlamaIndex; the integrations live in
``clara_plugins.adapters`` and are imported only when used. Heavy submodules load lazily so that
``import clara_plugins`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from clara_plugins.errors import (
    CheckpointError,
    ClaraError,
    ConfigError,
    InputError,
    MissingExtraError,
    ModelMismatchError,
    StoreError,
)

__version__ = "0.1.0"

# public name -> module that defines it (loaded on first access)
_LAZY = {
    "ClaraModel": "clara_plugins.model",
    "ClaraConfig": "clara_plugins.config",
    "ClaraAnswer": "clara_plugins.model",
    "Chunk": "clara_plugins.chunking",
    "chunk_text": "clara_plugins.chunking",
    "ClaraStore": "clara_plugins.store",
    "ClaraRAG": "clara_plugins.rag",
    "Hit": "clara_plugins.store",
    "RAGAnswer": "clara_plugins.rag",
}

__all__ = [
    "CheckpointError",
    "Chunk",
    "ClaraAnswer",
    "ClaraConfig",
    "ClaraError",
    "ClaraModel",
    "ClaraRAG",
    "ClaraStore",
    "ConfigError",
    "Hit",
    "InputError",
    "MissingExtraError",
    "ModelMismatchError",
    "RAGAnswer",
    "StoreError",
    "__version__",
    "chunk_text",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    msg = f"module 'clara_plugins' has no attribute {name!r}"
    raise AttributeError(msg)


if TYPE_CHECKING:  # pragma: no cover
    from clara_plugins.chunking import Chunk, chunk_text
    from clara_plugins.config import ClaraConfig
    from clara_plugins.model import ClaraAnswer, ClaraModel
    from clara_plugins.rag import ClaraRAG, RAGAnswer
    from clara_plugins.store import ClaraStore, Hit
