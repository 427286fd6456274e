"""The training configuration: one dataclass, read from a JSON, YAML or TOML file, checked when built."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from clara_plugins.errors import ConfigError

STAGES = ("1", "2", "3", "retrieval")
# official hyper-parameters (reference section 6); the retrieval baseline uses stage 2's
_DEFAULT_LR = {"1": 1e-4, "2": 1e-4, "3": 5e-6, "retrieval": 1e-4}
_DEFAULT_SCHEDULE = {"1": "cosine", "2": "cosine", "3": "constant", "retrieval": "constant"}


@dataclass
class TrainConfig:
    """Everything a training run needs; defaults follow the paper where it says something.

    Attributes:
        stage: "1" (compressor pretraining), "2" (instruction tuning), "3" (end-to-end), or "retrieval"
            (supervised InfoNCE baseline for the query reasoner).
        model: what ``ClaraModel.from_pretrained`` loads ("tiny", a Hub id, or a folder), unless a model is passed in.
        subfolder: Hub subfolder such as "compression-16".
        train_file: training data: official JSONL for the stage, or a BEIR folder for "retrieval" (may be empty
            when rows are passed to ``train`` directly).
        eval_file: optional held-out data in the same format; its loss is logged every ``eval_every`` steps.
        beir_split: qrels split used when ``train_file`` is a BEIR folder.
        output_dir: where checkpoints, ``metrics.jsonl``, ``metrics.png`` and the final model go.
        learning_rate: peak learning rate (None: 1e-4 / 1e-4 / 5e-6 / 1e-4 for stage 1 / 2 / 3 / retrieval).
        weight_decay: AdamW weight decay of the adapters (never applied to the embedding rows).
        adam_betas: AdamW betas.
        max_grad_norm: gradient clipping norm (0 disables).
        batch_size: examples per process per micro-step.
        grad_accum_steps: micro-steps per optimiser step (global batch = batch_size x processes x this).
        max_steps: optimiser steps; None means ``epochs`` passes over the data.
        epochs: passes over the data when ``max_steps`` is None (may be fractional).
        schedule: "cosine" (with linear warm-up) or "constant" (None: cosine for stages 1-2, constant for 3).
        warmup_ratio: fraction of the steps spent warming up (cosine only; 3 % in the paper).
        precision: "fp32" or "bf16" (autocast through accelerate).
        gradient_checkpointing: recompute activations in backward to save memory.
        seed: seeds Python, NumPy and torch, and the data order.
        mse_weight: weight of the memory MSE term in stages 1-2 (0.1 in the paper).
        temperature: softmax temperature of the straight-through top-k and of InfoNCE.
        top_k: documents given to the generator in stage 3 (selected from the N candidates).
        max_docs: at most this many documents per stage-2 row are used (k=5 in the paper).
        fresh_generator: stage 2 re-initialises the generator adapter (as the paper does).
        init_query_reasoner: stage 3 / retrieval copy the compressor into the query reasoner first (as the paper
            does); False continues an existing query reasoner.
        n_candidates: candidates mined per query when the retrieval stage reads a BEIR folder.
        in_batch_negatives: the retrieval stage scores each question against every candidate of its micro-batch
            (the other questions' candidates are extra negatives), not only its own list.
        train_compressor: whether the compressor learns; None: the paper's choice (stages 1 and 2 yes, stage 3 and
            retrieval no). ``True`` for retrieval makes it a dual encoder (documents encoded with gradient at every
            step; it changes what documents are encoded with, so rebuild any index made before it, and train the
            generator after it); ``False`` for stage 2 trains the generator alone on frozen memories (keeps a
            retrieval geometry learnt before). Stages 1 and 3 cannot change it.
        eval_max_examples: at most this many held-out rows are evaluated (loss, recall, answers).
        eval_generate: also generate answers on held-out rows and log EM / F1 / cover-EM.
        max_new_tokens: generation length for that evaluation.
        freeze_dropout: set every dropout probability to 0 while training (exact comparisons across process
            counts); the model stays in train mode, so gradient checkpointing still applies.
        log_every: log the running training loss every this many steps.
        eval_every: evaluate on ``eval_file`` every this many steps (0: only at the end).
        save_every: write a checkpoint every this many steps (0: only the final model).
        resume_from: a checkpoint folder, or "latest" for the newest one in ``output_dir``.
        plot: draw ``metrics.png`` at the end.
        progress: show a tqdm progress bar on the main process.
    """

    stage: str = "1"
    model: str = "tiny"
    subfolder: str | None = None
    train_file: str = ""
    eval_file: str | None = None
    beir_split: str = "train"
    output_dir: str = "runs/clara"
    learning_rate: float | None = None
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.95)
    max_grad_norm: float = 1.0
    batch_size: int = 8
    grad_accum_steps: int = 1
    max_steps: int | None = None
    epochs: float = 1.0
    schedule: str | None = None
    warmup_ratio: float = 0.03
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    seed: int = 0
    mse_weight: float = 0.1
    temperature: float = 0.02
    top_k: int = 5
    max_docs: int = 5
    fresh_generator: bool = True
    init_query_reasoner: bool = True
    n_candidates: int = 20
    in_batch_negatives: bool = True
    train_compressor: bool | None = None
    eval_max_examples: int = 200
    eval_generate: bool = True
    max_new_tokens: int = 32
    freeze_dropout: bool = False
    log_every: int = 10
    eval_every: int = 0
    save_every: int = 0
    resume_from: str | None = None
    plot: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        self.stage = str(self.stage)
        _check(self.stage in STAGES, "stage", self.stage, f"one of {list(STAGES)}")
        self.adam_betas = tuple(self.adam_betas)  # type: ignore[assignment]
        if self.learning_rate is None:
            self.learning_rate = _DEFAULT_LR[self.stage]
        if self.schedule is None:
            self.schedule = _DEFAULT_SCHEDULE[self.stage]
        _check(self.learning_rate > 0, "learning_rate", self.learning_rate, "> 0")
        _check(self.schedule in ("cosine", "constant"), "schedule", self.schedule, "'cosine' or 'constant'")
        _check(self.precision in ("fp32", "bf16"), "precision", self.precision, "'fp32' or 'bf16'")
        _check(
            len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas),
            "adam_betas",
            self.adam_betas,
            "two numbers in [0, 1)",
        )
        for name in (
            "batch_size",
            "grad_accum_steps",
            "top_k",
            "max_docs",
            "log_every",
            "n_candidates",
            "eval_max_examples",
            "max_new_tokens",
        ):
            _check(
                isinstance(getattr(self, name), int) and getattr(self, name) >= 1,
                name,
                getattr(self, name),
                "an integer >= 1",
            )
        for name in ("eval_every", "save_every"):
            _check(
                isinstance(getattr(self, name), int) and getattr(self, name) >= 0,
                name,
                getattr(self, name),
                "an integer >= 0",
            )
        _check(
            self.max_steps is None or (isinstance(self.max_steps, int) and self.max_steps >= 1),
            "max_steps",
            self.max_steps,
            "None or an integer >= 1",
        )
        _check(self.epochs > 0, "epochs", self.epochs, "> 0")
        _check(0 <= self.warmup_ratio < 1, "warmup_ratio", self.warmup_ratio, "in [0, 1)")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        _check(self.max_grad_norm >= 0, "max_grad_norm", self.max_grad_norm, ">= 0")
        _check(self.mse_weight >= 0, "mse_weight", self.mse_weight, ">= 0")
        _check(self.temperature > 0, "temperature", self.temperature, "> 0")
        required = {"1": True, "3": False}.get(self.stage)  # stage 1 trains it; stage 3 must not move documents
        _check(
            self.train_compressor is None or required is None or self.train_compressor == required,
            "train_compressor",
            self.train_compressor,
            f"None or {required} for stage {self.stage}",
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (tuples become lists)."""
        out = asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        return out


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        msg = f"TrainConfig.{name} must be {expected}, got {value!r}"
        raise ConfigError(msg)


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read a ``TrainConfig`` from a ``.json``, ``.yaml``/``.yml`` or ``.toml`` file; ``overrides`` win.

    Relative data and output paths are kept as written (relative to the working directory).
    An unknown key is an error naming the key, so a typo never silently falls back to a default.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"config file not found: {str(path)!r}"
        raise ConfigError(msg)
    data = _read_mapping(path)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        msg = f"{path}: unknown config key(s) {unknown}; known keys: {sorted(known)}"
        raise ConfigError(msg)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**data)


def _read_mapping(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".toml":
            import tomllib  # Python >= 3.11

            data = tomllib.loads(text)
        else:
            msg = f"config file must end in .json, .yaml, .yml or .toml, got {str(path)!r}"
            raise ConfigError(msg)
    except (ValueError, ImportError) as err:
        if isinstance(err, ConfigError):
            raise
        msg = f"{path}: cannot parse the config ({err})"
        raise ConfigError(msg) from err
    if not isinstance(data, dict):
        msg = f"{path}: the config must be a mapping of keys to values, got {type(data).__name__}"
        raise ConfigError(msg)
    return data
