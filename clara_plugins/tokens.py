"""The CLaRa special tokens, and tokenization of user text that can never produce a control token.

Two ways to tokenize user text:
- :func:`plain_ids`: a text alone, every special-token string kept as plain text (chunking, standalone counts).
- :func:`encode_formatted`: a formatted string (a chat prompt, ``<ENC><s>{text}</s>``) exactly as the official code
  tokenizes it, ``tokenizer(string, add_special_tokens=False)``, so ids match token for token, whatever the
  tokenizer's prefix-space rules; only special-token strings inside the user's spans are kept as plain text.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import AddedToken, Tokenizer
from transformers import PreTrainedTokenizerBase

from clara_plugins.errors import CheckpointError, ConfigError, InputError

Span = tuple[int, int]  # [start, end) character offsets of user text inside a formatted string


def clara_special_tokens(n_mem: int) -> list[str]:
    """The tokens CLaRa adds to the base vocabulary, in the official order (reference section 1)."""
    return [f"<MEM{i}>" for i in range(n_mem)] + ["<AE>", "<ENC>", "<SEP>"]


@dataclass(frozen=True)
class SpecialIds:
    """Token ids the model needs: the memory slots and the control tokens."""

    mem: tuple[int, ...]
    ae: int
    enc: int
    sep: int
    bos: int
    eos: int
    pad: int

    @property
    def first_mem(self) -> int:
        return self.mem[0]

    def is_mem(self, ids):
        """Boolean mask of memory-slot positions (ids are contiguous, so one range check, no loop)."""
        return (ids >= self.mem[0]) & (ids <= self.mem[-1])


def add_clara_tokens(tokenizer: PreTrainedTokenizerBase, n_mem: int) -> SpecialIds:
    """Add the CLaRa tokens (if absent), set left padding with pad = bos, and return their ids.

    The ids must come right after the base vocabulary, in order, as in the official checkpoints; a tokenizer
    that already holds some of them in another order is rejected.
    """
    tokens = clara_special_tokens(n_mem)
    vocab = tokenizer.get_vocab()
    present = [t for t in tokens if t in vocab]
    if not present:
        _add_additional_special_tokens(tokenizer, tokens)
    elif len(present) != len(tokens):
        msg = f"tokenizer has only some CLaRa tokens ({len(present)} of {len(tokens)}); expected all or none"
        raise CheckpointError(msg)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if ids != list(range(ids[0], ids[0] + len(ids))):
        msg = f"CLaRa tokens must have consecutive ids in order {tokens[0]}..{tokens[-1]}, got {ids}"
        raise CheckpointError(msg)
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        msg = "the base tokenizer needs a bos and an eos token"
        raise CheckpointError(msg)
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.bos_token
    return SpecialIds(
        mem=tuple(ids[:n_mem]),
        ae=ids[n_mem],
        enc=ids[n_mem + 1],
        sep=ids[n_mem + 2],
        bos=tokenizer.bos_token_id,
        eos=tokenizer.eos_token_id,
        pad=tokenizer.bos_token_id,
    )


def check_texts(texts: Sequence[str] | str, name: str) -> list[str]:
    """Validate a list of strings; raise InputError naming the argument and the first bad item."""
    if isinstance(texts, str):
        msg = f"{name} must be a list of strings, got a single str; wrap it in a list"
        raise InputError(msg)
    try:
        items = list(texts)
    except TypeError:
        msg = f"{name} must be a list of strings, got {type(texts).__name__}"
        raise InputError(msg) from None
    for i, text in enumerate(items):
        if not isinstance(text, str):
            msg = f"{name}[{i}] must be a str, got {type(text).__name__}: {text!r:.60}"
            raise InputError(msg)
    return items


def plain_ids(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of user texts with every special-token string treated as plain text.

    ``<MEM3>``, ``<SEP>`` or ``</s>`` typed by a user are split into ordinary pieces, so user text can never
    move a memory slot, end a document early or change the prompt (official defect 8.7).
    """
    if not texts:
        return []
    with tokenizer_lock(tokenizer):
        enc = tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)
    return enc["input_ids"]


_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def tokenizer_lock(tokenizer: PreTrainedTokenizerBase) -> threading.Lock:
    """One lock per tokenizer: transformers 4.x reconfigures the Rust tokenizer on each call, and two threads
    doing so at once fail with "Already borrowed" (seen while searching during indexing)."""
    with _locks_guard:
        lock = _locks.get(tokenizer)
        if lock is None:
            lock = _locks[tokenizer] = threading.Lock()
        return lock


def _add_additional_special_tokens(tokenizer: PreTrainedTokenizerBase, tokens: list[str]) -> None:
    """Append ``tokens`` to the additional special tokens (transformers 5 needs ``replace_extra_special_tokens``,
    4.x has no such argument and appends by default with ``replace_additional_special_tokens=False``)."""
    try:
        tokenizer.add_special_tokens({"additional_special_tokens": tokens}, replace_extra_special_tokens=False)
    except TypeError:
        tokenizer.add_special_tokens({"additional_special_tokens": tokens}, replace_additional_special_tokens=False)


# ---------------------------------------------------------------------------- formatted strings with user spans
_SENTINEL = "\ue000clara\ue000"  # a private-use marker: ends a run the way a control token does
_plain_backends: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Ids of every special token of ``tokenizer`` (bos/eos/pad, chat-template control tokens, the CLaRa tokens)."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return {i for i, tok in added.items() if tok.special} | set(tokenizer.all_special_ids)


def encode_formatted(
    tokenizer: PreTrainedTokenizerBase, strings: Sequence[str], user_spans: Sequence[Sequence[Span]]
) -> list[list[int]]:
    """Token ids of formatted strings, as ``tokenizer(s, add_special_tokens=False)`` gives them.

    The template's own special-token strings (``<s>``, ``<MEM0>``, ``<|im_start|>``...) are parsed as control
    tokens, as the official code does. Text inside ``user_spans`` never becomes a control token: when a user typed
    a special-token string, the text run around it (between the template's control tokens) is tokenized again
    with special tokens disabled, in its place in the string (same prefix-space rules).
    """
    if not strings:
        return []
    if not getattr(tokenizer, "is_fast", False):
        msg = f"{type(tokenizer).__name__} is a slow tokenizer; clara-plugins needs a fast (tokenizers) one"
        raise ConfigError(msg)
    with tokenizer_lock(tokenizer):
        enc = tokenizer(list(strings), add_special_tokens=False, return_offsets_mapping=True)
    special = special_token_ids(tokenizer)
    out = []
    for text, spans, ids, offsets in zip(strings, user_spans, enc["input_ids"], enc["offset_mapping"], strict=True):
        in_user = [i in special and _overlaps(a, b, spans) for i, (a, b) in zip(ids, offsets)]
        out.append(_replain_runs(tokenizer, text, ids, offsets, special, in_user) if any(in_user) else list(ids))
    return out


def _overlaps(start: int, end: int, spans: Sequence[Span]) -> bool:
    return any(start < e and end > s for s, e in spans)


def _replain_runs(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    ids: list[int],
    offsets: list[Span],
    special: set[int],
    in_user: list[bool],
) -> list[int]:
    """Keep the template's control tokens; re-tokenize as plain text each run between them that a user's
    special-token string split."""
    out: list[int] = []
    run: list[int] = []  # token positions of the current run
    run_start = 0
    for j, tok in enumerate([*ids, None]):
        is_control = tok is None or (tok in special and not in_user[j])
        if not is_control:
            run.append(j)
            continue
        run_end = offsets[j][0] if tok is not None else len(text)
        if any(in_user[p] for p in run):
            out += _plain_in_place(tokenizer, text[run_start:run_end], at_start=run_start == 0)
        else:
            out += [ids[p] for p in run]
        if tok is not None:
            out.append(tok)
            run_start = offsets[j][1]
        run = []
    return out


def _plain_in_place(tokenizer: PreTrainedTokenizerBase, run: str, at_start: bool) -> list[int]:
    """Ids of ``run`` with special tokens disabled, as the run tokenizes after a control token (a sentinel
    added token stands in for that control token, so prefix-space rules see the run in the same place)."""
    cached = _plain_backends.get(tokenizer)
    if cached is None or cached[0] != len(tokenizer):
        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        backend.add_tokens([AddedToken(_SENTINEL, special=False, normalized=False)])
        backend.encode_special_tokens = True
        cached = (len(tokenizer), backend, backend.token_to_id(_SENTINEL))
        _plain_backends[tokenizer] = cached
    _, backend, sentinel_id = cached
    ids = backend.encode(run if at_start else _SENTINEL + run, add_special_tokens=False).ids
    return ids if at_start else ids[1:] if ids and ids[0] == sentinel_id else ids


def document_ids(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], enc_token: str = "<ENC>") -> list[list[int]]:
    """``<ENC><s>{text}</s>`` per text, tokenized as the official encoder input is (reference section 2), the
    text itself kept plain. Each row is ``[enc, bos, *text_ids, eos]``."""
    head, tail = enc_token + tokenizer.bos_token, tokenizer.eos_token
    strings = [head + text + tail for text in texts]
    return encode_formatted(tokenizer, strings, [[(len(head), len(head) + len(text))] for text in texts])
