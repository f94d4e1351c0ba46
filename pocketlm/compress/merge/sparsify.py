"""Sparsifying a task vector (fine-tuned − base) before it is merged.

- `trim_magnitude`: keep the `density` fraction of entries with the largest |δ| over the whole
  tensor, at least one (TIES' "trim" step, Yadav et al. 2023, arXiv:2306.01708).
- `drop_random`: keep each entry independently with probability `density` (DARE's drop, Yu et al.
  2023, arXiv:2311.03099).
- `rescale_l1`: scale the kept entries so the tensor's L1 norm equals the original's. This is
  mergekit's `rescale: true`; the paper divides by `density` instead, which equals the L1 rule in
  expectation (E‖m⊙δ‖₁ = p‖δ‖₁) and differs from it by O(1/√n) on a tensor of n entries.
"""

from __future__ import annotations

import torch
from torch import Tensor

RESCALE_EPS = 1e-7


def magnitude_keep(delta: Tensor, density: float) -> Tensor:
    """Boolean mask of the round-down(density · n) largest-magnitude entries (at least one; all when
    density >= 1, none when density <= 0)."""
    if density >= 1:
        return torch.ones(delta.shape, dtype=torch.bool)
    keep = torch.zeros(delta.numel(), dtype=torch.bool)
    if density <= 0 or delta.numel() == 0:
        return keep.reshape(delta.shape)
    k = max(1, int(density * delta.numel()))
    # a full descending sort, not topk: equal magnitudes then break the way mergekit's do
    keep[torch.argsort(delta.abs().reshape(-1).float(), descending=True)[:k]] = True
    return keep.reshape(delta.shape)


def trim_magnitude(delta: Tensor, density: float) -> Tensor:
    """Zero all but the round-down(density · n) largest-magnitude entries (at least one)."""
    if density >= 1:
        return delta
    return torch.where(magnitude_keep(delta, density), delta, 0)


def drop_random(delta: Tensor, density: float, generator: torch.Generator | None) -> Tensor:
    """Keep each entry with probability `density` (a Bernoulli mask drawn from `generator`)."""
    if density >= 1:
        return delta
    mask = torch.bernoulli(torch.full(delta.shape, float(density), dtype=torch.float32), generator=generator)
    return (delta.float() * mask).to(delta.dtype)


def rescale_l1(kept: Tensor, original: Tensor) -> Tensor:
    """`kept` scaled so ‖kept‖₁ = ‖original‖₁ (unchanged when either norm is ~0)."""
    before, after = original.abs().sum(), kept.abs().sum()
    if before < RESCALE_EPS or after < RESCALE_EPS:
        return kept
    return kept * (before / after)
