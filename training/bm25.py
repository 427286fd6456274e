"""BM25 (rank-bm25 Okapi) over a list of texts: the lexical baseline of every retrieval table, and a candidate miner."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from clara_plugins.errors import InputError, MissingExtraError

_WORD = re.compile(r"\w+")
# a short English stop list: BM25 on claims/questions is noticeably better without these
_STOP = "a an and are as at be by for from has have how in is it its of on or that the this to was were what when where"
STOP_WORDS = frozenset([*_STOP.split(), "which", "who", "whom", "why", "with", "did", "does", "do"])


def bm25_tokenize(text: str) -> list[str]:
    """Lower-cased word tokens without stop words."""
    return [w for w in _WORD.findall(text.lower()) if w not in STOP_WORDS]


class BM25Retriever:
    """Okapi BM25 over a fixed corpus.

    Args:
        texts: the corpus, one string per document; results are positions in this list.
        k1: term-frequency saturation.
        b: length normalisation.
    """

    def __init__(self, texts: Sequence[str], k1: float = 1.5, b: float = 0.75) -> None:
        try:
            from rank_bm25 import BM25Okapi
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise MissingExtraError("rank-bm25", "train") from err
        if not texts:
            msg = "texts must not be empty"
            raise InputError(msg)
        self.size = len(texts)
        # rank-bm25 divides by zero on an empty token list; a placeholder token keeps such a document last
        self._bm25 = BM25Okapi([bm25_tokenize(t) or ["\x00"] for t in texts], k1=k1, b=b)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for ``query``: shape ``(len(texts),)``."""
        return np.asarray(self._bm25.get_scores(bm25_tokenize(query)), dtype=np.float64)

    def search(self, query: str, k: int = 10) -> list[int]:
        """Positions of the best ``k`` documents, best first (ties broken by position)."""
        scores = self.scores(query)
        order = np.lexsort((np.arange(self.size), -scores))
        return [int(i) for i in order[: min(k, self.size)]]

    def rank(self, query: str, candidates: Sequence[int]) -> list[int]:
        """``candidates`` (document positions) reordered by BM25 score, best first."""
        scores = self.scores(query)
        return sorted(candidates, key=lambda i: (-scores[i], i))
