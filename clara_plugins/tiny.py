"""Offline factory for tiny CLaRa models: a tokenizer trained here, a random Mistral-shaped base, LoRA adapters.

Nothing is downloaded. Tests, benchmarks and training from scratch build their models with it, and it can write an
official-layout checkpoint (``config.json``, ``adapters.pth``, ``decoder_first_last_layers.pth``) so the official
loader path is tested without the 7B weights.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

from clara_plugins.config import ROLES, ClaraConfig
from clara_plugins.model import ClaraModel

logger = logging.getLogger(__name__)

# a Mistral-v0.2-style chat template; the system message is folded into the first user turn
MISTRAL_CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='') -%}{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.system = message['content'] + '\\n\\n' -%}"
    "{%- elif message['role'] == 'user' -%}{{- '[INST] ' + ns.system + message['content'] + ' [/INST]' -}}"
    "{%- set ns.system = '' -%}"
    "{%- elif message['role'] == 'assistant' -%}{{- message['content'] + eos_token -}}"
    "{%- endif -%}{%- endfor -%}"
)

_FALLBACK_TEXTS = [
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France.",
    "Question: What is the capital of France?\nAnswer: Paris",
    "Water boils at 100 degrees Celsius at sea level. The Moon orbits the Earth.",
]
_SPECIALS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2 as in Llama/Mistral
_BYTES = [f"<0x{i:02X}>" for i in range(256)]  # byte fallback: any text tokenizes without <unk>


def build_tiny_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """Train a SentencePiece-style BPE tokenizer (``▁`` word marks, byte fallback) on ``texts``.

    Ids 0-2 are ``<unk>``, ``<s>``, ``</s>`` and 3-258 the byte tokens, as in Mistral's tokenizer.
    """
    texts = list(texts) if texts is not None else list(_FALLBACK_TEXTS)
    pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size - len(_BYTES), 300), special_tokens=_SPECIALS, show_progress=False
    )
    trainer_tok.train_from_iterator(texts, trainer)
    # rebuild with the byte tokens inside the model vocabulary (not as added tokens, which user text could hit)
    learned = sorted(trainer_tok.get_vocab().items(), key=lambda kv: kv[1])
    vocab = {tok: i for i, tok in enumerate(_SPECIALS + _BYTES)}
    for tok, _ in learned:
        vocab.setdefault(tok, len(vocab))
    merges = [tuple(m) for m in _merges(trainer_tok)]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(_SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="left",
        chat_template=MISTRAL_CHAT_TEMPLATE,
        model_max_length=4096,
    )


def _merges(tokenizer: Tokenizer) -> list[list[str]]:
    import json

    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return [m.split(" ") if isinstance(m, str) else m for m in merges]


def build_tiny_base(
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    seed: int = 0,
    initializer_range: float = 0.1,
) -> MistralForCausalLM:
    """A randomly initialised Mistral-shaped causal LM (untied embeddings, GQA, RoPE theta 1e6 like v0.2)."""
    config = MistralConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 3 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=4096,
        rope_theta=1e6,
        sliding_window=None,
        tie_word_embeddings=False,
        initializer_range=initializer_range,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=1,
    )
    torch.manual_seed(seed)
    return MistralForCausalLM(config).eval()


def randomize_adapters(model: ClaraModel, seed: int = 0, std: float = 0.05) -> None:
    """Give every LoRA matrix and every CLaRa token row random non-zero values (so each adapter visibly matters)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.peft_model.named_parameters()):
            if "lora_" in _:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
        first_new = model.config.base_vocab_size
        for matrix in (model.peft_model.get_input_embeddings().weight, model.base_lm.get_output_embeddings().weight):
            rows = matrix[first_new:]
            rows.copy_(torch.randn(rows.shape, generator=gen) * 0.1)
    model.invalidate_fingerprint()


def build_tiny_clara(
    texts: Sequence[str] | None = None,
    vocab_size: int = 2000,
    hidden_size: int = 64,
    num_layers: int = 2,
    doc_max_length: int = 64,
    compr_rate: int = 16,
    roles: Sequence[str] = ROLES,
    seed: int = 0,
    random_adapters: bool = True,
    lora_r: int = 8,
    base_dir: str | Path | None = None,
    **base_kwargs,
) -> ClaraModel:
    """A complete tiny CLaRa model in memory (fp32, CPU).

    Args:
        texts: text to train the tokenizer on (a few sentences are used if omitted).
        vocab_size: base vocabulary size (before the CLaRa tokens).
        hidden_size, num_layers: base model shape; ``base_kwargs`` go to :func:`build_tiny_base`.
        doc_max_length, compr_rate: compression settings; ``n_mem = doc_max_length // compr_rate``.
        roles: adapters to create.
        seed: seeds the base model and the adapters.
        random_adapters: random non-zero LoRA weights (True) or peft's identity init (False).
        lora_r: LoRA rank.
        base_dir: where to save the base model and tokenizer (recorded as ``config.base_model``); default: not
            saved, ``base_model`` is ``"tiny-random-mistral"``.
    """
    tokenizer = build_tiny_tokenizer(texts, vocab_size)
    base = build_tiny_base(len(tokenizer), hidden_size, num_layers, seed=seed, **base_kwargs)
    base_model = "tiny-random-mistral"
    if base_dir is not None:
        base.save_pretrained(base_dir)
        tokenizer.save_pretrained(base_dir)
        base_model = str(Path(base_dir).resolve())
    config = ClaraConfig(
        base_model=base_model,
        doc_max_length=doc_max_length,
        compr_rate=compr_rate,
        lora_r=lora_r,
        lora_alpha=2 * lora_r,
        training_stage="untrained",
    )
    model = ClaraModel.from_base(base, tokenizer, config, roles=roles, source="tiny-random")
    if random_adapters:
        randomize_adapters(model, seed=seed + 1)
    return model


def write_tiny_official_checkpoint(folder: str | Path, roles: Sequence[str] = ROLES, **kwargs) -> ClaraModel:
    """Write an official-layout CLaRa checkpoint of a random tiny model into ``folder``.

    The base model goes to ``folder/base`` (recorded as ``decoder_model_name``), the CLaRa files to ``folder``.
    Returns the in-memory model, whose outputs a loaded copy must reproduce.
    """
    from clara_plugins.checkpoints import save_official

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = build_tiny_clara(roles=roles, base_dir=folder / "base", **kwargs)
    save_official(model, folder)
    return model
