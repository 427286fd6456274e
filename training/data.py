"""Training and evaluation data: the official stage 1 / 2 / 3 JSONL rows and the BEIR layout.

Every reader names the file and the line of a row it cannot use (``data.jsonl:17: ...``), so a bad row in a
million-line file is found at once. Formats (``docs/clara-reference.md`` section 6):

- stage 1: ``{"data_type": "qa"|"paraphrase", "question": [...], "answers": [...], "docs": [doc]}``
- stage 2: ``{"question": str, "docs": [k docs], "answer": str}`` (``"answers": [aliases]`` is accepted too)
- stage 3: stage 2 plus ``"pos_index": [gold positions]`` (optional, only used to measure recall)
- BEIR: ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``), ``qrels/{split}.tsv``
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clara_plugins.corpus import read_jsonl  # one JSON-lines reader with file:line errors, shared with clara index
from clara_plugins.errors import InputError


@dataclass(frozen=True)
class Stage1Row:
    """One stage-1 (salient compressor pretraining) example: a document and its QA pairs or paraphrase.

    Attributes:
        data_type: ``"qa"`` (target: ``Question: q\\nAnswer: a`` pairs) or ``"paraphrase"``.
        questions: the questions (empty for a paraphrase row).
        answers: one answer per question, or the paraphrase text(s) for a paraphrase row.
        docs: the documents the target is about (usually one).
    """

    data_type: str
    questions: list[str]
    answers: list[str]
    docs: list[str]


@dataclass(frozen=True)
class QARow:
    """One stage-2 / stage-3 example: a question, candidate documents, and its gold answer(s).

    Attributes:
        question: the question.
        docs: candidate documents (k for stage 2, N for stage 3; may differ per row).
        answers: gold answer first, then aliases; training targets use ``answers[0]``, metrics use all.
        pos_index: positions in ``docs`` of the gold documents, when known (recall only, never a training label
            in stage 3).
    """

    question: str
    docs: list[str]
    answers: list[str]
    pos_index: list[int] = field(default_factory=list)

    @property
    def answer(self) -> str:
        """The training target: the first gold answer."""
        return self.answers[0]


@dataclass
class BeirData:
    """A retrieval data set in BEIR layout.

    Attributes:
        corpus: document id -> text (``title`` and ``text`` joined by a newline when the title is not empty).
        queries: query id -> text.
        qrels: query id -> {document id -> graded relevance (> 0)}, only queries of the chosen split.
    """

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def _str_list(obj: dict[str, Any], key: str, where: str, *, allow_str: bool = False) -> list[str]:
    value = obj.get(key)
    if allow_str and isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        msg = f"{where}: field {key!r} must be a list of strings, got {value!r:.80}"
        raise InputError(msg)
    return value


def _nonempty_str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        msg = f"{where}: field {key!r} must be a non-empty string, got {value!r:.80}"
        raise InputError(msg)
    return value


def parse_stage1(obj: dict[str, Any], where: str) -> Stage1Row:
    """Check one stage-1 object; ``where`` (``file:line``) prefixes every error."""
    data_type = obj.get("data_type", "qa")
    if data_type not in ("qa", "paraphrase"):
        msg = f"{where}: field 'data_type' must be 'qa' or 'paraphrase', got {data_type!r}"
        raise InputError(msg)
    docs = _str_list(obj, "docs", where, allow_str=True)
    if not docs:
        msg = f"{where}: field 'docs' is empty"
        raise InputError(msg)
    answers = _str_list(obj, "answers", where, allow_str=True) if "answers" in obj else []
    if data_type == "paraphrase":
        return Stage1Row("paraphrase", [], answers or list(docs), docs)
    questions = _str_list(obj, "question", where, allow_str=True)
    if not questions or len(questions) != len(answers):
        counts = f"{len(questions)} questions, {len(answers)} answers"
        msg = f"{where}: a qa row needs as many answers as questions (at least one), got {counts}"
        raise InputError(msg)
    return Stage1Row("qa", questions, answers, docs)


def parse_qa_row(obj: dict[str, Any], where: str) -> QARow:
    """Check one stage-2 / stage-3 object (``answer`` or ``answers``, optional ``pos_index``)."""
    question = _nonempty_str(obj, "question", where)
    docs = _str_list(obj, "docs", where)
    if not docs:
        msg = f"{where}: field 'docs' is empty"
        raise InputError(msg)
    if "answers" in obj:
        answers = _str_list(obj, "answers", where, allow_str=True)
    else:
        answers = [_nonempty_str(obj, "answer", where)]
    if not answers:
        msg = f"{where}: field 'answers' is empty"
        raise InputError(msg)
    pos = obj.get("pos_index", [])
    pos = [pos] if isinstance(pos, int) and not isinstance(pos, bool) else pos
    if not isinstance(pos, list) or not all(isinstance(p, int) and 0 <= p < len(docs) for p in pos):
        msg = f"{where}: field 'pos_index' must list positions in docs (0..{len(docs) - 1}), got {pos!r:.80}"
        raise InputError(msg)
    return QARow(question, docs, answers, pos)


def load_stage1(path: str | Path) -> list[Stage1Row]:
    """Read an official stage-1 JSONL file (for example ``pretrain_data.jsonl``)."""
    return [parse_stage1(obj, where) for where, obj in read_jsonl(path)]


def load_stage2(path: str | Path) -> list[QARow]:
    """Read a stage-2 JSONL file (question, k documents, answer)."""
    return [parse_qa_row(obj, where) for where, obj in read_jsonl(path)]


def load_stage3(path: str | Path) -> list[QARow]:
    """Read a stage-3 JSONL file (question, N candidate documents, answer, optional ``pos_index``)."""
    return load_stage2(path)


def write_jsonl(path: str | Path, rows: list[Any]) -> None:
    """Write rows (dataclasses of this module or dicts) in the official JSONL formats."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row_to_dict(row), ensure_ascii=False) + "\n")


def row_to_dict(row: Any) -> dict[str, Any]:
    """The official JSONL object of a row."""
    if isinstance(row, Stage1Row):
        return {"data_type": row.data_type, "question": row.questions, "answers": row.answers, "docs": row.docs}
    if isinstance(row, QARow):
        obj: dict[str, Any] = {"question": row.question, "docs": row.docs, "answer": row.answer}
        if len(row.answers) > 1:
            obj["answers"] = row.answers
        if row.pos_index:
            obj["pos_index"] = row.pos_index
        return obj
    if isinstance(row, dict):
        return row
    msg = f"row must be a Stage1Row, QARow or dict, got {type(row).__name__}"
    raise InputError(msg)


def load_beir(folder: str | Path, split: str = "test") -> BeirData:
    """Read a BEIR folder: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/{split}.tsv``.

    Only queries that have judgements in the split are kept. A qrels row naming an unknown query or document is an
    error with file and line.
    """
    folder = Path(folder)
    corpus = {}
    for where, obj in read_jsonl(folder / "corpus.jsonl"):
        doc_id = _id_of(obj, where)
        title = obj.get("title") or ""
        corpus[doc_id] = f"{title}\n{_nonempty_str(obj, 'text', where)}" if title else _nonempty_str(obj, "text", where)
    queries = {
        _id_of(obj, where): _nonempty_str(obj, "text", where) for where, obj in read_jsonl(folder / "queries.jsonl")
    }
    qrels = _read_qrels(folder / "qrels" / f"{split}.tsv", corpus, queries)
    return BeirData(corpus, {qid: queries[qid] for qid in qrels}, qrels)


def _id_of(obj: dict[str, Any], where: str) -> str:
    value = obj.get("_id")
    if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value) == "":
        msg = f"{where}: field '_id' must be a non-empty string, got {value!r:.80}"
        raise InputError(msg)
    return str(value)


def _read_qrels(path: Path, corpus: dict[str, str], queries: dict[str, str]) -> dict[str, dict[str, int]]:
    if not path.is_file():
        msg = f"qrels file not found: {str(path)!r}"
        raise InputError(msg)
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for line_no, parts in enumerate(csv.reader(handle, delimiter="\t"), start=1):
            if not parts or (line_no == 1 and parts[0] == "query-id"):
                continue
            where = f"{path}:{line_no}"
            if len(parts) != 3:
                msg = f"{where}: expected 'query-id<TAB>corpus-id<TAB>score', got {len(parts)} columns"
                raise InputError(msg)
            qid, doc_id, score = parts
            if qid not in queries or doc_id not in corpus:
                kind, bad = ("query", qid) if qid not in queries else ("document", doc_id)
                msg = f"{where}: unknown {kind} id {bad!r}"
                raise InputError(msg)
            try:
                grade = int(float(score))
            except ValueError:
                msg = f"{where}: score must be a number, got {score!r}"
                raise InputError(msg) from None
            if grade > 0:
                qrels.setdefault(qid, {})[doc_id] = grade
    return qrels
