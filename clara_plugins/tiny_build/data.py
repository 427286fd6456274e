"""The build's data: the demo corpus split into trained and held-out questions, the demo assets, the training chunks.

Every passage keeps some of its questions out of all training, and some passages are kept out entirely (neither
their text nor their questions are trained on, not even as negatives).
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from clara_plugins.chunking import Chunk, chunk_text
from clara_plugins.training.synthesis import mine_candidates

logger = logging.getLogger(__name__)
TITLE = re.compile(r"^This a document about (.+?)\.\s*\n")  # the first line of every passage of the example file


@dataclass
class Split:
    """The demo corpus and its questions, split into training and held-out questions."""

    passages: list[dict]  # {"id", "title", "text"}
    questions: list[dict]  # {"id", "question", "answers", "doc_id", "split"}
    train_docs: list[int] = field(default_factory=list)  # positions of passages used in training

    def by_split(self, name: str) -> list[dict]:
        """The questions of one split: "train", "heldout_question" or "heldout_passage"."""
        return [q for q in self.questions if q["split"] == name]


def make_split(path: Path, seed: int, heldout_per_passage: int, heldout_passages: int) -> Split:
    """Passages with ids and titles; per passage ``heldout_per_passage`` questions held out; some passages held out."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(seed)
    held_docs = set(rng.sample(range(len(rows)), heldout_passages))
    passages, questions = [], []
    for i, row in enumerate(rows):
        text = row["docs"][0]
        match = TITLE.match(text)
        passages.append({"id": f"demo-{i:04d}", "title": match.group(1) if match else "", "text": text})
        pairs = list(zip(row["question"], row["answers"], strict=True))
        order = list(range(len(pairs)))
        rng.shuffle(order)
        for rank, j in enumerate(order):
            split = _split_of(i in held_docs, rank < heldout_per_passage)
            q, a = pairs[j]
            questions.append({"id": f"q-{i:04d}-{j}", "question": q, "answers": [a], "doc_id": i, "split": split})
    train_docs = [i for i in range(len(rows)) if i not in held_docs]
    return Split(passages, questions, train_docs)


def _split_of(held_passage: bool, held_question: bool) -> str:
    if held_passage:
        return "heldout_passage"
    return "heldout_question" if held_question else "train"


def write_assets(split: Split, folder: Path) -> None:
    """Write ``demo_corpus.jsonl`` (id, title, text, and one held-out question/answer for ``clara demo``) and
    ``demo_questions.jsonl`` (every question with its split and source passage id) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    first_heldout: dict[int, dict] = {}
    for q in split.questions:
        if q["split"] != "train":
            first_heldout.setdefault(q["doc_id"], q)
    with (folder / "demo_corpus.jsonl").open("w", encoding="utf-8") as f:
        for i, p in enumerate(split.passages):
            q = first_heldout[i]
            f.write(json.dumps({**p, "question": q["question"], "answer": q["answers"][0]}, ensure_ascii=False) + "\n")
    with (folder / "demo_questions.jsonl").open("w", encoding="utf-8") as f:
        for q in split.questions:
            row = {**q, "doc_id": split.passages[q["doc_id"]]["id"]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    logger.info("wrote %s and demo_questions.jsonl (%d questions)", folder / "demo_corpus.jsonl", len(split.questions))


def tokenizer_texts(split: Split) -> list[str]:
    """What the BPE tokenizer is trained on: the training passages, then every training question and its answer."""
    train_texts = [split.passages[i]["text"] for i in split.train_docs]
    train_qa = [t for q in split.by_split("train") for t in (q["question"], q["answers"][0])]
    return train_texts + train_qa


@dataclass
class TrainData:
    """The training passages cut into chunks of at most ``doc_max_length`` tokens (what gets compressed and
    retrieved), and the training questions with their gold chunk and mined candidate chunks."""

    chunks: list[str]  # chunk texts of the training passages
    questions: list[str]
    answers: list[str]
    gold: list[int]  # chunk position of each question's answer
    candidates: list[list[int]]  # BM25 top-n chunks plus the gold chunk, shuffled


def gold_chunk(chunks: list[Chunk], answer: str) -> int:
    """The chunk of a passage holding the answer (case-insensitive), else the first one."""
    needle = answer.strip().rstrip(".").lower()
    for j, c in enumerate(chunks):
        if needle and needle in c.text.lower():
            return j
    return 0


def training_data(split: Split, tokenizer, max_tokens: int, n_candidates: int, seed: int) -> TrainData:
    """Chunks and BM25 candidates among the training passages only (held-out passages never appear in any
    training example, not even as negatives)."""
    chunks, first = [], {}
    per_doc: dict[int, list[Chunk]] = {}
    for d in split.train_docs:
        per_doc[d] = chunk_text(split.passages[d]["text"], tokenizer, max_tokens)
        first[d] = len(chunks)
        chunks += [c.text for c in per_doc[d]]
    train = split.by_split("train")
    gold = [first[q["doc_id"]] + gold_chunk(per_doc[q["doc_id"]], q["answers"][0]) for q in train]
    questions = [q["question"] for q in train]
    logger.info("%d training passages -> %d chunks; mining %d BM25 candidates", len(per_doc), len(chunks), n_candidates)
    cands = mine_candidates(questions, chunks, n_candidates, gold=[[g] for g in gold], seed=seed)
    return TrainData(chunks, questions, [q["answers"][0] for q in train], gold, cands)


def docs_with_gold(data: TrainData, i: int, k: int, rng: random.Random) -> tuple[list[int], int]:
    """``k`` candidate chunks of question ``i`` including its gold chunk, in a random order; and the gold's position."""
    negatives = [d for d in data.candidates[i] if d != data.gold[i]]
    docs = [data.gold[i], *rng.sample(negatives, min(k - 1, len(negatives)))]
    rng.shuffle(docs)
    return docs, docs.index(data.gold[i])
