"""``ClaraConfig``: the settings a CLaRa model is built from, read from the official ``config.json`` or from ours."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clara_plugins.errors import ConfigError

logger = logging.getLogger(__name__)

# the LoRA target modules of the official checkpoints: every linear layer of every block, lm_head excluded
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# our role names <-> the adapter names of the official checkpoints (only used at load and save time)
ROLE_TO_OFFICIAL = {
    "compressor": "encoder_adapter",
    "query_reasoner": "query_reasoner_adapter",
    "generator": "decoder_adapter",
}
OFFICIAL_TO_ROLE = {v: k for k, v in ROLE_TO_OFFICIAL.items()}
ROLES = tuple(ROLE_TO_OFFICIAL)

TRAINING_STAGES = ("stage1", "stage1_2", "stage2", "untrained")

OUR_CONFIG_FILE = "clara_config.json"
FORMAT_NAME = "clara-plugins"
FORMAT_VERSION = 1


@dataclass
class ClaraConfig:
    """Settings of a CLaRa model (reference sections 1, 5).

    Attributes:
        base_model: Hub id or local folder of the frozen base causal LM (``decoder_model_name`` officially).
        doc_max_length: most text tokens of one document; longer texts must be chunked first.
        compr_rate: compression rate; the number of memory vectors is ``doc_max_length // compr_rate``.
        generation_top_k: documents given to the generator per question by default.
        training_stage: ``stage1`` (Base), ``stage1_2`` (Instruct), ``stage2`` (E2E) or ``untrained``.
        lora_r: LoRA rank of every adapter.
        lora_alpha: LoRA alpha of every adapter.
        lora_dropout: LoRA dropout (only active in training).
        lora_target_modules: linear modules that carry LoRA weights.
        max_new_tokens: default generation length.
        base_vocab_size: vocabulary size of the base model before the CLaRa special tokens were added.
    """

    base_model: str
    doc_max_length: int = 256
    compr_rate: int = 16
    generation_top_k: int = 5
    training_stage: str = "stage1"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_target_modules: tuple[str, ...] = LORA_TARGETS
    max_new_tokens: int = 64
    base_vocab_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # unknown fields, kept so a round trip loses nothing

    def __post_init__(self) -> None:
        self.lora_target_modules = tuple(self.lora_target_modules)
        for name in ("doc_max_length", "compr_rate", "generation_top_k", "lora_r", "max_new_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                msg = f"ClaraConfig.{name} must be a positive integer, got {value!r}"
                raise ConfigError(msg)
        if self.doc_max_length < self.compr_rate:
            msg = f"ClaraConfig.doc_max_length ({self.doc_max_length}) must be >= compr_rate ({self.compr_rate})"
            raise ConfigError(msg)
        if self.training_stage not in TRAINING_STAGES:
            msg = f"ClaraConfig.training_stage must be one of {TRAINING_STAGES}, got {self.training_stage!r}"
            raise ConfigError(msg)
        if not 0.0 <= float(self.lora_dropout) < 1.0:
            msg = f"ClaraConfig.lora_dropout must be in [0, 1), got {self.lora_dropout!r}"
            raise ConfigError(msg)
        if not isinstance(self.base_model, str) or not self.base_model:
            msg = f"ClaraConfig.base_model must be a non-empty string, got {self.base_model!r}"
            raise ConfigError(msg)

    @property
    def n_mem(self) -> int:
        """Memory vectors per document."""
        return self.doc_max_length // self.compr_rate

    # ---- the official config.json ----
    @classmethod
    def from_official(cls, data: dict[str, Any], base_model: str | None = None) -> ClaraConfig:
        """Build from the official ``config.json`` contents; ``base_model`` overrides ``decoder_model_name``."""
        base = base_model or data.get("decoder_model_name")
        if not base:
            msg = "the official config.json has no decoder_model_name; pass base_model=... to from_pretrained"
            raise ConfigError(msg)
        known = {"decoder_model_name", "doc_max_length", "compr_rate", "generation_top_k", "training_stage", "lora_r"}
        return cls(
            base_model=base,
            doc_max_length=int(data.get("doc_max_length", 256)),
            compr_rate=int(data.get("compr_rate", 16)),
            generation_top_k=int(data.get("generation_top_k", 5)),
            training_stage=str(data.get("training_stage", "stage1")),
            lora_r=int(data.get("lora_r", 16)),
            lora_alpha=int(data.get("lora_alpha", 2 * int(data.get("lora_r", 16)))),
            extra={k: v for k, v in data.items() if k not in known},
        )

    def to_official(self) -> dict[str, Any]:
        """The official ``config.json`` contents for this config."""
        data = dict(self.extra)
        data.update(
            model_type="CLaRa",
            decoder_model_name=self.base_model,
            doc_max_length=self.doc_max_length,
            compr_rate=self.compr_rate,
            generation_top_k=self.generation_top_k,
            training_stage=self.training_stage,
            lora_r=self.lora_r,
            lora_alpha=self.lora_alpha,
            sep=True,
            different_mem_tokens=True,
        )
        return data

    # ---- our own clara_config.json ----
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["lora_target_modules"] = list(self.lora_target_modules)
        return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClaraConfig:
        data = dict(data)
        if data.pop("format", FORMAT_NAME) != FORMAT_NAME:
            msg = f"not a {FORMAT_NAME} config: format={data.get('format')!r}"
            raise ConfigError(msg)
        version = data.pop("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            msg = f"{OUR_CONFIG_FILE} has format_version {version}; this clara-plugins reads up to {FORMAT_VERSION}"
            raise ConfigError(msg)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = {k: data.pop(k) for k in list(data) if k not in names}
        if unknown:
            logger.warning("ignoring unknown config fields: %s", sorted(unknown))
        return cls(**data)

    def save(self, folder: str | Path) -> None:
        Path(folder, OUR_CONFIG_FILE).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
