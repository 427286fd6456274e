"""Losses of CLaRa training: the straight-through top-k, multi-positive InfoNCE, and the memory MSE term.

Reference: ``docs/clara-reference.md`` sections 3 and 6 (arXiv 2511.18659).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clara_plugins.errors import InputError

DEFAULT_TEMPERATURE = 0.02


def straight_through_topk(
    scores: torch.Tensor,
    k: int,
    temperature: float = DEFAULT_TEMPERATURE,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Differentiable top-k selection (straight-through estimator), as in CLaRa end-to-end training.

    Forward: the hard one-hot selection of the ``k`` best candidates in descending score order (slot 0 holds the
    best). Backward: slot ``j`` takes the gradient of ``softmax(scores / temperature)`` over the candidates not picked
    in slots ``0..j-1``. No Gumbel noise.

    Args:
        scores: ``(B, N)`` candidate scores (cosine similarities).
        k: number of slots; at most the number of valid candidates of every row.
        temperature: softmax temperature of the backward pass (0.02 in the paper).
        mask: optional ``(B, N)`` bool, True for real candidates, so rows may have different candidate counts.

    Returns:
        ``(B, k, N)`` selection weights: exactly one-hot in the forward value.
    """
    if scores.dim() != 2:
        msg = f"scores must have shape (B, N), got {tuple(scores.shape)}"
        raise InputError(msg)
    valid = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    n_valid = int(valid.sum(-1).min()) if scores.shape[0] else 0
    if k < 1 or k > n_valid:
        msg = f"k must be between 1 and the smallest number of candidates ({n_valid}), got {k}"
        raise InputError(msg)
    if temperature <= 0:
        msg = f"temperature must be > 0, got {temperature}"
        raise InputError(msg)
    logits = scores.float() / temperature  # (B, N)
    available = valid.clone()
    slots = []
    for _ in range(k):
        masked = logits.masked_fill(~available, float("-inf"))
        soft = masked.softmax(dim=-1)  # (B, N)
        hard = F.one_hot(masked.argmax(dim=-1), scores.shape[-1]).to(soft.dtype)  # (B, N)
        slots.append(hard + (soft - soft.detach()))  # value exactly hard (x - x == 0), gradient soft's
        available = available & ~hard.bool()
    return torch.stack(slots, dim=1).to(scores.dtype)  # (B, k, N)


def hard_topk(scores: torch.Tensor, k: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Indices ``(B, k)`` of the best ``k`` valid candidates, best first (the inference-time selection)."""
    if mask is not None:
        scores = scores.masked_fill(~mask.to(torch.bool), float("-inf"))
    return scores.topk(k, dim=-1).indices


def cosine_scores(queries: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
    """Cosine similarity in fp32 between flattened queries and documents.

    Args:
        queries: ``(B, D)`` or ``(B, n, h)``.
        docs: ``(B, N, D)`` / ``(B, N, n, h)`` (candidates per query) or ``(M, D)`` / ``(M, n, h)`` (shared).

    Returns:
        ``(B, N)`` or ``(B, M)`` scores.
    """
    q = F.normalize(queries.reshape(queries.shape[0], -1).float(), dim=-1)  # (B, D)
    per_query = docs.dim() == queries.dim() + 1
    if per_query:
        d = F.normalize(docs.reshape(docs.shape[0], docs.shape[1], -1).float(), dim=-1)  # (B, N, D)
        return torch.einsum("bd,bnd->bn", q, d)
    d = F.normalize(docs.reshape(docs.shape[0], -1).float(), dim=-1)  # (M, D)
    return q @ d.T


def multi_positive_info_nce(
    scores: torch.Tensor,
    positives: torch.Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-positive InfoNCE: ``-log(sum_pos exp(s/t) / sum_all exp(s/t))``, averaged over queries.

    Every positive counts towards the numerator, so a query with several relevant documents is rewarded for
    ranking any of them first (the supervised retrieval baseline of the paper, cosine / 0.02).

    Args:
        scores: ``(B, N)`` cosine scores of each query against its candidates.
        positives: ``(B, N)`` bool, True where the candidate is relevant; every row needs at least one.
        temperature: the softmax temperature.
        mask: optional ``(B, N)`` bool of real candidates.

    Returns:
        The scalar loss.
    """
    positives = positives.to(torch.bool)
    if mask is not None:
        positives = positives & mask.to(torch.bool)
    if not bool(positives.any(-1).all()):
        msg = "positives must mark at least one valid candidate in every row"
        raise InputError(msg)
    logits = scores.float() / temperature
    if mask is not None:
        logits = logits.masked_fill(~mask.to(torch.bool), float("-inf"))
    log_all = torch.logsumexp(logits, dim=-1)  # (B,)
    log_pos = torch.logsumexp(logits.masked_fill(~positives, float("-inf")), dim=-1)  # (B,)
    return (log_all - log_pos).mean()


def select_memories(selection: torch.Tensor, memories: torch.Tensor) -> torch.Tensor:
    """Apply a ``(B, k, N)`` selection to candidate memories ``(B, N, n, h)``: returns ``(B, k, n, h)``."""
    return torch.einsum("bkn,bnmh->bkmh", selection.to(memories.dtype), memories)
