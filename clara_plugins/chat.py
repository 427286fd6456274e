"""Rendering CLaRa prompts with the base tokenizer's own chat template, as the official code does.

The official code renders ``apply_chat_template([system, user], tokenize=False, add_generation_prompt=True,
enable_thinking=False)`` (reference section 4); on a template that refuses a system role it folds the system text
into the user message with ``"\\n"``. For training it renders the conversation with the answer as an assistant turn
and masks the first ``len(tokens(prompt))`` tokens. Here the same strings are rendered, and the character spans of
the user's text in them (question, answer, document texts) are located, so that :func:`tokens.encode_formatted`
can tokenize the string exactly as the official code does while user text never becomes a control token.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from clara_plugins.errors import ConfigError
from clara_plugins.tokens import Span

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rendered:
    """A rendered chat string and the ``[start, end)`` character spans of the user texts inside it."""

    text: str
    user_spans: tuple[Span, ...]


def check_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    """Raise a ConfigError naming the fix when the tokenizer has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        msg = (
            f"the base tokenizer ({getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__}) has no chat "
            "template, and CLaRa prompts are rendered with it; pass chat_template='...' (a Jinja template) to "
            "ClaraModel.from_pretrained / from_base, or set model.tokenizer.chat_template"
        )
        raise ConfigError(msg)


def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    system: str,
    user_parts: Sequence[str],
    user_texts: Sequence[str],
    answer: str | None = None,
) -> Rendered:
    """Render ``[system, user(, assistant)]`` with the tokenizer's chat template.

    Args:
        tokenizer: the base tokenizer (with its chat template).
        system: the system message.
        user_parts: the template text of the user message around the user texts: ``len(user_texts) + 1`` pieces,
            the user message being ``parts[0] + texts[0] + parts[1] + ...``.
        user_texts: texts the user supplied (question, documents), never parsed as control tokens later.
        answer: with an answer, the conversation ends with it as the assistant turn (training); without, the
            template's generation prompt is added.

    Returns:
        The rendered string and the spans of ``user_texts`` (then of ``answer``) inside it.
    """
    texts = [*user_texts] + ([answer] if answer is not None else [])
    marks = _marks(len(texts))  # the same rendering with a mark in place of each user text tells where they go
    marked = _apply(tokenizer, system, user_parts, marks[: len(user_texts)], marks[-1] if answer is not None else None)
    real = _apply(tokenizer, system, user_parts, user_texts, answer)
    return Rendered(real, _locate(marked, real, texts))


def _apply(
    tokenizer: PreTrainedTokenizerBase,
    system: str,
    user_parts: Sequence[str],
    user_texts: Sequence[str],
    answer: str | None,
) -> str:
    user = "".join(p + t for p, t in itertools.zip_longest(user_parts, user_texts, fillvalue=""))
    tail = [{"role": "assistant", "content": answer}] if answer is not None else []
    if not _refuses_system(tokenizer):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}, *tail]
    else:  # as the official code does for templates without a system role
        messages = [{"role": "user", "content": f"{system}\n{user}"}, *tail]
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=answer is None, enable_thinking=False
    )


def _refuses_system(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the chat template raises on a system message (checked once per template)."""
    check_chat_template(tokenizer)
    template = tokenizer.chat_template
    cached = getattr(tokenizer, "_clara_refuses_system", None)
    if cached is not None and cached[0] == template:
        return cached[1]
    try:
        tokenizer.apply_chat_template(
            [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,
        )
        refuses = False
    except Exception as err:  # jinja2's TemplateError from raise_exception(), whatever the template says
        logger.info("the chat template refuses a system message (%s); it is folded into the user turn", err)
        refuses = True
    tokenizer._clara_refuses_system = (template, refuses)
    return refuses


def _locate(marked: str, real: str, texts: Sequence[str]) -> tuple[Span, ...]:
    """Spans of ``texts`` in ``real``, from ``marked`` (the same rendering with a mark in place of each text).

    Templates may strip a message's whitespace (Llama 3's ``| trim``); any other change to user text is refused.
    """
    between, spans, pos = _split_marks(marked, len(texts)), [], 0
    for i, text in enumerate(texts):
        if not real.startswith(between[i], pos):
            break
        pos += len(between[i])
        found = next((v for v in _whitespace_variants(text) if real.startswith(v + between[i + 1], pos)), None)
        if found is None:
            break
        spans.append((pos, pos + len(found)))
        pos += len(found)
    if len(spans) == len(texts) and real[pos:] == between[-1]:
        return tuple(spans)
    msg = (
        "the chat template changes the text of the messages (beyond stripping whitespace), so the user's text "
        "cannot be kept apart from the template's; use a template that inserts message content as it is"
    )
    raise ConfigError(msg)


def _marks(n: int) -> list[str]:
    """``n`` distinct private-use characters standing in for user texts."""
    return [chr(0xE001 + i) for i in range(n)]


def _split_marks(marked: str, n: int) -> list[str]:
    """The template text between the marks: ``n + 1`` pieces."""
    out, rest = [], marked
    for mark in _marks(n):
        if rest.count(mark) != 1:
            msg = "the chat template must render each message's content exactly once"
            raise ConfigError(msg)
        head, rest = rest.split(mark)
        out.append(head)
    return [*out, rest]


def _whitespace_variants(text: str) -> list[str]:
    return list(dict.fromkeys([text, text.strip(), text.rstrip(), text.lstrip()]))
