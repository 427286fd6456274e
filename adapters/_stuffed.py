"""Understanding "stuffed" prompts: the frameworks' standard RAG templates, with the context pasted in as text.

A CLaRa generator reads memories, not text, so a prompt that pastes the retrieved documents into a template has
to be taken apart again: which part is the question, and which stored chunks the context consists of.

1. Templates. A message (or a LlamaIndex prompt string) that fills one of the known templates (``TEMPLATES``:
   LangChain hub ``rlm/rag-prompt``, the system prompt of LangChain's RAG tutorial for ``create_retrieval_chain``,
   ``RetrievalQA``'s stuff prompts, LlamaIndex's text QA prompts and the context prompt of
   ``CondensePlusContextChatEngine``; more with
   :func:`add_prompt_template`) gives its ``{context}`` slot and, when the template has one, its ``{question}``
   slot. The question slot is the question exactly, never truncated.
2. Context. Both frameworks join the documents with a blank line (LlamaIndex puts a ``key: value`` metadata header
   before each node's text). :func:`split_context` cuts the context at blank lines and finds the runs of pieces
   that are exactly a stored chunk's text (content hash, one store lookup), or the same up to whitespace
   (full-text lookup): those reuse the stored chunk (its id, memory and provenance). Every remaining piece is a
   document of its own, compressed on the fly.

Framework-free: the LangChain chat model and the LlamaIndex LLM both call it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from clara_plugins.adapters._common import ID_KEY
from clara_plugins.errors import ClaraError, InputError


class PromptError(ClaraError):
    """A prompt the CLaRa generator cannot read as a question plus documents; the message names the supported way.

    Deliberately not a ``ValueError``: LlamaIndex's refine step catches ``ValueError`` and would carry on with a
    partial answer.
    """


SUPPORTED_WAY = (
    "pass the documents themselves: LangChain `ClaraContextPacker() | chat` (or `context_message(question, docs)`), "
    "LlamaIndex `rag.as_llama_index_query_engine()` / `ClaraSynthesizer` / `llm.complete(question, nodes=nodes)`; "
    "or register your template with clara_plugins.adapters.add_prompt_template (see docs/integrations.md)"
)

# The frameworks' standard RAG templates, with their placeholders renamed to {context} and {question}.
RAG_PROMPT_HUB = (  # LangChain hub "rlm/rag-prompt" (one human message)
    "You are an assistant for question-answering tasks. Use the following pieces of retrieved context to answer "
    "the question. If you don't know the answer, just say that you don't know. Use three sentences maximum and keep "
    "the answer concise.\nQuestion: {question} \nContext: {context} \nAnswer:"
)
RAG_TUTORIAL_SYSTEM = (  # LangChain RAG tutorial: system prompt for create_retrieval_chain
    "You are an assistant for question-answering tasks. Use the following pieces of retrieved context to answer "
    "the question. If you don't know the answer, say that you don't know. Use three sentences maximum and keep the "
    "answer concise.\n\n{context}"
)
RETRIEVAL_QA = (  # langchain_classic RetrievalQA / load_qa_chain "stuff" prompt (completion models)
    "Use the following pieces of context to answer the question at the end. If you don't know the answer, just say "
    "that you don't know, don't try to make up an answer.\n\n{context}\n\nQuestion: {question}\nHelpful Answer:"
)
RETRIEVAL_QA_CHAT_SYSTEM = (  # the same chains' system prompt for chat models (the question is the human message)
    "Use the following pieces of context to answer the user's question.\nIf you don't know the answer, just say "
    "that you don't know, don't try to make up an answer.\n----------------\n{context}"
)
LLAMA_TEXT_QA = (  # LlamaIndex DEFAULT_TEXT_QA_PROMPT_TMPL (also the user message of CHAT_TEXT_QA_PROMPT)
    "Context information is below.\n---------------------\n{context}\n---------------------\nGiven the context "
    "information and not prior knowledge, answer the query.\nQuery: {question}\nAnswer: "
)
LLAMA_CHAT_CONTEXT = (  # LlamaIndex CondensePlusContextChatEngine DEFAULT_CONTEXT_PROMPT_TEMPLATE (system message)
    "\n  The following is a friendly conversation between a user and an AI assistant.\n  The assistant is talkative "
    "and provides lots of specific details from its context.\n  If the assistant does not know the answer to a "
    "question, it truthfully says it\n  does not know.\n\n  Here are the relevant documents for the context:\n\n"
    "  {context}\n\n  Instruction: Based on the above documents, provide a detailed answer for the user question "
    'below.\n  Answer "don\'t know" if not present in the document.\n  '
)
TEMPLATES: list[str] = [
    RAG_PROMPT_HUB,
    RAG_TUTORIAL_SYSTEM,
    RETRIEVAL_QA,
    RETRIEVAL_QA_CHAT_SYSTEM,
    LLAMA_TEXT_QA,
    LLAMA_CHAT_CONTEXT,
]

# LlamaIndex's instruction-only system prompt sent with CHAT_TEXT_QA_PROMPT: no documents, nothing to read
INSTRUCTIONS: list[str] = [
    "You are an expert Q&A system that is trusted around the world.\nAlways answer the query using the provided "
    "context information, and not prior knowledge.\nSome rules to follow:\n1. Never directly reference the given "
    "context in your answer.\n2. Avoid statements like 'Based on the context, ...' or 'The context information "
    "...' or anything along those lines.",
]

# Templates recognised in order to refuse them with the way out: what CLaRa's generator cannot do.
REFUSED: list[tuple[str, str]] = [
    (  # LlamaIndex CondensePlusContextChatEngine DEFAULT_CONDENSE_PROMPT_TEMPLATE (chat history + follow-up)
        "Given the following conversation between a user and an AI assistant and a follow up question from user, "
        "rephrase the follow up question to be a standalone question. Chat History: {context} Follow Up Input: "
        "{question} Standalone question:",
        "ClaraLLM cannot rewrite a follow-up question (the condense step of CondensePlusContextChatEngine / "
        "index.as_chat_engine): pass skip_condense=True, or use rag.as_llama_index_chat_engine()",
    ),
]

_MAX_RUN = 8  # blank-line pieces one stored chunk may span
_HEADER_LINE = re.compile(r"[^\s:][^:\n]{0,80}: [^\n]*")  # LlamaIndex's "{key}: {value}" metadata line


@dataclass
class Stuffed:
    """A prompt taken apart: the context text and the question (None when the template has no question slot)."""

    context: str
    question: str | None


def add_prompt_template(template: str) -> None:
    """Teach the generators one more stuffed-prompt template (checked before the built-in ones).

    Args:
        template: the template text with ``{context}`` once and optionally ``{question}`` once (LlamaIndex's
            ``{context_str}`` / ``{query_str}`` are accepted too). Without ``{question}``, the question is the last
            human / user message.
    """
    text = template.replace("{context_str}", "{context}").replace("{query_str}", "{question}")
    if text.count("{context}") != 1 or text.count("{question}") > 1:
        msg = f"template must hold {{context}} once and {{question}} at most once, got {template!r:.120}"
        raise InputError(msg)
    TEMPLATES.insert(0, text)


def _pattern(template: str) -> re.Pattern[str]:
    """A regex for a filled template: literal words with any whitespace between them, placeholders as groups."""
    out = []
    for part in re.split(r"(\{context\}|\{question\})", template):
        if part == "{context}":
            out.append(r"(?P<context>.*)")
        elif part == "{question}":
            out.append(r"(?P<question>.*?)")
        elif part.split():
            out.append(r"\s*" + r"\s+".join(re.escape(word) for word in part.split()) + r"\s*")
    return re.compile("".join(out), re.DOTALL)


_cache: dict[tuple[str, ...], list[re.Pattern[str]]] = {}


def _patterns() -> list[re.Pattern[str]]:
    key = tuple(TEMPLATES)
    if key not in _cache:
        _cache.clear()
        _cache[key] = [_pattern(t) for t in TEMPLATES]
    return _cache[key]


def parse(text: str) -> Stuffed | None:
    """The context and question of ``text`` if it fills a known template, else None."""
    for pattern in _patterns():
        found = pattern.fullmatch(text.strip())
        if found:
            question = found.groupdict().get("question")
            return Stuffed(found["context"].strip(), question.strip() if question is not None else None)
    return None


def is_instruction(text: str) -> bool:
    """True for a framework's instruction-only system prompt (it carries no documents)."""
    return " ".join(text.split()) in {" ".join(t.split()) for t in INSTRUCTIONS}


def split_context(rag: Any, context: str, headers: bool = False) -> list[tuple[str, dict | None]]:
    """The documents of a pasted context, as ``(text, metadata)`` for ``references``.

    Runs of blank-line separated pieces that are exactly a stored chunk (optionally after a ``key: value`` header
    when ``headers``) come back with that chunk's id (``clara_id``): its stored memory is read. The other pieces
    are documents of their own (compressed on the fly); with ``headers``, a header piece followed by a loose piece
    is that piece's metadata and is dropped.
    """
    pieces = [p for p in re.split(r"\n[ \t]*\n", context) if p.strip()]
    spans = _candidate_spans(pieces, headers)
    by_hash: dict[str, list[tuple[int, int, int]]] = {}
    for key, text in spans.items():
        for variant in _variants(text):
            by_hash.setdefault(_hash(variant), []).append(key)
    stored = rag.store.records_by_hash(list(by_hash)) if by_hash else {}
    found = {key: stored[h] for h in stored for key in by_hash[h]}
    steps = _recover_loose(rag, pieces, _cover(len(pieces), found), found)
    items: list[tuple[str, dict | None]] = []
    for n, (key, i) in enumerate(steps):
        if key is not None:
            items.append((found[key].text, {ID_KEY: found[key].id}))
        elif not (headers and _is_header(pieces[i]) and n + 1 < len(steps) and steps[n + 1][0] is None):
            items.append((pieces[i].strip(), None))
    return items


def _recover_loose(rag: Any, pieces: Sequence[str], steps: list, found: dict) -> list:
    """Loose pieces that are a stored chunk up to whitespace (a template or a repacking changed the whitespace at
    its ends, e.g. stripped a trailing ``"  "`` or blank line): found with a full-text lookup of the piece, then
    compared with whitespace collapsed, over one or more consecutive loose pieces."""
    out, n = [], 0
    while n < len(steps):
        key, i = steps[n]
        match = None if key is not None else _whitespace_match(rag, pieces, steps, n)
        if match is None:
            out.append(steps[n])
            n += 1
            continue
        hit, taken = match
        span = (i, i + taken, 0)
        found[span] = hit
        out.append((span, i))
        n += taken
    return out


def _whitespace_match(rag: Any, pieces: Sequence[str], steps: list, n: int) -> tuple[Any, int] | None:
    """``(stored chunk, loose pieces it covers)`` for the loose run starting at step ``n``, else None."""
    run = 0
    while n + run < len(steps) and steps[n + run][0] is None and run < _MAX_RUN:
        run += 1
    core = pieces[steps[n][1]].strip()
    candidates = {" ".join(h.text.split()): h for h in rag.store.records_containing(core)} if core else {}
    start = steps[n][1]
    for taken in range(run, 0, -1):  # the longest run of loose pieces that one stored chunk holds
        hit = candidates.get(" ".join(" ".join(pieces[start : start + taken]).split()))
        if hit is not None:
            return hit, taken
    return None


def _variants(text: str) -> set[str]:
    """The texts a pasted chunk may have had: templates and LlamaIndex's repacking strip the whitespace at its ends."""
    core = text.strip()
    return {v for v in (text, core, core + " ", " " + core, core + "\n", "\n" + core) if v.strip()}


def _hash(text: str) -> str:
    from clara_plugins.rag import text_hash

    return text_hash(text)


def _is_header(piece: str) -> bool:
    return all(_HEADER_LINE.fullmatch(line.strip()) for line in piece.strip().splitlines())


def _candidate_spans(pieces: Sequence[str], headers: bool) -> dict[tuple[int, int, int], str]:
    """Texts that could be one stored chunk: ``(first piece, end, header pieces skipped) -> text``."""
    spans = {}
    for i in range(len(pieces)):
        skip = 1 if headers and _is_header(pieces[i]) else 0
        for j in range(i + 1, min(len(pieces), i + _MAX_RUN) + 1):
            for s in {0, skip}:
                if i + s < j:
                    spans[(i, j, s)] = "\n\n".join(pieces[i + s : j])
    return spans


def _cover(n: int, found: dict[tuple[int, int, int], Any]) -> list[tuple[tuple[int, int, int] | None, int]]:
    """Segment pieces ``0..n`` into stored chunks and loose pieces, leaving as few pieces loose as possible.

    Returns the steps in order: ``(span key in found, first piece)`` for a stored chunk, ``(None, i)`` for a loose
    piece ``i``.
    """
    best: list[tuple[int, int]] = [(0, 0)] * (n + 1)  # (loose pieces, segments) covering pieces [0, j)
    step: list[tuple[tuple[int, int, int] | None, int]] = [(None, 0)] * (n + 1)
    by_end: dict[int, list[tuple[int, int, int]]] = {}
    for key in found:
        by_end.setdefault(key[1], []).append(key)
    for j in range(1, n + 1):
        best[j], step[j] = (best[j - 1][0] + 1, best[j - 1][1] + 1), (None, j - 1)
        for key in by_end.get(j, []):
            cost = (best[key[0]][0], best[key[0]][1] + 1)
            if cost < best[j]:
                best[j], step[j] = cost, (key, key[0])
    out, j = [], n
    while j > 0:
        out.append(step[j])
        j = step[j][1]
    return out[::-1]


def check_question(rag: Any, question: str) -> str:
    """Refuse a "question" that is really a prompt with pasted context, instead of truncating or searching with it.

    Raises:
        PromptError: the text is longer than the query reasoner reads (``doc_max_length`` tokens), or some of its
            blank-line / line pieces are stored chunks (context pasted into a template the generators do not know).
    """
    for template, reason in REFUSED:
        if _pattern(template).fullmatch(question.strip()):
            raise PromptError(reason)
    model = rag.model
    n_tokens = len(model.tokenizer(question, add_special_tokens=False)["input_ids"])
    limit = int(model.config.doc_max_length)
    if n_tokens > limit:
        msg = (
            f"the question has {n_tokens} tokens, more than the query reasoner reads ({limit}); it looks like a "
            f"prompt with the context pasted in, in a template CLaRa does not know. Instead, {SUPPORTED_WAY}"
        )
        raise PromptError(msg)
    pieces = {p.strip() for p in re.split(r"\n", question) if p.strip()}
    if len(pieces) > 1 and rag.store.records_by_hash([_hash(p) for p in pieces]):
        msg = f"the question pastes stored chunks into a template CLaRa does not know. Instead, {SUPPORTED_WAY}"
        raise PromptError(msg)
    return question
