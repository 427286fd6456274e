"""The CLaRa special tokens, and tokenization of user text that can never produce a control token."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from clara_plugins.errors import CheckpointError, InputError


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
        tokenizer.add_special_tokens({"additional_special_tokens": tokens}, replace_extra_special_tokens=False)
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
    enc = tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)
    return enc["input_ids"]
