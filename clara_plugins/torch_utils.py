"""Small torch helpers shared by the model and the checkpoint code: device and dtype defaults, row checksums."""

from __future__ import annotations

import torch

from clara_plugins.errors import ConfigError


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` means bf16 on CUDA and fp32 elsewhere; strings like ``"bf16"`` or ``"float32"`` are accepted."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
    }
    if dtype not in names:
        msg = f"dtype must be one of {sorted(names)} or a torch.dtype, got {dtype!r}"
        raise ConfigError(msg)
    return names[dtype]


def row_checksums(matrix: torch.Tensor) -> torch.Tensor:
    """Two position-weighted sums per row (fp64), to tell later which rows of a [V, H] matrix changed."""
    m = matrix.detach().to("cpu", torch.float64)
    weights = torch.linspace(1.0, 2.0, m.shape[1], dtype=torch.float64)
    return torch.stack([m.sum(1), (m * weights).sum(1)], dim=1)
