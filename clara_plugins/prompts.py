"""The exact prompts of the reference (section 4) and their token ids with memory slots.

The system and user messages are rendered with the base tokenizer's own chat template (:mod:`clara_plugins.chat`);
with Mistral-7B-Instruct-v0.2's template that is ``<s> [INST] {system}\\n\\n{user} [/INST]``. ``{user}`` holds
``{slots}``: one ``<MEM0>..<MEM{n-1}><SEP>`` group per document, whose memory positions the generator overwrites with
that document's vectors. The rendered string is tokenized as the official code tokenizes it, except that nothing the
user typed can become a control token (:func:`clara_plugins.tokens.encode_formatted`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from clara_plugins.chat import render_chat
from clara_plugins.errors import ConfigError, InputError
from clara_plugins.tokens import SpecialIds, encode_formatted


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


def slot_text(n_mem: int, n_docs: int) -> str:
    """``<MEM0>..<MEM{n-1}><SEP>`` once per document, concatenated with no separator (parsed as control tokens)."""
    return ("".join(f"<MEM{i}>" for i in range(n_mem)) + "<SEP>") * n_docs


def user_message(
    template: PromptTemplate, question: str, slots: str = "", docs: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """The user message as ``(parts, texts)``: the template's text around the user's texts.

    The message is ``parts[0] + texts[0] + parts[1] + ...``. ``{slots}`` becomes ``slots`` (memory slots, part of
    the template), or with ``docs`` the documents' text joined by newlines (user texts: the text-RAG baseline);
    ``{question}`` becomes ``question``.
    """
    parts, texts = [""], []
    for piece in re.split(r"(\{slots\}|\{question\})", template.user):
        if piece == "{question}" or (piece == "{slots}" and docs is not None):
            for j, text in enumerate([question] if piece == "{question}" else docs):
                parts[-1] += "\n" if j else ""
                texts.append(text)
                parts.append("")
        else:
            parts[-1] += slots if piece == "{slots}" else piece
    return parts, texts


def conversation_ids(
    tokenizer: PreTrainedTokenizerBase,
    system: str,
    users: Sequence[tuple[list[str], list[str]]],
    answers: Sequence[str] | None = None,
) -> tuple[list[list[int]], list[int]]:
    """Token ids of ``[system, user]`` conversations rendered with the tokenizer's chat template.

    Returns ``(rows, prompt_lengths)``. Without answers each row is the prompt with the template's generation
    prompt. With answers each row is the whole conversation, the answer rendered as the template renders an
    assistant turn (``" {answer}</s>"`` for Mistral), and its first ``prompt_lengths[i]`` tokens are the prompt
    (the training labels mask them), as the official code computes them.
    """
    prompts = [render_chat(tokenizer, system, parts, texts) for parts, texts in users]
    prompt_rows = encode_formatted(tokenizer, [r.text for r in prompts], [r.user_spans for r in prompts])
    if answers is None:
        return prompt_rows, [len(r) for r in prompt_rows]
    full = [render_chat(tokenizer, system, p, t, answer=a) for (p, t), a in zip(users, answers, strict=True)]
    rows = encode_formatted(tokenizer, [r.text for r in full], [r.user_spans for r in full])
    return rows, [len(r) for r in prompt_rows]


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase,
    ids: SpecialIds,
    template: PromptTemplate,
    questions: Sequence[str],
    n_docs: Sequence[int],
    answers: Sequence[str] | None = None,
) -> tuple[list[list[int]], list[int]]:
    """CLaRa prompts (reference section 4) with ``n_docs[i]`` memory slots for question ``i``; see
    :func:`conversation_ids` for what is returned."""
    n_mem = len(ids.mem)
    users = [user_message(template, q, slot_text(n_mem, k)) for q, k in zip(questions, n_docs, strict=True)]
    rows, prompt_lengths = conversation_ids(tokenizer, template.system, users, answers)
    for row, k in zip(rows, n_docs):
        if sum(1 for t in row if ids.mem[0] <= t <= ids.mem[-1]) != k * n_mem:
            msg = f"the rendered prompt does not hold its {k} x {n_mem} memory slots; check the chat template"
            raise ConfigError(msg)
    return rows, prompt_lengths
