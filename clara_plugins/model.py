"""``ClaraModel``: the whole CLaRa forward pass (compress, encode queries, rank, generate) over one base causal LM.

One frozen base model carries three peft LoRA adapters, one active per forward pass (reference section 1):
``compressor`` turns a document into ``n_mem`` memory vectors, ``query_reasoner`` maps a question into the same
space, ``generator`` answers from memory vectors placed in the prompt instead of the document text.

Shapes in comments: B batch, L sequence length, n memory vectors per document, H hidden size, D = n * H.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from tqdm.auto import tqdm
from transformers import (
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from clara_plugins.checkpoints import CheckpointParts, load_weights, read_checkpoint, save_pretrained
from clara_plugins.chunking import Chunk, chunk_text
from clara_plugins.config import ROLES, ClaraConfig
from clara_plugins.errors import CheckpointError, ConfigError, InputError
from clara_plugins.prompts import prompt_ids, template_for
from clara_plugins.tokens import SpecialIds, add_clara_tokens, check_texts, document_ids
from clara_plugins.torch_utils import default_device, resolve_dtype, row_checksums  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

Candidates = Sequence[str] | torch.Tensor


@dataclass
class ClaraAnswer:
    """An answer and the candidates it was generated from (indices into the question's candidates, best first)."""

    text: str
    indices: list[int]
    scores: list[float]


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft reads transformers 5's deprecated ``is_gradient_checkpointing`` while wrapping a model: a FutureWarning
    about peft's own code that every user would see. Only that message, only around peft's wrapping."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


class _StopWhenSet(StoppingCriteria):
    """Ends a generation once ``event`` is set (the consumer of a stream went away)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class ClaraModel:
    """A CLaRa model: compress documents, encode questions, rank, and answer from memory vectors.

    Build one with :meth:`from_pretrained` (official checkpoints, our format, or ``"tiny"``). Methods that switch
    adapters hold an internal lock, so one model can serve several threads.
    """

    def __init__(
        self,
        peft_model: PeftModel,
        tokenizer: PreTrainedTokenizerBase,
        config: ClaraConfig,
        special: SpecialIds,
        base_row_sums: dict[str, torch.Tensor] | None = None,
        source: str | None = None,
    ) -> None:
        self.peft_model = peft_model
        self.tokenizer = tokenizer
        self.config = config
        self.special_token_ids = special
        self.source = source
        self.base_source = config.base_model  # where the base weights were actually read from
        self._base_row_sums = base_row_sums or {}
        self._lock = threading.RLock()
        self._active: str | None = None
        self._fingerprint: str | None = None
        self._warned_query_fallback = False
        self._warned_truncation = False

    def __getstate__(self) -> dict:  # copy.deepcopy / pickle: locks are per object
        state = self.__dict__.copy()
        state.pop("_lock")
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_base(
        cls,
        base_lm: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: ClaraConfig,
        roles: Sequence[str] = ROLES,
        source: str | None = None,
        chat_template: str | None = None,
    ) -> ClaraModel:
        """Wrap a base causal LM: add the CLaRa tokens, resize the embeddings and attach one LoRA adapter per role.

        The new adapters are peft's default initialisation (lora_B = 0, i.e. the base model); loaders then fill
        in trained weights.
        """
        unknown = [r for r in roles if r not in ROLES]
        if unknown or not roles:
            msg = f"roles must be a non-empty subset of {ROLES}, got {list(roles)}"
            raise ConfigError(msg)
        if chat_template is not None:
            tokenizer.chat_template = chat_template
        base_vocab = base_lm.get_input_embeddings().weight.shape[0]
        config.base_vocab_size = config.base_vocab_size or base_vocab
        sums = {"embed_tokens": row_checksums(base_lm.get_input_embeddings().weight)}
        if base_lm.get_output_embeddings() is not None and not base_lm.config.tie_word_embeddings:
            sums["lm_head"] = row_checksums(base_lm.get_output_embeddings().weight)
        special = add_clara_tokens(tokenizer, config.n_mem)
        if len(tokenizer) != base_vocab:
            base_lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        base_lm.config.pad_token_id = special.pad
        for p in base_lm.parameters():
            p.requires_grad_(False)
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.lora_target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        with _quiet_peft():
            peft_model = get_peft_model(base_lm, lora, adapter_name=roles[0])
            for role in roles[1:]:
                peft_model.add_adapter(role, lora)
        peft_model.eval()
        return cls(peft_model, tokenizer, config, special, sums, source)

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        subfolder: str | None = None,
        base_model: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        chat_template: str | None = None,
        **hub_kwargs: Any,
    ) -> ClaraModel:
        """Load a CLaRa model.

        Args:
            source: ``"tiny"`` (the bundled demo model), a Hub id such as ``"apple/CLaRa-7B-Instruct"``, a local
                folder in the official layout, or a folder written by :meth:`save_pretrained`.
            subfolder: folder inside the repo or directory, e.g. ``"compression-16"``.
            base_model: overrides the base model id recorded in the checkpoint (official configs sometimes carry
                private absolute paths).
            device: ``"cuda"``, ``"mps"``, ``"cpu"``...; default: the best available.
            dtype: default bf16 on CUDA, fp32 elsewhere.
            chat_template: a Jinja chat template for a base tokenizer that has none (prompts are rendered with it).
            **hub_kwargs: ``revision``, ``token``, ``cache_dir`` for Hub downloads.
        """
        parts = read_checkpoint(source, subfolder, base_model, device, dtype, **hub_kwargs)
        if chat_template is not None:
            parts.tokenizer.chat_template = chat_template
        return cls._from_parts(parts, str(source) + (f"/{subfolder}" if subfolder else ""))

    @classmethod
    def _from_parts(cls, parts: CheckpointParts, source: str) -> ClaraModel:
        """Build the model from a checkpoint's parts, then fill in its weights."""
        model = cls.from_base(parts.base_lm, parts.tokenizer, parts.config, roles=parts.roles, source=source)
        model.base_source = parts.base_source
        load_weights(model, parts)
        model.peft_model.eval()
        logger.info(
            "loaded %s (%s format, roles %s) on %s/%s", source, parts.kind, model.roles, model.device, model.dtype
        )
        return model

    def save_pretrained(self, path: str | Path, include_base: bool | None = None) -> Path:
        """Save in our format (safetensors only); see :func:`clara_plugins.checkpoints.save_pretrained`."""
        return save_pretrained(self, path, include_base=include_base)

    @classmethod
    def convert_official(
        cls,
        source: str | Path,
        target: str | Path,
        subfolder: str | None = None,
        base_model: str | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> Path:
        """Convert an official checkpoint (local or Hub) into our safetensors format, once, on the CPU."""
        parts = read_checkpoint(source, subfolder, base_model, device="cpu", dtype=dtype or "bf16")
        if parts.kind != "official":
            msg = f"{parts.folder} is already in the clara-plugins format"
            raise CheckpointError(msg)
        return cls._from_parts(parts, str(source)).save_pretrained(target)

    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> ClaraModel:
        device = torch.device(device) if device is not None else self.device
        self.peft_model.to(device=device, dtype=resolve_dtype(dtype, device) if dtype is not None else self.dtype)
        return self

    # ------------------------------------------------------------------ properties
    @property
    def n_mem(self) -> int:
        return self.config.n_mem

    @property
    def hidden_size(self) -> int:
        return self.peft_model.get_input_embeddings().weight.shape[1]

    @property
    def memory_dim(self) -> int:
        return self.n_mem * self.hidden_size

    @property
    def device(self) -> torch.device:
        return self.peft_model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.peft_model.get_input_embeddings().weight.dtype

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(r for r in ROLES if r in self.peft_model.peft_config)

    @property
    def base_lm(self) -> PreTrainedModel:
        """The base causal LM with the LoRA layers injected (peft's ``get_base_model()``)."""
        return self.peft_model.get_base_model()

    @property
    def fingerprint(self) -> str:
        """Identity of what documents are encoded with: the base model, the compression settings, the compressor
        adapter and the rows of the CLaRa tokens. A store built by another fingerprint must not be mixed in."""
        if self._fingerprint is None:
            self._fingerprint = self._compute_fingerprint()
        return self._fingerprint

    def invalidate_fingerprint(self) -> None:
        """Call after changing compressor weights or token rows (training does)."""
        self._fingerprint = None

    def _compute_fingerprint(self) -> str:
        h = hashlib.sha256()
        base_cfg = self.base_lm.config
        for key in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            h.update(f"{key}={getattr(base_cfg, key, None)};".encode())
        h.update(f"doc_max_length={self.config.doc_max_length};compr_rate={self.config.compr_rate};".encode())
        bf16 = lambda t: t.detach().to("cpu", torch.bfloat16).view(torch.int16).numpy().tobytes()  # noqa: E731
        emb = self.peft_model.get_input_embeddings().weight
        h.update(bf16(emb[: min(64, emb.shape[0])]))  # a sample of base rows tells base models apart
        h.update(bf16(emb[self.config.base_vocab_size or 0 :]))  # every CLaRa token row
        role = "compressor"
        for name, param in sorted(self.peft_model.named_parameters()):
            if f".{role}." in name:
                h.update(name.encode())
                h.update(bf16(param))
        # v2: a strided sample (512-1023 values) of every base weight tells apart bases with one config but other
        # weights (another revision, a fine-tuned base); stores bound to a v1 fingerprint are refused as another model
        h.update(b"fingerprint-v2;")
        for name, param in sorted(self.base_lm.named_parameters()):
            if "lora_" not in name:
                flat = param.detach().reshape(-1)
                h.update(f"{tuple(param.shape)};".encode())
                h.update(bf16(flat[:: max(1, flat.numel() // 512)]))
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ adapters
    def _lora_params(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.peft_model.named_parameters() if "lora_" in n]

    def _resolve_role(self, role: str) -> str:
        if role in self.roles:
            return role
        if role == "query_reasoner" and "compressor" in self.roles:
            if not self._warned_query_fallback:
                logger.warning(
                    "this checkpoint has no query_reasoner adapter; questions are encoded with the "
                    "compressor adapter (as stage 3 initialises the query reasoner)"
                )
                self._warned_query_fallback = True
            return "compressor"
        msg = f"this model has no {role!r} adapter; it has {list(self.roles)}"
        raise ConfigError(msg)

    @contextmanager
    def use_role(self, role: str) -> Iterator[str]:
        """Activate one adapter for the enclosed forward passes (holds the model lock)."""
        role = self._resolve_role(role)
        with self._lock:
            if self._active != role:
                # peft's set_adapter also flips requires_grad; training decides that, so keep the flags
                flags = [(p, p.requires_grad) for p in self._lora_params()]
                self.peft_model.set_adapter(role)
                for p, flag in flags:
                    p.requires_grad_(flag)
                self._active = role
            yield role

    def ensure_adapter(self, role: str, init_from: str | None = None) -> None:
        """Create adapter ``role`` if missing; ``init_from`` copies another adapter's weights into it."""
        if role not in ROLES:
            msg = f"role must be one of {ROLES}, got {role!r}"
            raise ConfigError(msg)
        with self._lock:
            if role not in self.peft_model.peft_config:
                first = next(iter(self.peft_model.peft_config.values()))
                with _quiet_peft():
                    self.peft_model.add_adapter(role, first)
                self._active = None
            if init_from is not None:
                src = self._resolve_role(init_from)
                params = dict(self.peft_model.named_parameters())
                with torch.no_grad():
                    for name, p in params.items():
                        if f".{role}." in name:
                            p.copy_(params[name.replace(f".{role}.", f".{src}.")])

    # ------------------------------------------------------------------ documents and queries
    def tokenize_documents(self, texts: Sequence[str], truncate: bool = False, name: str = "texts") -> dict:
        """Token ids ``<ENC><s>text</s><MEM0>..<MEM{n-1}>``, left-padded to the longest in the batch.

        The string ``<ENC><s>{text}</s>`` is tokenized as the official code tokenizes it (the text kept plain).
        Texts over ``doc_max_length`` tokens raise (chunk them first) unless ``truncate`` is set, which cuts as
        the official encoder does: the first ``doc_max_length + 3`` tokens are kept, so ``</s>`` is lost.
        """
        return self._document_batch(document_ids(self.tokenizer, texts), range(len(texts)), truncate, name)

    def _document_batch(self, rows: Sequence[list[int]], positions: Sequence[int], truncate: bool, name: str) -> dict:
        """The batch of :meth:`tokenize_documents` from rows ``[enc, bos, *text, eos]`` (``positions`` name them)."""
        limit = self.config.doc_max_length
        out = []
        for i, row in zip(positions, rows):
            if len(row) - 3 > limit:
                if not truncate:
                    msg = (
                        f"{name}[{i}] has {len(row) - 3} tokens, more than doc_max_length={limit}; split it with "
                        "model.chunk(text) (ClaraRAG.index does this for you), or pass truncate=True"
                    )
                    raise InputError(msg)
                # warn once per model (training and evaluation would otherwise flood the log), then debug
                log = logger.debug if self._warned_truncation else logger.warning
                log(
                    "%s[%d] has %d tokens; truncated to %d as the official encoder does",
                    name,
                    i,
                    len(row) - 3,
                    limit + 1,
                )
                self._warned_truncation = True
                row = row[: limit + 3]
            out.append([*row, *self.special_token_ids.mem])
        return self._pad(out)

    def _pad(self, rows: list[list[int]], labels: list[list[int]] | None = None) -> dict:
        width = max(len(r) for r in rows)
        pad = self.special_token_ids.pad
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
        batch = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        if labels is not None:
            lab = torch.tensor([[-100] * (width - len(r)) + r for r in labels], dtype=torch.long)
            batch["labels"] = lab.to(self.device)
        return batch

    def memories_from_batch(self, batch: dict, role: str = "compressor", return_mse: bool = False):
        """Memory vectors ``[B, n, H]`` of a batch from :meth:`tokenize_documents` (differentiable).

        They are the last layer's hidden states after the final norm at the ``n`` memory positions. With
        ``return_mse`` also returns the MSE between the mean memory vector and the mean of the other attended
        positions (the training's 0.1-weighted auxiliary term).
        """
        backbone = getattr(self.base_lm, self.base_lm.base_model_prefix)
        with self.use_role(role):
            hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        memory = hidden[:, -self.n_mem :, :]  # (B, n, H): memory tokens sit at the end, padding is on the left
        if not return_mse:
            return memory
        text_mask = batch["attention_mask"].clone()
        text_mask[:, -self.n_mem :] = 0
        text_mask = text_mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        text_mean = (hidden * text_mask).sum(1) / text_mask.sum(1).clamp(min=1)
        return memory, F.mse_loss(memory.mean(1).float(), text_mean.float())

    def _encode(
        self, texts: list[str], role: str, batch_size: int, truncate: bool, show_progress: bool, name: str
    ) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, self.n_mem, self.hidden_size)
        token_ids = document_ids(self.tokenizer, texts)  # tokenized once: for the order and for the batches
        order = sorted(range(len(texts)), key=lambda i: len(token_ids[i]))  # similar lengths together: less padding
        out = torch.empty(len(texts), self.n_mem, self.hidden_size)
        bar = tqdm(total=len(texts), desc=f"{role} ", unit="text", disable=not show_progress)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = self._document_batch([token_ids[i] for i in idx], idx, truncate, name)
                out[idx] = self.memories_from_batch(batch, role).float().cpu()
                bar.update(len(idx))
        bar.close()
        return out

    def compress(
        self, texts: Sequence[str], batch_size: int = 16, show_progress: bool = False, truncate: bool = False
    ) -> torch.Tensor:
        """Compress documents into memory vectors.

        Args:
            texts: documents of at most ``doc_max_length`` tokens each (use :meth:`chunk` for longer ones).
            batch_size: documents per forward pass.
            show_progress: show a progress bar.
            truncate: cut longer documents as the official code does (``doc_max_length + 1`` text tokens, no
                ``</s>``) instead of raising; for pre-chunked benchmark corpora evaluated like the official code.

        Returns:
            float32 CPU tensor ``[N, n_mem, hidden_size]``.
        """
        texts = check_texts(texts, "texts")
        return self._encode(texts, "compressor", batch_size, truncate, show_progress, "texts")

    def encode_query(self, questions: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        """Encode questions with the query reasoner: float32 CPU tensor ``[B, n_mem * hidden_size]``.

        Questions over ``doc_max_length`` tokens are truncated with a warning, as the official code does.
        """
        questions = check_texts(questions, "questions")
        return self._encode(questions, "query_reasoner", batch_size, True, False, "questions").flatten(1)

    @staticmethod
    def rank(queries: torch.Tensor, memories: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine similarity in fp32 between flattened queries ``[B, D]`` and memories ``[N, n, H]`` or ``[N, D]``.

        Returns:
            ``(scores, indices)``, each ``[B, min(k, N)]``, best first.
        """
        q = F.normalize(queries.float().flatten(1), dim=-1)
        m = F.normalize(memories.float().flatten(1).to(q.device), dim=-1)
        if q.shape[1] != m.shape[1]:
            msg = f"query width {q.shape[1]} does not match memory width {m.shape[1]}"
            raise InputError(msg)
        return torch.topk(q @ m.T, k=min(k, m.shape[0]), dim=-1)

    def chunk(self, text: str) -> list[Chunk]:
        """Split a text into pieces of at most ``doc_max_length`` tokens with character offsets.

        Pieces are counted as :meth:`compress` tokenizes them (inside ``<ENC><s>...</s>``), so every piece fits.
        """
        return chunk_text(text, self.tokenizer, self.config.doc_max_length, count_tokens=self.count_document_tokens)

    def count_document_tokens(self, text: str) -> int:
        """Text tokens of ``text`` as :meth:`compress` sees it (compared with ``doc_max_length``)."""
        return len(document_ids(self.tokenizer, [text])[0]) - 3

    # ------------------------------------------------------------------ generation
    def build_prompts(
        self,
        questions: Sequence[str],
        n_docs: Sequence[int],
        answers: Sequence[str] | None = None,
        task: str = "answer",
    ) -> dict:
        """Left-padded prompt batch with ``n_docs[i]`` memory slots for question ``i``.

        Prompts are rendered with the base tokenizer's chat template. With ``answers`` (training), each row is
        the conversation with the answer as the template's assistant turn (``" {answer}</s>"`` for Mistral), and
        ``labels`` mask the prompt's tokens with -100, as the official code does.
        """
        questions = check_texts(questions, "questions")
        if len(n_docs) != len(questions):
            msg = f"n_docs has {len(n_docs)} entries for {len(questions)} questions"
            raise InputError(msg)
        if answers is not None:
            answers = check_texts(answers, "answers")
            if len(answers) != len(questions):
                msg = f"answers has {len(answers)} entries for {len(questions)} questions"
                raise InputError(msg)
        rows, prompt_lengths = prompt_ids(
            self.tokenizer, self.special_token_ids, template_for(task), questions, n_docs, answers
        )
        if answers is None:
            return self._pad(rows)
        labels = [[-100] * n + r[n:] for r, n in zip(rows, prompt_lengths, strict=True)]
        return self._pad(rows, labels)

    def embed_with_memories(self, input_ids: torch.Tensor, memories: torch.Tensor) -> torch.Tensor:
        """Input embeddings ``[B, L, H]`` with every memory slot overwritten by ``memories`` ``[sum k_i, n, H]``.

        Slots are filled in reading order (question 0's documents first), one vectorised scatter, differentiable.
        """
        embeds = self.peft_model.get_input_embeddings()(input_ids)  # (B, L, H)
        slots = self.special_token_ids.is_mem(input_ids)  # (B, L)
        n_slots = int(slots.sum())
        if n_slots != memories.shape[0] * self.n_mem:
            msg = f"the prompts have {n_slots // self.n_mem} document slots but {memories.shape[0]} memories were given"
            raise InputError(msg)
        values = memories.to(embeds.device, embeds.dtype).reshape(-1, embeds.shape[-1])
        return embeds.masked_scatter(slots.unsqueeze(-1), values)

    def decoder_loss(self, prompt_batch: dict, memories: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy of the generator on a batch from ``build_prompts(..., answers=...)``."""
        embeds = self.embed_with_memories(prompt_batch["input_ids"], memories)
        with self.use_role("generator"):
            out = self.base_lm(
                inputs_embeds=embeds, attention_mask=prompt_batch["attention_mask"], labels=prompt_batch["labels"]
            )
        return out.loss

    def _check_memories(self, questions: list[str], memories: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(memories) != len(questions):
            msg = f"memories has {len(memories)} entries for {len(questions)} questions"
            raise InputError(msg)
        checked = []
        for i, m in enumerate(memories):
            if not isinstance(m, torch.Tensor):
                msg = f"memories[{i}] must be a torch.Tensor [k, {self.n_mem}, {self.hidden_size}], got {type(m)}"
                raise InputError(msg)
            m = m.unsqueeze(0) if m.dim() == 2 else m
            if m.dim() != 3 or tuple(m.shape[1:]) != (self.n_mem, self.hidden_size):
                msg = f"memories[{i}] has shape {tuple(m.shape)}, expected [k, {self.n_mem}, {self.hidden_size}]"
                raise InputError(msg)
            checked.append(m)
        return checked

    def _generation_inputs(self, questions: list[str], memories: list[torch.Tensor], task: str) -> dict:
        batch = self.build_prompts(questions, [m.shape[0] for m in memories], task=task)
        all_mem = torch.cat(memories) if memories else torch.zeros(0, self.n_mem, self.hidden_size)
        embeds = self.embed_with_memories(batch["input_ids"], all_mem)
        return {"inputs_embeds": embeds, "attention_mask": batch["attention_mask"]}

    def stop_token_ids(self) -> list[int]:
        """Tokens that end an answer: the tokenizer's eos and those of the base model's own generation config
        (Llama 3 ends a turn with ``<|eot_id|>``), which the official code's ``generate`` call stops at."""
        base = getattr(getattr(self.base_lm, "generation_config", None), "eos_token_id", None)
        base = base if isinstance(base, list) else [base] if base is not None else []
        return list(dict.fromkeys([self.special_token_ids.eos, *base]))

    def _generation_config(self, max_new_tokens: int | None) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=max_new_tokens or self.config.max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=self.stop_token_ids(),
            pad_token_id=self.special_token_ids.pad,
            bos_token_id=self.special_token_ids.bos,
        )

    def generate(
        self,
        questions: Sequence[str],
        memories: Sequence[torch.Tensor],
        max_new_tokens: int | None = None,
        batch_size: int = 8,
        task: str = "answer",
    ) -> list[str]:
        """Greedy answers from memory vectors.

        Args:
            questions: one question per answer.
            memories: per question a tensor ``[k_i, n_mem, hidden_size]`` of its documents, best first
                (``k_i`` may differ between questions).
            max_new_tokens: default ``config.max_new_tokens``.
            batch_size: questions per generate call.
            task: ``"answer"`` (default), ``"qa"`` or ``"paraphrase"`` (the stage-1 prompts; questions ignored).
        """
        questions = check_texts(questions, "questions")
        memories = self._check_memories(questions, memories)
        answers: list[str] = []
        for start in range(0, len(questions), batch_size):
            inputs = self._generation_inputs(
                questions[start : start + batch_size], memories[start : start + batch_size], task
            )
            with torch.inference_mode(), self.use_role("generator"):
                out = self.base_lm.generate(**inputs, generation_config=self._generation_config(max_new_tokens))
            # generate() with inputs_embeds and no input_ids returns only the new tokens
            answers += self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [a.strip() for a in answers]

    def stream(
        self,
        question: str,
        memories: torch.Tensor,
        max_new_tokens: int | None = None,
        task: str = "answer",
    ) -> Iterator[str]:
        """Yield the answer's text piece by piece as it is generated (greedy, same tokens as :meth:`generate`).

        Closing the iterator early (``break`` out of the loop, a client that disconnects) stops the generation at
        its next token instead of running it to ``max_new_tokens``.
        """
        questions = check_texts([question], "question")
        mems = self._check_memories(questions, [memories])
        inputs = self._generation_inputs(questions, mems, task)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        stop = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode(), self.use_role("generator"):
                    self.base_lm.generate(
                        **inputs,
                        generation_config=self._generation_config(max_new_tokens),
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_StopWhenSet(stop)]),
                    )
            except BaseException as err:  # re-raised in the consumer's thread
                errors.append(err)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        first = True
        try:
            for piece in streamer:
                if first:
                    piece = piece.lstrip()
                    first = not piece
                if piece:
                    yield piece
        finally:  # also when the consumer closes the generator early
            stop.set()
            thread.join()
        if errors:
            raise errors[0]

    def answer(
        self,
        questions: Sequence[str],
        candidates: Sequence[Candidates],
        k: int | None = None,
        max_new_tokens: int | None = None,
        truncate: bool = False,
    ) -> list[ClaraAnswer]:
        """Rank each question's candidates with the query reasoner and answer from its top ``k``.

        Args:
            questions: the questions.
            candidates: per question a list of texts or a memory tensor ``[m_i, n_mem, hidden_size]``;
                questions may have different numbers of candidates.
            k: documents per answer; default ``config.generation_top_k``.
            max_new_tokens: generation length.
            truncate: cut over-long text candidates as the official code does (see :meth:`compress`).

        Returns:
            Per question the answer and the chosen candidates' indices and scores, best first.
        """
        questions = check_texts(questions, "questions")
        k = k or self.config.generation_top_k
        if len(candidates) != len(questions):
            msg = f"candidates has {len(candidates)} entries for {len(questions)} questions"
            raise InputError(msg)
        memories = self._candidate_memories(candidates, truncate)
        queries = self.encode_query(questions)  # (B, D)
        picked, results = [], []
        for q, mem in zip(queries, memories):  # one small matmul per question: counts may differ
            if mem.shape[0] == 0:
                scores, idx = torch.zeros(0), torch.zeros(0, dtype=torch.long)
            else:
                scores, idx = (t[0] for t in self.rank(q.unsqueeze(0), mem, k))
            picked.append(mem[idx])
            results.append((idx.tolist(), scores.tolist()))
        texts = self.generate(questions, picked, max_new_tokens=max_new_tokens)
        return [ClaraAnswer(t, i, s) for t, (i, s) in zip(texts, results)]

    def _candidate_memories(self, candidates: Sequence[Candidates], truncate: bool = False) -> list[torch.Tensor]:
        """Memories per question; all text candidates are compressed in one batched call."""
        texts: list[str] = []
        for i, cands in enumerate(candidates):
            if not isinstance(cands, torch.Tensor):
                texts += check_texts(cands, f"candidates[{i}]")
        compressed = self.compress(texts, truncate=truncate) if texts else None
        out, pos = [], 0
        for i, cands in enumerate(candidates):
            if isinstance(cands, torch.Tensor):
                out.append(self._check_memories([""], [cands])[0].float().cpu())
            else:
                out.append(compressed[pos : pos + len(cands)])
                pos += len(cands)
            if out[-1].shape[0] == 0:
                logger.warning("candidates[%d] is empty; that question is answered without documents", i)
        return out
