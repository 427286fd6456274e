"""What each training stage trains and the loss it computes (``docs/clara-reference.md`` section 6).

| stage | trains | loss |
|---|---|---|
| 1 | compressor + generator adapters, memory-token input rows | CE on QA / paraphrase targets + 0.1 x MSE |
| 2 | compressor (continued) + a fresh generator adapter | CE of the answer given k compressed docs + 0.1 x MSE |
| 3 | query reasoner (copy of the compressor) + generator | CE of the answer through the straight-through top-k |
| retrieval | query reasoner | multi-positive InfoNCE on cosine / temperature |

Stage 3 and the retrieval baseline never touch what documents are encoded with (base, compressor adapter, token
rows): documents are encoded under ``no_grad`` with everything but the trained adapters frozen, so an index built
before them stays valid. Losses are means over examples (each example's CE is the mean over its target tokens), so
``P`` processes with batch ``b`` compute exactly what one process computes with batch ``P x b``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from clara_plugins.errors import ConfigError, InputError
from clara_plugins.prompts import qa_target
from clara_plugins.training.config import TrainConfig
from clara_plugins.training.data import QARow, Stage1Row, load_beir, load_stage1, load_stage2
from clara_plugins.training.losses import (
    cosine_scores,
    hard_topk,
    multi_positive_info_nce,
    select_memories,
    straight_through_topk,
)

if TYPE_CHECKING:
    from clara_plugins.model import ClaraModel

logger = logging.getLogger(__name__)


def example_ce(model: ClaraModel, prompts: dict, memories: torch.Tensor) -> torch.Tensor:
    """Per-example next-token CE ``(B,)`` of the generator: each example's mean over its target tokens."""
    embeds = model.embed_with_memories(prompts["input_ids"], memories)  # (B, L, H)
    with model.use_role("generator"):
        logits = model.base_lm(inputs_embeds=embeds, attention_mask=prompts["attention_mask"]).logits  # (B, L, V)
    labels = prompts["labels"][:, 1:]  # (B, L-1): token t+1 is predicted at position t
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return ce.sum(1) / (labels != -100).sum(1).clamp(min=1)


def lora_params(model: ClaraModel, role: str) -> list[tuple[str, torch.nn.Parameter]]:
    """The LoRA parameters of one adapter, by name."""
    return [(n, p) for n, p in model.peft_model.named_parameters() if "lora_" in n and f".{role}." in n]


def reset_adapter(model: ClaraModel, role: str) -> None:
    """Re-initialise adapter ``role`` the way peft creates a new one (lora_B = 0: the base model's behaviour)."""
    from peft.tuners.lora import LoraLayer

    for module in model.peft_model.modules():
        if isinstance(module, LoraLayer) and role in module.lora_A:
            module.reset_lora_parameters(role, True)


class Stage:
    """Base class: ``prepare`` chooses the trained parameters, ``loss`` computes ``(loss, logs)`` on a list of rows."""

    name = ""
    roles: tuple[str, ...] = ()
    trains_memory_rows = False

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self._doc_cache: dict[str, torch.Tensor] = {}
        # False under FSDP: there every forward pass is a collective, so each process must make the same calls
        # whatever its cache holds; frozen documents are then encoded in one pass per micro-batch, uncached
        self.cache_documents = True
        self._hooks: list[Any] = []

    def load(self, path: str | Path) -> list[Any]:
        """Read this stage's training rows."""
        return load_stage2(path)

    def setup_adapters(self, model: ClaraModel) -> None:
        """Create or re-initialise adapters before training (stage specific)."""

    def prepare(self, model: ClaraModel) -> list[tuple[str, torch.nn.Parameter]]:
        """Freeze everything, then unfreeze exactly what this stage trains; returns those parameters by name."""
        self.setup_adapters(model)
        for p in model.peft_model.parameters():
            p.requires_grad_(False)
        params = [np for role in self.roles for np in lora_params(model, role)]
        if self.trains_memory_rows:
            emb = model.peft_model.get_input_embeddings().weight
            emb.requires_grad_(True)
            mask = torch.zeros(emb.shape[0], 1, dtype=emb.dtype, device=emb.device)
            mask[list(model.special_token_ids.mem)] = 1
            self._hooks.append(emb.register_hook(lambda grad: grad * mask.to(grad.dtype)))  # only memory rows learn
            params.append(("embed_tokens.weight", emb))
        for _, p in params:
            p.requires_grad_(True)
        return params

    def finish(self, model: ClaraModel) -> None:
        """Undo ``prepare``: remove gradient hooks, freeze everything, drop cached document memories."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        self._doc_cache.clear()
        for p in model.peft_model.parameters():
            p.requires_grad_(False)
        model.invalidate_fingerprint()

    def loss(self, model: ClaraModel, rows: Sequence[Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """``(loss, logs)`` of one micro-batch of rows; subclasses implement it."""
        raise NotImplementedError

    # -------------------------------------------------------------- shared pieces
    def frozen_memories(self, model: ClaraModel, texts: Sequence[str]) -> torch.Tensor:
        """Compressor memories ``(len(texts), n, H)`` under no_grad, each distinct text encoded once per run (once
        per call when ``cache_documents`` is off, in a single pass so that every process makes the same calls)."""
        cache = self._doc_cache if self.cache_documents else {}
        missing = list(dict.fromkeys(t for t in texts if t not in cache))
        bs = 32 if self.cache_documents else max(1, len(missing))
        for start in range(0, len(missing), bs):
            chunk = missing[start : start + bs]
            with torch.no_grad():
                batch = model.tokenize_documents(chunk, truncate=True)
                mem = model.memories_from_batch(batch, "compressor").detach()
            for text, m in zip(chunk, mem):
                cache[text] = m
        return torch.stack([cache[t] for t in texts])

    def candidate_memories(self, model: ClaraModel, rows: Sequence[QARow]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded candidates ``(B, N, n, H)`` (zeros where a row has fewer) and their mask ``(B, N)``."""
        texts, own, mask = candidate_columns(rows)
        memory = self.frozen_memories(model, texts)
        own, mask = own.to(memory.device), mask.to(memory.device)
        return memory[own].masked_fill(~mask[:, :, None, None], 0.0), mask

    def query_memories(self, model: ClaraModel, questions: Sequence[str]) -> torch.Tensor:
        """Query-reasoner memories ``(B, n, H)`` with gradient."""
        return model.memories_from_batch(model.tokenize_documents(questions, truncate=True), "query_reasoner")


class Stage1(Stage):
    """Salient compressor pretraining: reconstruct QA pairs / a paraphrase from the document's memories."""

    name = "1"
    roles = ("compressor", "generator")
    trains_memory_rows = True

    def load(self, path: str | Path) -> list[Stage1Row]:
        return load_stage1(path)

    def loss(self, model: ClaraModel, rows: Sequence[Stage1Row]) -> tuple[torch.Tensor, dict[str, float]]:
        docs = [d for r in rows for d in r.docs]
        memory, mse = model.memories_from_batch(model.tokenize_documents(docs, truncate=True), "compressor", True)
        ce = torch.zeros(len(rows), device=memory.device)
        starts = torch.tensor([0] + [len(r.docs) for r in rows]).cumsum(0).tolist()
        for task in ("qa", "paraphrase"):  # one prompt batch per task (different templates)
            idx = [i for i, r in enumerate(rows) if r.data_type == task]
            if not idx:
                continue
            targets = [
                qa_target(rows[i].questions, rows[i].answers) if task == "qa" else rows[i].answers[0] for i in idx
            ]
            prompts = model.build_prompts(["" for _ in idx], [len(rows[i].docs) for i in idx], targets, task=task)
            mem = torch.cat([memory[starts[i] : starts[i + 1]] for i in idx])
            ce = ce.index_put((torch.tensor(idx, device=ce.device),), example_ce(model, prompts, mem).float())
        loss = ce.mean() + self.config.mse_weight * mse
        return loss, {"ce": ce.mean().item(), "mse": mse.item()}


def _stage1_target(row: Stage1Row) -> str:
    return qa_target(row.questions, row.answers) if row.data_type == "qa" else row.answers[0]


class Stage2(Stage):
    """Instruction tuning: answer the question from ``k`` compressed documents."""

    name = "2"
    roles = ("compressor", "generator")

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        if config.train_compressor is False:  # the generator alone learns to read frozen memories
            self.roles = ("generator",)

    def setup_adapters(self, model: ClaraModel) -> None:
        model.ensure_adapter("generator")
        if self.config.fresh_generator:
            reset_adapter(model, "generator")

    def loss(self, model: ClaraModel, rows: Sequence[QARow]) -> tuple[torch.Tensor, dict[str, float]]:
        docs = [r.docs[: self.config.max_docs] for r in rows]
        flat = [d for ds in docs for d in ds]
        prompts = model.build_prompts([r.question for r in rows], [len(ds) for ds in docs], [r.answer for r in rows])
        if "compressor" not in self.roles:  # the MSE term only trains the compressor: nothing to add
            ce = example_ce(model, prompts, self.frozen_memories(model, flat)).mean()
            return ce, {"ce": ce.item()}
        batch = model.tokenize_documents(flat, truncate=True)
        memory, mse = model.memories_from_batch(batch, "compressor", True)  # (sum k_i, n, H)
        ce = example_ce(model, prompts, memory).mean()
        return ce + self.config.mse_weight * mse, {"ce": ce.item(), "mse": mse.item()}


class Stage3(Stage):
    """End-to-end: the answer's CE reaches the query reasoner through the straight-through top-k (no labels)."""

    name = "3"
    roles = ("query_reasoner", "generator")

    def setup_adapters(self, model: ClaraModel) -> None:
        init = self.config.init_query_reasoner
        if init or "query_reasoner" not in model.roles:
            model.ensure_adapter("query_reasoner", init_from="compressor")
        model.ensure_adapter("generator")

    def loss(self, model: ClaraModel, rows: Sequence[QARow]) -> tuple[torch.Tensor, dict[str, float]]:
        cands, mask = self.candidate_memories(model, rows)  # (B, N, n, H), no grad
        query = self.query_memories(model, [r.question for r in rows])  # (B, n, H)
        scores = cosine_scores(query, cands).masked_fill(~mask, -2.0)  # (B, N)
        k = min(self.config.top_k, int(mask.sum(1).min()))
        selection = straight_through_topk(scores, k, self.config.temperature, mask)  # (B, k, N)
        chosen = select_memories(selection, cands).flatten(0, 1)  # (B*k, n, H), best first per question
        prompts = model.build_prompts([r.question for r in rows], [k] * len(rows), [r.answer for r in rows])
        ce = example_ce(model, prompts, chosen).mean()
        return ce, {"ce": ce.item(), **_recall_logs(scores.detach(), mask, rows, k)}


class RetrievalStage(Stage):
    """Supervised baseline: the query reasoner learns from relevance labels with multi-positive InfoNCE."""

    name = "retrieval"
    roles = ("query_reasoner",)

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        if config.train_compressor:  # dual encoder: documents are encoded with gradient
            self.roles = ("query_reasoner", "compressor")

    def _document_memories(self, model: ClaraModel, texts: Sequence[str]) -> torch.Tensor:
        """Memories of distinct ``texts``: cached under no_grad, or with gradient when the compressor trains."""
        if not self.config.train_compressor:
            return self.frozen_memories(model, texts)
        return model.memories_from_batch(model.tokenize_documents(texts, truncate=True), "compressor")

    def load(self, path: str | Path) -> list[QARow]:
        if Path(path).is_dir():
            return beir_training_rows(path, self.config.beir_split, self.config.n_candidates, self.config.seed)
        rows = load_stage2(path)
        if not all(r.pos_index for r in rows):
            msg = f"the retrieval stage needs 'pos_index' in every row of {str(path)!r}"
            raise InputError(msg)
        return rows

    def setup_adapters(self, model: ClaraModel) -> None:
        if self.config.init_query_reasoner or "query_reasoner" not in model.roles:
            model.ensure_adapter("query_reasoner", init_from="compressor")

    def loss(self, model: ClaraModel, rows: Sequence[QARow]) -> tuple[torch.Tensor, dict[str, float]]:
        """InfoNCE of each question against its own candidates, or (``in_batch_negatives``) against every distinct
        candidate of the micro-batch (DPR's in-batch negatives).

        A question's own hard negatives teach fine distinctions; the other questions' candidates add the easy,
        off-topic negatives a search over a whole corpus meets. A text is a positive of every question whose
        ``pos_index`` marks it (two questions about one passage share it). Each distinct text is encoded once.
        """
        texts, own, mask = candidate_columns(rows)
        query = self.query_memories(model, [r.question for r in rows])
        all_scores = cosine_scores(query, self._document_memories(model, texts))  # (B, U)
        own, mask = own.to(all_scores.device), mask.to(all_scores.device)
        scores = all_scores.gather(1, own)  # (B, N): each question's own candidates (masked where padded)
        if self.config.in_batch_negatives and len(rows) > 1:
            positives = torch.zeros(all_scores.shape, dtype=torch.bool, device=all_scores.device)
            for i, r in enumerate(rows):
                positives[i, own[i, r.pos_index]] = True
            loss = multi_positive_info_nce(all_scores, positives, self.config.temperature)
            best = all_scores.detach().argmax(1, keepdim=True)  # logged: is the best of the micro-batch a positive?
            logs = {"in_batch_recall@1": 100 * positives.gather(1, best).float().mean().item()}
        else:
            positives = torch.zeros_like(mask)
            for i, r in enumerate(rows):
                positives[i, r.pos_index] = True
            loss = multi_positive_info_nce(scores, positives, self.config.temperature, mask)
            logs = {}
        k = min(self.config.top_k, int(mask.sum(1).min()))
        return loss, {"info_nce": loss.item(), **logs, **_recall_logs(scores.detach(), mask, rows, k)}


def candidate_columns(rows: Sequence[QARow]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The distinct candidate texts of a micro-batch (each encoded once), each row's candidates as positions in
    them ``(B, N)`` (0 where a row has fewer) and the mask of real candidates ``(B, N)``."""
    texts = list(dict.fromkeys(d for r in rows for d in r.docs))
    column = {t: j for j, t in enumerate(texts)}
    width = max(len(r.docs) for r in rows)
    own = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        own[i, : len(r.docs)] = torch.tensor([column[d] for d in r.docs])
        mask[i, : len(r.docs)] = True
    return texts, own, mask


def _recall_logs(scores: torch.Tensor, mask: torch.Tensor, rows: Sequence[QARow], k: int) -> dict[str, float]:
    """Training-batch Recall@k of the hard top-k against ``pos_index`` (logged only, never a training signal)."""
    labelled = [i for i, r in enumerate(rows) if r.pos_index]
    if not labelled:
        return {}
    top = hard_topk(scores, k, mask).tolist()
    hits = [len(set(top[i]) & set(rows[i].pos_index)) / len(rows[i].pos_index) for i in labelled]
    return {f"recall@{k}": 100 * sum(hits) / len(hits)}


def beir_training_rows(folder: str | Path, split: str, n_candidates: int, seed: int = 0) -> list[QARow]:
    """Stage-3 / retrieval rows from a BEIR split: each query's positives plus BM25-mined negatives."""
    from clara_plugins.training.synthesis import mine_candidates

    data = load_beir(folder, split)
    ids = list(data.corpus)
    texts = [data.corpus[i] for i in ids]
    questions = list(data.qrels)
    position = {doc_id: i for i, doc_id in enumerate(ids)}
    gold = [[position[d] for d in data.qrels[q]] for q in questions]
    lists = mine_candidates([data.queries[q] for q in questions], texts, n_candidates, gold=gold, seed=seed)
    rows = []
    for q, cand in zip(questions, lists):
        rel = set(data.qrels[q])
        pos = [j for j, d in enumerate(cand) if ids[d] in rel]
        rows.append(QARow(data.queries[q], [texts[d] for d in cand], ["-"], pos))
    return rows


STAGES: dict[str, type[Stage]] = {"1": Stage1, "2": Stage2, "3": Stage3, "retrieval": RetrievalStage}


def make_stage(config: TrainConfig) -> Stage:
    """The stage object for ``config.stage``."""
    if config.stage not in STAGES:
        msg = f"TrainConfig.stage must be one of {sorted(STAGES)}, got {config.stage!r}"
        raise ConfigError(msg)
    return STAGES[config.stage](config)
