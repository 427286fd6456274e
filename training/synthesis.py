"""Training data from a user's own corpus: stage-1 rows written by an LLM, and stage-3 candidate lists.

``synthesize_stage1`` works with any LangChain LLM or chat model (``.invoke``), any LlamaIndex LLM (``.complete``),
or a plain ``str -> str`` callable; nothing from those libraries is imported here.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from clara_plugins.errors import InputError
from clara_plugins.training.bm25 import BM25Retriever
from clara_plugins.training.data import QARow, Stage1Row

if TYPE_CHECKING:
    from clara_plugins.model import ClaraModel

logger = logging.getLogger(__name__)

QA_PROMPT = (
    "Read the document and write {n} short questions that together cover its key facts, each followed by its "
    "answer taken from the document. Use exactly this format, one pair after another:\n"
    "Question: <question>\nAnswer: <short answer>\n\nDocument:\n{document}\n"
)
PARAPHRASE_PROMPT = "Paraphrase the following document, keeping every fact and changing the wording:\n\n{document}\n"
_PAIR = re.compile(r"Question:[ \t]*(?P<q>[^\n]+?)[ \t]*\n[ \t]*Answer:[ \t]*(?P<a>[^\n]+)")


def call_llm(llm: Any, prompt: str) -> str:
    """The text an LLM returns for ``prompt``: LlamaIndex ``complete``, LangChain ``invoke``, or a callable."""
    if hasattr(llm, "complete") and not hasattr(llm, "invoke"):  # LlamaIndex LLM
        return str(llm.complete(prompt).text)
    if hasattr(llm, "invoke"):  # LangChain LLM (str) or chat model (message with .content)
        out = llm.invoke(prompt)
        content = getattr(out, "content", out)
        return content if isinstance(content, str) else str(content)
    if callable(llm):
        return str(llm(prompt))
    msg = f"llm must be a LangChain or LlamaIndex LLM or a callable str -> str, got {type(llm).__name__}"
    raise InputError(msg)


def parse_qa_pairs(text: str) -> list[tuple[str, str]]:
    """``(question, answer)`` pairs from ``Question: ...\\nAnswer: ...`` lines (one line each); the rest is ignored."""
    return [(m["q"].strip(), m["a"].strip()) for m in _PAIR.finditer(text) if m["q"].strip() and m["a"].strip()]


def synthesize_stage1(
    documents: Sequence[str],
    llm: Any,
    n_questions: int = 5,
    paraphrase: bool = True,
    progress: bool = True,
) -> list[Stage1Row]:
    """Stage-1 rows for each document: a QA row (questions and answers by the LLM) and optionally a paraphrase row.

    Args:
        documents: the user's documents (chunk long ones first, e.g. with ``ClaraModel.chunk``).
        llm: a LangChain LLM / chat model, a LlamaIndex LLM, or a callable ``str -> str``.
        n_questions: questions asked for per document.
        paraphrase: also ask for a paraphrase of each document.
        progress: show a progress bar.

    Returns:
        The rows, in document order; a document whose LLM output has no parsable pair gets no QA row (logged).
    """
    if n_questions < 1:
        msg = f"n_questions must be >= 1, got {n_questions}"
        raise InputError(msg)
    rows: list[Stage1Row] = []
    for i, doc in enumerate(tqdm(documents, desc="synthesize", disable=not progress)):
        pairs = parse_qa_pairs(call_llm(llm, QA_PROMPT.format(n=n_questions, document=doc)))[:n_questions]
        if pairs:
            rows.append(Stage1Row("qa", [q for q, _ in pairs], [a for _, a in pairs], [doc]))
        else:
            logger.warning("document %d: the LLM output had no 'Question: ... Answer: ...' pair; skipped", i)
        if paraphrase:
            text = call_llm(llm, PARAPHRASE_PROMPT.format(document=doc)).strip()
            if text:
                rows.append(Stage1Row("paraphrase", [], [text], [doc]))
    return rows


def mine_candidates(
    questions: Sequence[str],
    corpus: Sequence[str],
    n: int,
    gold: Sequence[Sequence[int]] | None = None,
    model: ClaraModel | None = None,
    seed: int = 0,
) -> list[list[int]]:
    """Candidate lists (corpus positions) for stage 3: the top ``n`` by BM25, or by ``model``'s query reasoner.

    Args:
        questions: the questions.
        corpus: all documents.
        n: candidates per question.
        gold: per question the positions of its source documents; when given they are always included (replacing
            the lowest-ranked others) and each list is shuffled, so position carries no hint.
        model: rank with this CLaRa model (compressor vs query reasoner) instead of BM25.
        seed: seeds the shuffle.
    """
    if n < 1 or n > len(corpus):
        msg = f"n must be between 1 and the corpus size {len(corpus)}, got {n}"
        raise InputError(msg)
    ranked = _model_topn(model, questions, corpus, n) if model is not None else _bm25_topn(questions, corpus, n)
    rng = random.Random(seed)
    out = []
    for i, top in enumerate(ranked):
        if gold is not None:
            must = list(dict.fromkeys(gold[i]))[:n]
            top = must + [d for d in top if d not in must][: n - len(must)]
            rng.shuffle(top)
        out.append(top)
    return out


def _bm25_topn(questions: Sequence[str], corpus: Sequence[str], n: int) -> list[list[int]]:
    bm25 = BM25Retriever(corpus)
    return [bm25.search(q, n) for q in questions]


def _model_topn(model: ClaraModel, questions: Sequence[str], corpus: Sequence[str], n: int) -> list[list[int]]:
    from clara_plugins.training.evaluate import encode_texts

    memory = encode_texts(model, corpus, "compressor").flatten(1)
    queries = encode_texts(model, questions, "query_reasoner").flatten(1)
    _, top = model.rank(queries, memory, k=n)
    return top.tolist()


def stage3_rows(
    questions: Sequence[str],
    answers: Sequence[Sequence[str]],
    corpus: Sequence[str],
    n: int,
    gold: Sequence[Sequence[int]] | None = None,
    model: ClaraModel | None = None,
    seed: int = 0,
) -> list[QARow]:
    """Stage-3 rows: each question with ``n`` mined candidates; ``pos_index`` marks ``gold`` (for recall only)."""
    lists = mine_candidates(questions, corpus, n, gold=gold, model=model, seed=seed)
    rows = []
    for i, (q, cand) in enumerate(zip(questions, lists)):
        pos = [j for j, d in enumerate(cand) if gold is not None and d in set(gold[i])]
        rows.append(QARow(q, [corpus[d] for d in cand], list(answers[i]), pos))
    return rows
