"""Checkpoints written the way the official CLaRa code writes them, by the libraries it uses.

The official ``CLaRa`` holds a plain transformers causal LM (``self.decoder``) into which transformers' peft
integration injects the adapters (``decoder.add_adapter(LoraConfig(..., target_modules="all-linear"), name)``). Its
``save_pretrained`` writes ``torch.save({name: decoder.get_adapter_state_dict(name)})`` to ``adapters.pth``, the
decoder's ``embed_tokens`` / ``lm_head`` parameters to ``decoder_first_last_layers.pth`` and its config. Here the
same calls run on a tiny random Mistral whose base folder keeps the original vocabulary size in ``config.json``,
so peft's ``save_embedding_layers="auto"`` decides by itself to add the resized matrices to every adapter dict, as
it does for the real checkpoints. Nothing in the files is written by clara-plugins.

The in-memory decoder is also the reference: running it the official way (``set_adapter(name)``, formatted strings
tokenized with special tokens parsed) gives the outputs the official loader gives for these files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from clara_plugins.tiny import build_tiny_base, build_tiny_tokenizer

OFFICIAL_ORDER = ("encoder_adapter", "decoder_adapter", "query_reasoner_adapter")  # as stage 1_2 then 2 add them


@dataclass
class OfficialCheckpoint:
    folder: Path
    decoder: torch.nn.Module  # the transformers model with the three adapters injected
    tokenizer: object  # the official decoder_tokenizer (CLaRa tokens added)
    n_mem: int
    doc_max_length: int


def write_as_official_code(
    folder: Path,
    texts: list[str],
    doc_max_length: int = 64,
    compr_rate: int = 16,
    lora_r: int = 8,
    seed: int = 5,
    adapter_names: tuple[str, ...] = OFFICIAL_ORDER,
    training_stage: str = "stage2",
) -> OfficialCheckpoint:
    folder.mkdir(parents=True, exist_ok=True)
    base_dir = folder / "base"
    tokenizer = build_tiny_tokenizer(texts, 1000)
    build_tiny_base(len(tokenizer), hidden_size=64, num_layers=2, seed=seed).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)

    # CLaRa._create_decoder / _create_decoder_tokenizer, as the official code does them
    decoder = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(base_dir), use_fast=True, padding_side="left")
    n_mem = doc_max_length // compr_rate
    existing = tok.special_tokens_map.get("additional_special_tokens", [])
    tok.add_special_tokens(
        {"additional_special_tokens": existing + [f"<MEM{i}>" for i in range(n_mem)] + ["<AE>", "<ENC>", "<SEP>"]}
    )
    if tok.pad_token_id is None:
        tok.pad_token_id = tok.bos_token_id
    decoder.resize_token_embeddings(len(tok))
    peft_config = LoraConfig(
        task_type="CAUSAL_LM", r=lora_r, lora_alpha=2 * lora_r, target_modules="all-linear", lora_dropout=0.1
    )
    for name in adapter_names:
        _add_adapter(decoder, peft_config, name)

    # "training": every LoRA matrix and the new token rows get seeded random values
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, param in sorted(decoder.named_parameters()):
            if "lora_" in pname:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
        first_new = json.loads((base_dir / "config.json").read_text())["vocab_size"]
        for matrix in (decoder.get_input_embeddings().weight, decoder.get_output_embeddings().weight):
            matrix[first_new:] = torch.randn(matrix[first_new:].shape, generator=gen) * 0.1

    # CLaRa.save_pretrained
    adapters = {name: {k: v.cpu() for k, v in _adapter_state_dict(decoder, name).items()} for name in adapter_names}
    torch.save(adapters, folder / "adapters.pth")
    first_last = {
        k: v.cpu() for k, v in decoder.named_parameters() if "lm_head.weight" in k or "embed_tokens.weight" in k
    }
    torch.save(first_last, folder / "decoder_first_last_layers.pth")
    config = {
        "model_type": "CLaRa",
        "decoder_model_name": str(base_dir.resolve()),
        "doc_max_length": doc_max_length,
        "compr_rate": compr_rate,
        "generation_top_k": 2,
        "training_stage": training_stage,
        "lora": True,
        "lora_r": lora_r,
        "sep": True,
        "different_mem_tokens": True,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    decoder.eval()
    return OfficialCheckpoint(folder, decoder, tok, n_mem, doc_max_length)


# transformers' peft integration (add_adapter, get_adapter_state_dict, set_adapter) is what the official code calls.
# transformers 5 requires a peft newer than some environments have; there the same peft functions the integration
# wraps are called directly (inject_adapter_in_model, get_peft_model_state_dict with its default
# save_embedding_layers="auto"), with the base_model_name_or_path the integration records.
def _integration_ok() -> bool:
    import importlib.metadata

    import transformers
    from packaging import version

    needed = "0.22.0" if version.parse(transformers.__version__).major >= 5 else "0.5.0"
    return version.parse(importlib.metadata.version("peft")) >= version.parse(needed)


def _add_adapter(decoder, config: LoraConfig, name: str) -> None:
    if _integration_ok():
        decoder.add_adapter(config, adapter_name=name)
        return
    from peft import inject_adapter_in_model

    config.base_model_name_or_path = decoder.__dict__.get("name_or_path")
    inject_adapter_in_model(config, decoder, name)
    decoder.peft_config = {**getattr(decoder, "peft_config", {}), name: config}


def _adapter_state_dict(decoder, name: str) -> dict:
    if _integration_ok():
        return decoder.get_adapter_state_dict(name)
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(decoder, adapter_name=name)


def set_adapter(decoder, name: str) -> None:
    if _integration_ok():
        decoder.set_adapter(name)
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in decoder.modules():
        if isinstance(module, BaseTunerLayer):
            module.set_adapter(name)


# ---------------------------------------------------------------------------- the official procedure on it
def official_memories(ck: OfficialCheckpoint, texts: list[str], adapter: str) -> torch.Tensor:
    """``_prepare_encoder_inputs`` then ``compress``: ``<ENC><s>{text}</s>`` padded to doc_max_length + 3."""
    tok = ck.tokenizer
    enc = tok(
        [f"<ENC>{tok.bos_token}{t}{tok.eos_token}" for t in texts],
        return_tensors="pt",
        padding="max_length",
        max_length=ck.doc_max_length + 3,
        truncation=True,
        add_special_tokens=False,
    )
    mem = torch.tensor(tok.convert_tokens_to_ids([f"<MEM{i}>" for i in range(ck.n_mem)])).repeat(len(texts), 1)
    ids = torch.cat([enc["input_ids"], mem], 1)
    mask = torch.cat([enc["attention_mask"], torch.ones_like(mem)], 1)
    set_adapter(ck.decoder, adapter)
    with torch.no_grad():
        hidden = ck.decoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    return hidden[:, -ck.n_mem :, :]


def official_prompt(tok, question: str, n_docs: int, n_mem: int) -> str:
    """``_blend_prompt_and_selected_memory_tokens``: the answer prompt rendered by the chat template."""
    docs = ("".join(f"<MEM{i}>" for i in range(n_mem)) + "<SEP>") * n_docs
    system = (
        "You are a helpful assistant. Your task is to extract relevant information from provided documents and "
        "to answer to questions as briefly as possible."
    )
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": f"Background:\n{docs}\n\nQuestion:{question}"},
    ]
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)


def official_greedy(ck: OfficialCheckpoint, question: str, memories: torch.Tensor, steps: int) -> list[int]:
    """Memory slots overwritten with the documents' vectors, greedy decoding with the decoder adapter."""
    tok = ck.tokenizer
    ids = tok(official_prompt(tok, question, memories.shape[0], ck.n_mem), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ids])
    embeds = ck.decoder.get_input_embeddings()(ids).clone()
    first = tok.convert_tokens_to_ids("<MEM0>")
    positions = ((ids[0] >= first) & (ids[0] < first + ck.n_mem)).nonzero().flatten()
    embeds[0, positions] = memories.reshape(-1, memories.shape[-1])
    set_adapter(ck.decoder, "decoder_adapter")
    out = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(ck.decoder(inputs_embeds=embeds).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            out.append(nxt)
            embeds = torch.cat([embeds, ck.decoder.get_input_embeddings()(torch.tensor([[nxt]]))], 1)
    return out
