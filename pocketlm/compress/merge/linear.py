"""Weighted average of weights: model soups (Wortsman et al. 2022, arXiv:2203.05482) and WARM
(Ramé et al. 2024, arXiv:2401.12187, the same average over reward models fine-tuned from one init).

merged = Σ wᵢ θᵢ / Σ wᵢ (or Σ wᵢ θᵢ with `normalize: false`). Accumulated in float32 (float64 if
the inputs are), returned in the inputs' dtype, as mergekit's `linear` does. Parity: equal to
mergekit 0.1.5 `linear` within 1e-6 (tests/test_merge_mergekit.py).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from pocketlm.compress.merge.registry import Method, Param, register


def work_dtype(t: Tensor) -> torch.dtype:
    """The precision merge arithmetic runs in: float64 stays float64, everything else float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def linear(tensors: Sequence[Tensor], base: Tensor | None = None, *, weight: Sequence[float],
           normalize: bool = True) -> Tensor:
    """Σ wᵢ tensorsᵢ, divided by Σ wᵢ when `normalize`."""
    first = tensors[0]
    dtype = work_dtype(first)
    out = torch.zeros(first.shape, dtype=dtype)
    for t, w in zip(tensors, weight):
        out.add_(t.to(dtype), alpha=float(w))
    if normalize:
        total = float(sum(weight))
        if total <= 1e-12:
            raise ValueError(f"linear merge: the weights sum to {total:g}; a weighted mean needs a positive "
                             "sum (or set normalize: false)")
        out.div_(total)
    return out.to(first.dtype)


register(Method("linear", linear, (Param("weight", float, "input"), Param("normalize", bool, default=True)),
                base="ignored", reference_url="https://arxiv.org/abs/2203.05482"))
