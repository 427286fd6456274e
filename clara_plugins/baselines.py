"""Plain text RAG with the same base decoder: the baseline CLaRa is measured against.

The base causal LM (CLaRa's adapters switched off) reads the raw text of the retrieved chunks in the same
``ANSWER`` prompt CLaRa uses, rendered with the same chat template, with the documents' text where CLaRa puts
``<MEM0>..<MEM{n-1}><SEP>`` slots (the bundled tiny model's template)::

    <s>[INST] {system}\\n\\nBackground:\\n{doc 1}\\n{doc 2}...\\n\\nQuestion:{question} [/INST] {answer}</s>

So the only difference between the two is the context: about 256 tokens of text per chunk here, ``n + 1`` slots
there. The bundled tiny model's base was pretrained on exactly this format (``scripts/build_tiny_model.py``,
stage 0), so on the tiny model this is a fair baseline, not a strawman.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from clara_plugins.errors import InputError
from clara_plugins.prompts import ANSWER, PromptTemplate, conversation_ids, user_message
from clara_plugins.tokens import check_texts

if TYPE_CHECKING:
    from clara_plugins.model import ClaraModel

logger = logging.getLogger(__name__)


def text_prompt_ids(
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    docs: Sequence[Sequence[str]],
    template: PromptTemplate = ANSWER,
) -> list[list[int]]:
    """The text-RAG prompts: CLaRa's prompt rendered with the chat template, the documents' text joined by newlines
    in place of the memory slots. User text (documents, questions) can never produce a control token."""
    return conversation_ids(tokenizer, template.system, _text_users(questions, docs, template))[0]


def _text_users(
    questions: Sequence[str], docs: Sequence[Sequence[str]], template: PromptTemplate
) -> list[tuple[list[str], list[str]]]:
    """The user messages of text-RAG prompts, checked (see :func:`clara_plugins.prompts.user_message`)."""
    questions = check_texts(questions, "questions")
    if len(docs) != len(questions):
        msg = f"docs has {len(docs)} entries for {len(questions)} questions"
        raise InputError(msg)
    return [
        user_message(template, q, docs=check_texts(d, f"docs[{i}]")) for i, (q, d) in enumerate(zip(questions, docs))
    ]


def pad_left(rows: Sequence[Sequence[int]], pad_id: int, labels: Sequence[Sequence[int]] | None = None) -> dict:
    """Left-padded ``input_ids`` / ``attention_mask`` (and ``labels`` padded with -100) as CPU tensors."""
    width = max(len(r) for r in rows)
    batch = {
        "input_ids": torch.tensor([[pad_id] * (width - len(r)) + list(r) for r in rows], dtype=torch.long),
        "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long),
    }
    if labels is not None:
        batch["labels"] = torch.tensor([[-100] * (width - len(r)) + list(r) for r in labels], dtype=torch.long)
    return batch


class TextRAG:
    """Answer questions from the raw text of documents with a plain causal LM (the text-RAG baseline).

    Args:
        lm: the base causal LM.
        tokenizer: its tokenizer (bos/eos set).
        template: the prompt (default: CLaRa's ``ANSWER`` prompt).
        context: a factory of a context manager entered around every forward pass (e.g. one that switches
            CLaRa's LoRA adapters off); default: none.
        suppress_ids: token ids never generated (CLaRa's tokens, which the base model never learned).
    """

    def __init__(
        self,
        lm: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        template: PromptTemplate = ANSWER,
        context: Any = None,
        suppress_ids: Sequence[int] = (),
    ) -> None:
        self.lm = lm
        self.suppress_ids = list(suppress_ids)
        self.tokenizer = tokenizer
        self.template = template
        self._context = context or nullcontext
        pad = lm.config.pad_token_id
        self.pad_id = pad if pad is not None else tokenizer.bos_token_id

    @classmethod
    def from_clara(cls, model: ClaraModel, template: PromptTemplate = ANSWER) -> TextRAG:
        """The base decoder of a CLaRa model with every adapter off (same weights CLaRa's adapters sit on)."""

        @contextmanager
        def base_only() -> Iterator[None]:
            with model.use_role("generator"), model.peft_model.disable_adapter():  # use_role holds the lock
                yield

        clara_ids = list(range(model.config.base_vocab_size or len(model.tokenizer), len(model.tokenizer)))
        return cls(model.base_lm, model.tokenizer, template, context=base_only, suppress_ids=clara_ids)

    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    def build_prompts(
        self, questions: Sequence[str], docs: Sequence[Sequence[str]], answers: Sequence[str] | None = None
    ) -> dict:
        """Left-padded prompts; with ``answers`` each answer and ``</s>`` follow and ``labels`` mask the prompt."""
        if answers is None:
            rows = text_prompt_ids(self.tokenizer, questions, docs, self.template)
            return {k: v.to(self.device) for k, v in pad_left(rows, self.pad_id).items()}
        answers = check_texts(answers, "answers")
        users = _text_users(questions, docs, self.template)
        rows, prompt_lengths = conversation_ids(self.tokenizer, self.template.system, users, answers)
        labels = [[-100] * n + r[n:] for r, n in zip(rows, prompt_lengths, strict=True)]
        return {k: v.to(self.device) for k, v in pad_left(rows, self.pad_id, labels).items()}

    def generation_config(self, max_new_tokens: int, min_new_tokens: int | None = None) -> GenerationConfig:
        """Greedy decoding, stopping at ``</s>`` (or never before ``min_new_tokens``)."""
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.pad_id,
            bos_token_id=self.tokenizer.bos_token_id,
            suppress_tokens=self.suppress_ids or None,
        )

    def generate(
        self,
        questions: Sequence[str],
        docs: Sequence[Sequence[str]],
        max_new_tokens: int = 64,
        batch_size: int = 8,
        min_new_tokens: int | None = None,
    ) -> list[str]:
        """Greedy answers, one per question, from that question's documents (best first).

        Args:
            questions: the questions.
            docs: per question the texts of its documents.
            max_new_tokens: generation length.
            batch_size: questions per generate call.
            min_new_tokens: force at least this many new tokens (for fixed-length latency measurements).
        """
        questions = check_texts(questions, "questions")
        config = self.generation_config(max_new_tokens, min_new_tokens)
        answers: list[str] = []
        for start in range(0, len(questions), batch_size):
            batch = self.build_prompts(questions[start : start + batch_size], docs[start : start + batch_size])
            with torch.inference_mode(), self._context():
                out = self.lm.generate(**batch, generation_config=config)
            new = out[:, batch["input_ids"].shape[1] :]
            answers += self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [a.strip() for a in answers]

    def next_token_logits(self, questions: Sequence[str], docs: Sequence[Sequence[str]]) -> torch.Tensor:
        """Logits ``[B, V]`` of the first answer token (float32, CPU)."""
        batch = self.build_prompts(questions, docs)
        with torch.inference_mode(), self._context():
            logits = self.lm(**batch).logits[:, -1]
        return logits.float().cpu()

    def prompt_lengths(self, questions: Sequence[str], docs: Sequence[Sequence[str]]) -> list[int]:
        """Prompt length in tokens per question (for the ideal speed-up of compression)."""
        return [len(r) for r in text_prompt_ids(self.tokenizer, questions, docs, self.template)]
