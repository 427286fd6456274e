"""Split long texts into pieces of at most ``max_tokens`` tokens, at paragraph or sentence boundaries when possible.

The official code silently truncates documents longer than 256 tokens (defect 8.8); CLaRa here compresses every
piece and keeps each piece's character offsets, so ``text[chunk.start:chunk.end] == chunk.text`` and the chunks
concatenated give back the whole text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from clara_plugins.errors import InputError
from clara_plugins.tokens import plain_ids, tokenizer_lock

# boundary kinds, best first: a blank line, a sentence end, any whitespace
_BOUNDARIES = (re.compile(r"\n\s*\n\s*"), re.compile(r"(?<=[.!?;:])[\"')\]]*\s+"), re.compile(r"\s+"))


@dataclass(frozen=True)
class Chunk:
    """A piece of a text: ``text == source[start:end]``."""

    text: str
    start: int
    end: int


def _token_ends(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Character offset where each token of ``text`` ends."""
    with tokenizer_lock(tokenizer):
        enc = tokenizer(text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
    return [end for _, end in enc["offset_mapping"]]


def _window_token_ends(
    tokenizer: PreTrainedTokenizerBase, text: str, start: int, max_tokens: int
) -> tuple[list[int], bool]:
    """Token ends of a window from ``start`` just long enough to hold more than ``max_tokens`` tokens.

    Tokenizing only a window (grown by doubling) keeps chunking linear in the text length.
    """
    span = max_tokens * 8
    while True:
        ends = _token_ends(tokenizer, text[start : start + span])
        reaches_end = start + span >= len(text)
        if len(ends) > max_tokens or reaches_end:
            return ends, reaches_end
        span *= 2


def _n_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    return len(plain_ids(tokenizer, [text])[0])


def _best_cut(text: str, start: int, limit: int) -> int:
    """The best boundary in ``text[start:limit]``: the last paragraph, else sentence, else word end."""
    window = text[start:limit]
    for pattern in _BOUNDARIES:
        ends = [m.end() for m in pattern.finditer(window) if m.end() < len(window) and m.start() > 0]
        if ends:
            return start + ends[-1]
    return limit


def chunk_text(
    text: str,
    tokenizer: PreTrainedTokenizerBase,
    max_tokens: int,
    count_tokens: Callable[[str], int] | None = None,
) -> list[Chunk]:
    """Split ``text`` into chunks of at most ``max_tokens`` tokens.

    Args:
        text: the text to split; an empty text gives no chunk.
        tokenizer: the model's tokenizer.
        max_tokens: most tokens per chunk (the model's ``doc_max_length``).
        count_tokens: how a piece's tokens are counted where it will be used (default: the piece tokenized
            alone); a tokenizer's prefix-space rules can make a piece one token longer in context.

    Returns:
        Chunks in order, covering the text without gaps or overlaps.
    """
    if not isinstance(text, str):
        msg = f"text must be a str, got {type(text).__name__}"
        raise InputError(msg)
    if max_tokens < 1:
        msg = f"max_tokens must be >= 1, got {max_tokens}"
        raise InputError(msg)
    count = count_tokens or (lambda piece: _n_tokens(tokenizer, piece))
    chunks: list[Chunk] = []
    start = 0
    while start < len(text):
        ends, reaches_end = _window_token_ends(tokenizer, text, start, max_tokens)
        if len(ends) <= max_tokens and reaches_end and count(text[start:]) <= max_tokens:
            chunks.append(Chunk(text[start:], start, len(text)))
            break
        ends = ends[:max_tokens]
        end = _best_cut(text, start, start + ends[-1])
        # a piece re-tokenized alone (or in context) can differ by a token at its edges: shrink until it fits
        while end > start + 1 and count(text[start:end]) > max_tokens:
            end = _best_cut(text, start, end - 1) if end - 1 > start else end - 1
        chunks.append(Chunk(text[start:end], start, end))
        start = end
    return chunks
