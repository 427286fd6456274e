"""The exact prompts of the reference (section 4) and their token ids with memory slots.

A prompt is ``<s>[INST] {system}\\n\\n{user} [/INST]`` (the Mistral chat template with the system message folded
into the user turn). ``{user}`` holds ``{slots}``: one ``<MEM0>..<MEM{n-1}><SEP>`` group per document, whose memory
positions the generator overwrites with that document's vectors. Prompts are built from token ids, never by
tokenizing one formatted string, so nothing a user types can become a control token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from clara_plugins.errors import InputError
from clara_plugins.tokens import SpecialIds, plain_ids


@dataclass(frozen=True)
class PromptTemplate:
    """One task's system message and user message; the user message contains ``{slots}`` once."""

    system: str
    user: str

    def __post_init__(self) -> None:
        if self.user.count("{slots}") != 1:
            msg = f"PromptTemplate.user must contain '{{slots}}' exactly once, got {self.user!r}"
            raise InputError(msg)


ANSWER = PromptTemplate(
    system=(
        "You are a helpful assistant. Your task is to extract relevant information from provided documents "
        "and to answer to questions as briefly as possible."
    ),
    user="Background:\n{slots}\n\nQuestion:{question}",
)
QA = PromptTemplate(
    system=(
        "You are a helpful assistant. Given a document, your task is to generate some single questions to cover "
        "all key information of the document and answer them sequentially."
    ),
    user="Background:\n{slots}",
)
PARAPHRASE = PromptTemplate(
    system=(
        "You are a helpful assistant. Your task is follow the instructions to paraphrase the background information."
    ),
    user="Background: {slots} means the same as",
)
TEMPLATES = {"answer": ANSWER, "qa": QA, "paraphrase": PARAPHRASE}


def template_for(task: str) -> PromptTemplate:
    try:
        return TEMPLATES[task]
    except KeyError:
        msg = f"task must be one of {sorted(TEMPLATES)}, got {task!r}"
        raise InputError(msg) from None


def qa_target(questions: Sequence[str], answers: Sequence[str]) -> str:
    """The stage-1 QA target: ``Question: {q}\\nAnswer: {a}`` pairs joined by newlines."""
    return "\n".join(f"Question: {q}\nAnswer: {a}" for q, a in zip(questions, answers, strict=True))


def slot_ids(ids: SpecialIds, n_docs: int) -> list[int]:
    """``<MEM0>..<MEM{n-1}><SEP>`` once per document, concatenated with no separator."""
    return [*ids.mem, ids.sep] * n_docs


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase,
    ids: SpecialIds,
    template: PromptTemplate,
    questions: Sequence[str],
    n_docs: Sequence[int],
) -> list[list[int]]:
    """Token ids of one prompt per question, with ``n_docs[i]`` memory slots for question ``i``.

    The text before the slots and the text after them are each tokenized as one run (as the tokenizer splits a
    formatted string at special tokens), with special-token strings in the question kept as plain text.
    """
    before, after = template.user.split("{slots}")
    head = f"[INST] {template.system}\n\n{before}"
    tails = [f"{after} [/INST]".replace("{question}", q) for q in questions]
    head_ids = plain_ids(tokenizer, [head])[0] if head.strip() else []
    tail_ids = plain_ids(tokenizer, tails)
    return [[ids.bos, *head_ids, *slot_ids(ids, k), *tail] for k, tail in zip(n_docs, tail_ids, strict=True)]
