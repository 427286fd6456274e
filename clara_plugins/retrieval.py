"""The search modes every retriever bridge offers: similarity, MMR over CLaRa memories, a cosine score threshold.

LangChain's vector-store retrievers take ``search_type`` and ``search_kwargs``; the LangChain and LlamaIndex bridges
and ``ClaraVectorStore`` all turn their arguments into one :class:`SearchOptions` (validated here, so an unknown
keyword or search type raises naming it) and run it with :func:`run_search`. Scores are always the exact CLaRa
cosine between the query reasoner's vector and a chunk's stored memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from clara_plugins.errors import InputError

SEARCH_TYPES = ("similarity", "mmr", "similarity_score_threshold")
_COMMON = ("k", "filter", "where")
ALLOWED_KWARGS = {
    "similarity": _COMMON,
    "mmr": (*_COMMON, "fetch_k", "lambda_mult"),
    "similarity_score_threshold": (*_COMMON, "score_threshold"),
}


@dataclass(frozen=True)
class SearchOptions:
    """One validated search request.

    Attributes:
        search_type: ``"similarity"``, ``"mmr"`` or ``"similarity_score_threshold"``.
        k: chunks returned (at most).
        where: Chroma filter on the user metadata (LangChain's name: ``filter``).
        fetch_k: MMR: candidates fetched by similarity before diversifying.
        lambda_mult: MMR: 1 = pure relevance, 0 = pure diversity.
        score_threshold: similarity_score_threshold: the least CLaRa cosine kept (between -1 and 1).
    """

    search_type: str = "similarity"
    k: int = 4
    where: dict[str, Any] | None = None
    fetch_k: int = 20
    lambda_mult: float = 0.5
    score_threshold: float | None = None


def search_options(
    search_type: str = "similarity", search_kwargs: Mapping[str, Any] | None = None, **defaults: Any
) -> SearchOptions:
    """Validate ``search_type`` and ``search_kwargs`` (LangChain's names) into :class:`SearchOptions`.

    Args:
        search_type: one of ``SEARCH_TYPES``.
        search_kwargs: ``k``, ``filter`` (or ``where``), and per search type ``fetch_k`` / ``lambda_mult`` (mmr) or
            ``score_threshold`` (similarity_score_threshold).
        **defaults: values used where ``search_kwargs`` has none (``k``, ``where``).

    Raises:
        InputError: an unknown search type, a keyword the search type does not take, or a bad value; the message
            names it.
    """
    if search_type not in SEARCH_TYPES:
        msg = f"search_type={search_type!r} is not supported; use one of {list(SEARCH_TYPES)}"
        raise InputError(msg)
    kwargs = dict(search_kwargs or {})
    unknown = sorted(set(kwargs) - set(ALLOWED_KWARGS[search_type]))
    if unknown:
        msg = (
            f"search_kwargs {unknown} not supported with search_type={search_type!r}; "
            f"it takes {list(ALLOWED_KWARGS[search_type])}"
        )
        raise InputError(msg)
    if "filter" in kwargs and "where" in kwargs:
        msg = "pass the metadata filter as filter or as where, not both"
        raise InputError(msg)
    where = kwargs.pop("filter", kwargs.pop("where", defaults.get("where")))
    return _checked(SearchOptions(search_type=search_type, where=where, **{"k": defaults.get("k", 4), **kwargs}))


def _checked(options: SearchOptions) -> SearchOptions:
    for name in ("k", "fetch_k"):
        value = getattr(options, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            msg = f"{name} must be a positive integer, got {value!r}"
            raise InputError(msg)
    if not isinstance(options.lambda_mult, (int, float)) or not 0 <= options.lambda_mult <= 1:
        msg = f"lambda_mult must be a number between 0 and 1, got {options.lambda_mult!r}"
        raise InputError(msg)
    if options.where is not None and not isinstance(options.where, dict):
        msg = f"filter must be a dict of Chroma metadata filters, got {type(options.where).__name__}"
        raise InputError(msg)
    threshold = options.score_threshold
    if options.search_type == "similarity_score_threshold" and not isinstance(threshold, (int, float)):
        msg = f"search_type='similarity_score_threshold' needs a numeric score_threshold, got {threshold!r}"
        raise InputError(msg)
    return options


def run_search(rag: Any, question: str, options: SearchOptions) -> list[Any]:
    """The ``Hit``s ``options`` asks for, best first (MMR: in MMR's order), scored by CLaRa cosine."""
    if options.search_type == "mmr":
        return mmr_search(rag, question, options.k, options.fetch_k, options.lambda_mult, options.where)
    hits = rag.search(question, k=options.k, where=options.where)
    if options.score_threshold is not None:
        hits = [h for h in hits if h.score >= options.score_threshold]
    return hits


def mmr_search(
    rag: Any, question: str, k: int, fetch_k: int = 20, lambda_mult: float = 0.5, where: dict | None = None
) -> list[Any]:
    """Maximal marginal relevance over CLaRa vectors.

    Fetches ``max(fetch_k, k)`` chunks by cosine, then picks ``k`` of them one by one, each maximising
    ``lambda_mult * cosine(question, chunk) - (1 - lambda_mult) * max cosine(chunk, already picked)``, where the
    chunk-to-chunk cosine is between their stored memories (flattened). Each hit keeps its cosine to the question.
    """
    candidates = rag.search(question, k=max(fetch_k, k), where=where)
    if not candidates:
        return []
    mems = F.normalize(rag.memories_for(candidates).flatten(1), dim=-1)  # (C, n_mem * hidden)
    relevance = torch.tensor([h.score for h in candidates], dtype=mems.dtype)  # (C,)
    return [candidates[i] for i in mmr_order(relevance, mems @ mems.T, k, lambda_mult)]


def mmr_order(relevance: torch.Tensor, similarity: torch.Tensor, k: int, lambda_mult: float) -> list[int]:
    """Indices picked by MMR: ``relevance`` (C,) to the query, ``similarity`` (C, C) between candidates."""
    chosen = [int(relevance.argmax())]
    while len(chosen) < min(k, len(relevance)):
        redundancy = similarity[:, chosen].max(dim=1).values  # (C,)
        score = lambda_mult * relevance - (1 - lambda_mult) * redundancy
        score[chosen] = float("-inf")
        chosen.append(int(score.argmax()))
    return chosen
