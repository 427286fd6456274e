"""int8 memories: symmetric per-vector quantization of memory rows (half the bytes of fp16).

A flattened memory row ``[n * H]`` is ``n`` memory vectors of width ``H``; each vector gets its own scale
(``max |x| / 127``), so one large vector does not crush the resolution of the others. Stored: the int8 codes
``[N, n * H]`` and float32 scales ``[N, n]``, i.e. ``n * H + 4 * n`` bytes per chunk against ``2 * n * H`` in fp16
(51.6 % of fp16 at n = 16, H = 4096). ``bench/bench_int8.py`` measures what this changes in ranking and generation.
"""

from __future__ import annotations

import numpy as np

from clara_plugins.errors import InputError


def _groups(rows: np.ndarray, group: int) -> np.ndarray:
    if rows.ndim != 2 or group < 1 or rows.shape[1] % group:
        msg = f"rows must be [N, D] with D a multiple of group={group}, got shape {rows.shape}"
        raise InputError(msg)
    return rows.reshape(rows.shape[0], rows.shape[1] // group, group)


def quantize_rows(rows: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` ``[N, D]`` (float) -> int8 codes ``[N, D]`` and float32 scales ``[N, D // group]``.

    Args:
        rows: flattened memories.
        group: values per scale (the hidden size, for one scale per memory vector).
    """
    x = _groups(np.asarray(rows, dtype=np.float32), group)  # (N, G, group)
    if not np.isfinite(x).all():
        msg = "cannot quantize memories that hold NaN or infinite values"
        raise InputError(msg)
    scales = np.abs(x).max(axis=2) / 127.0  # (N, G)
    scales[scales == 0] = 1.0
    codes = np.clip(np.rint(x / scales[..., None]), -127, 127).astype(np.int8)
    return codes.reshape(rows.shape), scales.astype(np.float32)


def dequantize_rows(codes: np.ndarray, scales: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Inverse of :func:`quantize_rows`: ``[N, D]`` values of ``dtype``."""
    group = codes.shape[1] // scales.shape[1]
    x = _groups(codes, group).astype(np.float32) * scales[..., None].astype(np.float32)
    return x.reshape(codes.shape).astype(dtype)


def bytes_per_row(dim: int, group: int) -> int:
    """Stored bytes of one quantized row: the codes plus one float32 scale per group."""
    return dim + 4 * (dim // group)
