"""Straight-through top-k and InfoNCE against hand-worked numbers."""

from __future__ import annotations

import pytest
import torch

from clara_plugins.errors import InputError
from clara_plugins.training.losses import (
    cosine_scores,
    hard_topk,
    multi_positive_info_nce,
    select_memories,
    straight_through_topk,
)


def test_forward_is_hard_topk_in_descending_order() -> None:
    torch.manual_seed(0)
    scores = torch.randn(6, 9)
    sel = straight_through_topk(scores, k=4)
    assert sel.shape == (6, 4, 9)
    assert torch.equal(sel, torch.nn.functional.one_hot(hard_topk(scores, 4), 9).float())
    picked = sel.argmax(-1)
    assert torch.all(scores.gather(1, picked)[:, :-1] >= scores.gather(1, picked)[:, 1:])


def test_gradient_matches_worked_example() -> None:
    # scores s = [0.2, 0.5, 0.1, 0.4], temperature T = 0.1, k = 2, loss L = sum_j w_j . sel_j
    # slot 0 picks index 1, slot 1 picks index 3, so L = w[0][1] + w[1][3] = 2 + 8 = 10.
    # Backward, slot j: p_j = softmax(s / T) over the not-yet-picked documents and dL/ds = p_j * (w_j - p_j . w_j) / T
    #   p_0 = softmax([2, 5, 1, 4])        = [0.034671, 0.696387, 0.012755, 0.256187], p_0 . w_0 = 2.490457
    #   p_1 = softmax([2, -inf, 1, 4])     = [0.114195, 0,        0.042010, 0.843795], p_1 . w_1 = 7.615404
    #   sum: [-3.503424, -3.415481, -0.193541, 7.112446]
    scores = torch.tensor([[0.2, 0.5, 0.1, 0.4]], requires_grad=True)
    weights = torch.tensor([[[1.0, 2, 3, 4], [5, 6, 7, 8]]])
    sel = straight_through_topk(scores, k=2, temperature=0.1)
    loss = (sel * weights).sum()
    assert loss.item() == pytest.approx(10.0)
    loss.backward()
    expected = torch.tensor([[-3.503424, -3.415481, -0.193541, 7.112446]])
    torch.testing.assert_close(scores.grad, expected, atol=1e-5, rtol=1e-5)


def test_no_gumbel_noise_and_default_temperature() -> None:
    scores = torch.tensor([[0.30, 0.31, 0.10]], requires_grad=True)
    a = straight_through_topk(scores, k=1)
    b = straight_through_topk(scores, k=1)
    assert torch.equal(a, b)
    (a[0, 0] * torch.tensor([1.0, 0.0, 0.0])).sum().backward()
    p = torch.softmax(scores.detach() / 0.02, -1)[0]  # default temperature 0.02
    expected = p * (torch.tensor([1.0, 0, 0]) - p[0]) / 0.02
    torch.testing.assert_close(scores.grad[0], expected)


def test_mask_allows_different_candidate_counts() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 5.0, 9.0]])
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    sel = straight_through_topk(scores, k=2, mask=mask)
    assert sel[1].argmax(-1).tolist() == [1, 0]
    with pytest.raises(InputError, match="k must be"):
        straight_through_topk(scores, k=3, mask=mask)


def test_select_memories_picks_rows_in_order() -> None:
    mem = torch.arange(3 * 2 * 2, dtype=torch.float).reshape(1, 3, 2, 2)  # (B=1, N=3, n=2, h=2)
    sel = straight_through_topk(torch.tensor([[0.1, 0.9, 0.5]]), k=2)
    out = select_memories(sel, mem)
    assert torch.equal(out[0, 0], mem[0, 1]) and torch.equal(out[0, 1], mem[0, 2])


def test_info_nce_multi_positive_worked_example() -> None:
    # logits = s / 0.5 = [2, 1, 0]; positives {0, 1}: loss = logsumexp([2, 1, 0]) - logsumexp([2, 1])
    scores = torch.tensor([[1.0, 0.5, 0.0]])
    loss = multi_positive_info_nce(scores, torch.tensor([[True, True, False]]), temperature=0.5)
    expected = torch.logsumexp(torch.tensor([2.0, 1, 0]), 0) - torch.logsumexp(torch.tensor([2.0, 1]), 0)
    assert loss.item() == pytest.approx(expected.item())
    assert loss.item() == pytest.approx(0.0943441, abs=1e-6)  # log(1 + 1 / (e^2 + e))
    with pytest.raises(InputError):
        multi_positive_info_nce(scores, torch.tensor([[False, False, False]]))


def test_cosine_scores_shapes() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    shared = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(cosine_scores(q, shared), torch.tensor([[1.0, 0.70710677], [0.0, 0.70710677]]))
    per_query = shared.unsqueeze(0).expand(2, 2, 2)
    torch.testing.assert_close(cosine_scores(q, per_query), cosine_scores(q, shared))
