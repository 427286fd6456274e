"""Loading and saving CLaRa checkpoints: the official layout and our safetensors format.

Official layout (reference section 5), per ``compression-N`` folder: ``config.json``, ``adapters.pth`` (a pickled
``{adapter name: peft state dict}``) and ``decoder_first_last_layers.pth`` (full embedding and output matrices).
Both pickles are read with ``torch.load(weights_only=True)`` only. Unlike the official loader, every adapter
present is loaded for its role, a missing or malformed file is an error naming it, and Hub subfolders work. Each
adapter dict may also carry full ``embed_tokens`` / ``lm_head`` matrices (peft saves them when the vocabulary was
resized); they are applied as the official loader applies them, after ``decoder_first_last_layers.pth``, in file
order, with a warning when they differ from that file.

Reading returns :class:`CheckpointParts`; ``ClaraModel.from_pretrained`` builds itself from them, so this module
does not import the model.

Our format (``save_pretrained``): ``clara_config.json``, ``adapters.safetensors`` (keys ``{role}.layers...``),
``token_rows.safetensors`` (only the embedding/output rows that differ from the base model), the tokenizer, and
``base/`` with the base model when it is not a Hub id.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from clara_plugins.config import OFFICIAL_TO_ROLE, OUR_CONFIG_FILE, ROLE_TO_OFFICIAL, ROLES, ClaraConfig
from clara_plugins.errors import CheckpointError, ClaraError
from clara_plugins.torch_utils import default_device, resolve_dtype, row_checksums

if TYPE_CHECKING:
    from clara_plugins.model import ClaraModel

logger = logging.getLogger(__name__)

OFFICIAL_FILES = ("config.json", "adapters.pth", "decoder_first_last_layers.pth")
ADAPTERS_FILE = "adapters.safetensors"
ROWS_FILE = "token_rows.safetensors"
BASE_DIR = "base"
_LORA_KEY = re.compile(r"(layers\.\d+\..*\.lora_[AB])(?:\.[^.]+)?\.weight$")


# ---------------------------------------------------------------------------- locating a checkpoint
def bundled_tiny_dir() -> Path:
    """Folder of the bundled, trained tiny model (built by ``scripts/build_tiny_model.py``)."""
    return Path(str(importlib.resources.files("clara_plugins.assets"))) / "tiny"


def locate(source: str | Path, subfolder: str | None = None, **hub_kwargs: Any) -> tuple[Path, str]:
    """Return ``(folder, kind)`` where kind is ``"ours"`` or ``"official"``; downloads from the Hub if needed."""
    if str(source) == "tiny":
        folder = bundled_tiny_dir()
        if not (folder / OUR_CONFIG_FILE).exists():
            msg = (
                f"the bundled tiny model is missing from this install ({folder}); rebuild it with "
                "`python scripts/build_tiny_model.py` from a source checkout"
            )
            raise CheckpointError(msg)
        return folder, "ours"
    root = Path(source).expanduser()
    if root.exists():
        folder = root / subfolder if subfolder else root
        if not folder.is_dir():
            msg = f"{folder} is not a folder"
            raise CheckpointError(msg)
    elif _looks_like_hub_id(str(source)):
        folder = _download(str(source), subfolder, **hub_kwargs)
    else:
        msg = f"no checkpoint at {source!r}: not a local folder, not a Hub id, not 'tiny'"
        raise CheckpointError(msg)
    if (folder / OUR_CONFIG_FILE).exists():
        return folder, "ours"
    if (folder / "config.json").exists():
        return folder, "official"
    hint = " (official checkpoints keep their files in a subfolder: pass subfolder='compression-16')"
    msg = f"{folder} has neither {OUR_CONFIG_FILE} nor config.json" + ("" if subfolder else hint)
    raise CheckpointError(msg)


def _looks_like_hub_id(source: str) -> bool:
    return re.fullmatch(r"[\w.-]+/[\w.-]+", source) is not None and not source.startswith((".", "/"))


def _download(repo_id: str, subfolder: str | None, **hub_kwargs: Any) -> Path:
    from huggingface_hub import snapshot_download

    patterns = [f"{subfolder}/*"] if subfolder else None
    try:
        root = Path(snapshot_download(repo_id, allow_patterns=patterns, **hub_kwargs))
    except Exception as err:  # the hub raises many types (offline, 404, auth): all mean "not loadable"
        msg = f"could not download {repo_id!r} (subfolder {subfolder!r}) from the Hugging Face Hub: {err}"
        raise CheckpointError(msg) from err
    folder = root / subfolder if subfolder else root
    if not folder.is_dir():
        msg = f"{repo_id!r} has no subfolder {subfolder!r}"
        raise CheckpointError(msg)
    return folder


# ---------------------------------------------------------------------------- loading
@dataclass
class CheckpointParts:
    """What a checkpoint folder holds, read and checked, before a ``ClaraModel`` is built from it.

    ``ClaraModel.from_pretrained`` builds the model from ``base_lm``, ``tokenizer``, ``config`` and ``roles``
    (:meth:`ClaraModel.from_base`), then calls :func:`load_weights` with these parts.
    """

    folder: Path
    kind: str  # "official" or "ours"
    config: ClaraConfig
    base_lm: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    base_source: str
    roles: list[str]
    adapters: dict[str, dict[str, torch.Tensor]]  # role -> LoRA tensors, in the file's order
    adapters_file: str  # for error messages: ``path['adapter name']`` is appended
    matrices: dict[str, torch.Tensor] = field(default_factory=dict)  # official: full embed_tokens / lm_head
    # official: (adapter name, "embed_tokens" | "lm_head", matrix) saved inside adapters.pth, in file order
    matrix_copies: list[tuple[str, str, torch.Tensor]] = field(default_factory=list)
    rows: dict[str, torch.Tensor] = field(default_factory=dict)  # ours: only the changed rows


def read_checkpoint(
    source: str | Path,
    subfolder: str | None = None,
    base_model: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    **hub_kwargs: Any,
) -> CheckpointParts:
    """Locate, read and check a checkpoint (see :meth:`ClaraModel.from_pretrained` for the arguments)."""
    folder, kind = locate(source, subfolder, **hub_kwargs)
    device = torch.device(device) if device is not None else default_device()
    dtype = resolve_dtype(dtype, device)
    reader = _read_ours if kind == "ours" else _read_official
    base_kwargs = {k: v for k, v in hub_kwargs.items() if k in ("token", "cache_dir")}  # e.g. gated Mistral
    return reader(folder, base_model, device, dtype, **base_kwargs)


def load_weights(model: ClaraModel, parts: CheckpointParts) -> None:
    """Fill a model built from ``parts`` with the checkpoint's token rows and adapters (shapes checked)."""
    if parts.kind == "official":
        _load_full_matrices(model, parts.matrices, parts.folder / "decoder_first_last_layers.pth")
        targets = _token_matrices(model)
        for name, kind, matrix in parts.matrix_copies:  # what the official loader does next: last copy wins
            if kind in targets:  # a tied lm_head is the embedding matrix, already loaded
                _copy_checked(targets[kind], matrix, f"{parts.adapters_file}[{name!r}] {kind}")
    else:
        _apply_rows(model, parts.rows, parts.folder / ROWS_FILE)
    for role, state in parts.adapters.items():
        name = ROLE_TO_OFFICIAL[role] if parts.kind == "official" else role  # as the file names it
        _load_adapter(model, role, state, f"{parts.adapters_file}[{name!r}]")


def _load_base(
    base: str, device: torch.device, dtype: torch.dtype, tokenizer_from: str | Path | None = None, **hub_kwargs: Any
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if Path(base).is_absolute() and not Path(base).exists():
        msg = (
            f"the base model folder {base!r} recorded in the checkpoint does not exist on this machine; pass "
            "base_model='mistralai/Mistral-7B-Instruct-v0.2' (or a local copy) to from_pretrained"
        )
        raise CheckpointError(msg)
    placement = {"device_map": {"": str(device)}} if device.type != "cpu" else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_from or base), **hub_kwargs)
        lm = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype, **placement, **hub_kwargs)
    except (OSError, ValueError) as err:
        msg = f"could not load the base model {base!r}: {err}"
        raise CheckpointError(msg) from err
    except Exception as err:  # pickle refused by weights_only loading (nothing ran), or damaged safetensors
        kind = type(err).__name__
        if kind not in {"UnpicklingError", "SafetensorError"}:
            raise
        why = "pickles load weights-only and this one holds more than tensors" if kind == "UnpicklingError" else kind
        msg = f"refused the base model weights in {base!r} ({why}): {str(err)[:300]}; use a safetensors copy"
        raise CheckpointError(msg) from err
    return lm, tokenizer


def _torch_load(path: Path) -> dict:
    if not path.is_file():
        msg = f"missing checkpoint file {path}; refusing to run with untrained weights"
        raise CheckpointError(msg)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged or malicious pickle: never fall back to weights_only=False
        msg = f"cannot read {path} as a weights-only torch file: {err}"
        raise CheckpointError(msg) from err
    if not isinstance(data, dict) or not data:
        msg = f"{path} does not hold a non-empty dict of tensors (got {type(data).__name__})"
        raise CheckpointError(msg)
    return data


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        msg = f"cannot read {path}: {err}"
        raise CheckpointError(msg) from err
    if not isinstance(data, dict):
        msg = f"{path} must hold a JSON object"
        raise CheckpointError(msg)
    return data


def _read_official(
    folder: Path, base_model: str | None, device: torch.device, dtype: torch.dtype, **hub_kwargs: Any
) -> CheckpointParts:
    data = _read_json(folder / "config.json")
    if str(data.get("model_type", "")).lower() != "clara":
        msg = f"{folder / 'config.json'} is not a CLaRa config (model_type={data.get('model_type')!r})"
        raise CheckpointError(msg)
    try:
        config = ClaraConfig.from_official(data, base_model)
    except ClaraError as err:
        msg = f"{folder / 'config.json'}: {err}"
        raise CheckpointError(msg) from err
    adapters_file = folder / "adapters.pth"
    adapters = _torch_load(adapters_file)
    matrices_file = folder / "decoder_first_last_layers.pth"
    matrices = _token_matrix_state(_torch_load(matrices_file), matrices_file)
    unknown = [name for name in adapters if name not in OFFICIAL_TO_ROLE]
    if unknown:
        msg = f"{adapters_file}: unknown adapter names {unknown}; expected {sorted(OFFICIAL_TO_ROLE)}"
        raise CheckpointError(msg)
    lora: dict[str, dict[str, torch.Tensor]] = {}
    copies_in_order: list[tuple[str, str, torch.Tensor]] = []
    differing = []
    for name, state in adapters.items():  # the file's order: the official loader's order, the last copy wins
        if not isinstance(state, dict):
            msg = f"{adapters_file}[{name!r}] is a {type(state).__name__}, not a state dict"
            raise CheckpointError(msg)
        lora[OFFICIAL_TO_ROLE[name]], copies = _split_embedding_copies(state)
        for kind, tensor in copies.items():
            if kind in matrices and not _same(tensor, matrices[kind]):
                differing.append(f"{name}:{kind}")
            copies_in_order.append((name, kind, tensor))
    if not differing:
        copies_in_order = []  # copies equal to decoder_first_last_layers.pth (the usual case) change nothing
    else:
        logger.warning(
            "%s: the embedding copies saved with adapters %s differ from %s; using what the official loader ends up "
            "with (each adapter's copy loaded after that file, in file order: the last one wins)",
            adapters_file,
            differing,
            matrices_file.name,
        )
    lm, tokenizer = _load_base(config.base_model, device, dtype, **hub_kwargs)
    roles = [r for r in ROLES if r in lora]
    return CheckpointParts(
        folder,
        "official",
        config,
        lm,
        tokenizer,
        config.base_model,
        roles,
        lora,
        str(adapters_file),
        matrices=matrices,
        matrix_copies=copies_in_order,
    )


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return isinstance(a, torch.Tensor) and a.shape == b.shape and torch.equal(a.to(b.dtype), b)


def _split_embedding_copies(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """An official adapter dict's LoRA tensors, and the full embedding/output matrices peft saved beside them
    (``get_peft_model_state_dict(save_embedding_layers="auto")`` adds them when the vocabulary was resized)."""
    lora, copies = {}, {}
    for key, value in state.items():
        kind = _matrix_kind(key) if canonical_lora_key(key) is None else None
        if kind is None:
            lora[key] = value
        else:
            copies[kind] = value
    return lora, copies


def _matrix_kind(key: str) -> str | None:
    """``"embed_tokens"`` or ``"lm_head"`` for a full-matrix key (``model.embed_tokens.weight``,
    ``base_model.model.lm_head.weight``, ...), else None."""
    for kind in ("embed_tokens", "lm_head"):
        if re.search(rf"(^|\.){kind}(\.base_layer)?\.weight$", key):
            return kind
    return None


def _token_matrix_state(state: dict, file: Path) -> dict[str, torch.Tensor]:
    """``{"embed_tokens": [V, H], "lm_head": [V, H]}`` from ``decoder_first_last_layers.pth``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        kind = _matrix_kind(key)
        if kind is None or kind in out:
            msg = f"{file}: unexpected or repeated key {key!r}; expected one embed_tokens and one lm_head matrix"
            raise CheckpointError(msg)
        out[kind] = value
    if "embed_tokens" not in out:
        msg = f"{file}: no embed_tokens matrix among {list(state)[:6]}"
        raise CheckpointError(msg)
    return out


def _copy_checked(target: torch.Tensor, value: torch.Tensor, what: str) -> None:
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(target.shape):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        msg = f"{what}: shape {shape} does not match the model's {tuple(target.shape)}"
        raise CheckpointError(msg)
    with torch.no_grad():
        target.copy_(value.to(target.device, target.dtype))


def _load_full_matrices(model: ClaraModel, state: dict[str, torch.Tensor], file: Path) -> None:
    for kind, matrix in _token_matrices(model).items():  # lm_head only when not tied to the embeddings
        if kind not in state:
            msg = f"{file}: no lm_head matrix, and the base model's output matrix is not tied to its embeddings"
            raise CheckpointError(msg)
        _copy_checked(matrix, state[kind], f"{file} {kind}")


def canonical_lora_key(name: str) -> str | None:
    """``...layers.0.self_attn.q_proj.lora_A[.adapter].weight`` -> ``layers.0.self_attn.q_proj.lora_A.weight``."""
    match = _LORA_KEY.search(name)
    return f"{match.group(1)}.weight" if match else None


def adapter_tensors(model: ClaraModel, role: str) -> dict[str, torch.nn.Parameter]:
    """The LoRA parameters of one role, keyed by :func:`canonical_lora_key`."""
    return {
        canonical_lora_key(n): p for n, p in model.peft_model.named_parameters() if f".{role}." in n and "lora_" in n
    }


def _load_adapter(model: ClaraModel, role: str, state: dict, what: str) -> None:
    ours = adapter_tensors(model, role)
    theirs: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        canon = canonical_lora_key(key)
        theirs[canon or key] = value
    missing, unexpected = sorted(ours.keys() - theirs.keys()), sorted(theirs.keys() - ours.keys())
    if missing or unexpected:
        msg = (
            f"{what}: {len(missing)} missing LoRA tensors (e.g. {missing[:2]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:2]})"
        )
        raise CheckpointError(msg)
    for key, param in ours.items():
        _copy_checked(param, theirs[key], f"{what} {key}")


def _read_ours(
    folder: Path, base_model: str | None, device: torch.device, dtype: torch.dtype, **hub_kwargs: Any
) -> CheckpointParts:
    try:
        config = ClaraConfig.from_dict(_read_json(folder / OUR_CONFIG_FILE))
    except (ClaraError, TypeError) as err:
        msg = f"{folder / OUR_CONFIG_FILE}: {err}"
        raise CheckpointError(msg) from err
    for name in (ADAPTERS_FILE, ROWS_FILE):
        if not (folder / name).is_file():
            msg = f"missing checkpoint file {folder / name}; refusing to run with untrained weights"
            raise CheckpointError(msg)
    base = base_model or (str(folder / BASE_DIR) if (folder / BASE_DIR).is_dir() else config.base_model)
    tensors = _read_safetensors(folder / ADAPTERS_FILE)
    rows = _read_safetensors(folder / ROWS_FILE)
    roles = [r for r in ROLES if any(k.startswith(f"{r}.") for k in tensors)]
    adapters = {r: {k[len(r) + 1 :]: v for k, v in tensors.items() if k.startswith(f"{r}.")} for r in roles}
    lm, tokenizer = _load_base(base, device, dtype, tokenizer_from=folder, **hub_kwargs)
    return CheckpointParts(
        folder,
        "ours",
        config,
        lm,
        tokenizer,
        base,
        roles or ["compressor"],
        adapters,
        str(folder / ADAPTERS_FILE),
        rows=rows,
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as err:
        msg = f"cannot read {path} as safetensors: {err}"
        raise CheckpointError(msg) from err


def _token_matrices(model: ClaraModel) -> dict[str, torch.Tensor]:
    out = {"embed_tokens": model.peft_model.get_input_embeddings().weight}
    head = model.base_lm.get_output_embeddings()
    if head is not None and head.weight is not out["embed_tokens"]:
        out["lm_head"] = head.weight
    return out


def _apply_rows(model: ClaraModel, rows: dict[str, torch.Tensor], file: Path) -> None:
    for name, matrix in _token_matrices(model).items():
        idx, values = rows.get(f"{name}.rows"), rows.get(f"{name}.values")
        if idx is None or values is None:
            msg = f"{file}: missing {name}.rows / {name}.values"
            raise CheckpointError(msg)
        if idx.numel() and (int(idx.max()) >= matrix.shape[0] or values.shape != (idx.numel(), matrix.shape[1])):
            msg = f"{file}: {name} rows do not fit the model's {tuple(matrix.shape)} matrix"
            raise CheckpointError(msg)
        with torch.no_grad():
            matrix[idx.to(matrix.device)] = values.to(matrix.device, matrix.dtype)


# ---------------------------------------------------------------------------- saving
def save_pretrained(model: ClaraModel, path: str | Path, include_base: bool | None = None) -> Path:
    """Save ``model`` in our format.

    Args:
        model: the model.
        path: target folder (created).
        include_base: also write the base model into ``path/base``; default: when the base is not a Hub id
            (a local folder or an in-memory tiny model).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.config.save(path)
    tensors = {
        f"{role}.{key}": p.detach().cpu().contiguous()
        for role in model.roles
        for key, p in adapter_tensors(model, role).items()
    }
    save_file(tensors, str(path / ADAPTERS_FILE), metadata={"format": "pt"})
    save_file(_changed_rows(model), str(path / ROWS_FILE), metadata={"format": "pt"})
    model.tokenizer.save_pretrained(path)
    portable_tokenizer_config(path)
    if include_base is None:  # a Hub id is referenced; anything else must travel with the checkpoint
        include_base = Path(model.base_source).exists() or not _looks_like_hub_id(model.base_source)
    if include_base:
        save_base(model, path / BASE_DIR)
    return path


def portable_tokenizer_config(folder: Path) -> None:
    """Make a saved ``tokenizer_config.json`` readable by transformers 4.56+ as well as 5.x.

    transformers 5 writes ``tokenizer_class: TokenizersBackend`` and the added special tokens as a list under
    ``extra_special_tokens``; 4.x knows neither. ``PreTrainedTokenizerFast`` with ``additional_special_tokens``
    loads the same ``tokenizer.json`` in both.
    """
    file = folder / "tokenizer_config.json"
    config = json.loads(file.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):
        config.pop("extra_special_tokens")
        config["additional_special_tokens"] = extra
    config.pop("backend", None)
    file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _changed_rows(model: ClaraModel) -> dict[str, torch.Tensor]:
    """Rows of the CLaRa tokens plus any base row that differs from the base model."""
    base_vocab = model.config.base_vocab_size or 0
    out = {}
    for name, matrix in _token_matrices(model).items():
        changed = torch.zeros(matrix.shape[0], dtype=torch.bool)
        changed[base_vocab:] = True
        before = model._base_row_sums.get(name)
        if before is not None:
            changed[:base_vocab] = (row_checksums(matrix[:base_vocab]) != before[:base_vocab]).any(1)
        idx = changed.nonzero().flatten()
        out[f"{name}.rows"] = idx
        out[f"{name}.values"] = matrix.detach()[idx.to(matrix.device)].cpu().contiguous()
    return out


def save_base(model: ClaraModel, folder: Path) -> None:
    """Write the base model alone (no LoRA, the base vocabulary) as a loadable transformers folder."""
    folder.mkdir(parents=True, exist_ok=True)
    base_vocab = model.config.base_vocab_size
    state = {}
    for name, tensor in model.base_lm.state_dict().items():
        if "lora_" in name:
            continue
        name = name.replace(".base_layer.", ".")
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            tensor = tensor[:base_vocab]
        state[name] = tensor.detach().cpu().contiguous()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = copy.deepcopy(model.base_lm.config)
    config.vocab_size = base_vocab
    # transformers only fills ``architectures`` in a model's own save_pretrained; tools that read the folder use it
    config.architectures = [type(model.base_lm).__name__]
    config.save_pretrained(folder)


def save_official(model: ClaraModel, folder: str | Path) -> Path:
    """Write ``model`` in the official layout (used by tests and by ``clara convert --to official``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_official(), indent=2) + "\n")
    matrices = {
        f"{'model.' if n == 'embed_tokens' else ''}{n}.weight": m.detach().cpu().clone()
        for n, m in _token_matrices(model).items()
    }
    # as the official save does: each adapter's dict also carries the resized matrices (peft's
    # save_embedding_layers="auto" adds them because CLaRa added tokens to the vocabulary)
    adapters = {
        ROLE_TO_OFFICIAL[role]: {
            **{f"model.{k}": p.detach().cpu().clone() for k, p in adapter_tensors(model, role).items()},
            **{k: v.clone() for k, v in matrices.items()},
        }
        for role in model.roles
    }
    torch.save(adapters, folder / "adapters.pth")
    torch.save(matrices, folder / "decoder_first_last_layers.pth")
    return folder
