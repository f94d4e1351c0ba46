"""Task-vector merges: task arithmetic, TIES and DARE, one generalised function.

δᵢ = θᵢ − θ_base for every non-base model i, then
1. sparsify δᵢ (none; TIES: keep the top-`density` magnitudes; DARE: keep each entry with
   probability `density`, optionally rescaled: sparsify.py);
2. weight: δᵢ ← wᵢ δᵢ;
3. elect a sign per entry (TIES, `consensus="sum"`: the sign of Σᵢ wᵢδᵢ, a zero sum counting as
   positive; `"count"`: the majority of signs) and keep only the δᵢ that agree with it;
4. merged = θ_base + λ · Σᵢ (kept wᵢδᵢ) / D, with D = Σᵢ wᵢ over the kept entries (per entry) when
   `normalize`, else 1.

References: task arithmetic (Ilharco et al. 2023, arXiv:2212.04089), TIES-Merging (Yadav et al. 2023,
arXiv:2306.01708), DARE (Yu et al. 2023, arXiv:2311.03099). Defaults per method are mergekit's
(TIES normalises, DARE rescales, task arithmetic does neither). Parity: task_arithmetic and ties
equal mergekit 0.1.5 within 1e-6; dare_* are checked by their statistics and seed reproducibility
(tests/test_merge_methods.py).
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
from torch import Tensor

from pocketlm.compress.merge.linear import work_dtype
from pocketlm.compress.merge.registry import Method, Param, register
from pocketlm.compress.merge.sparsify import drop_random, rescale_l1, trim_magnitude


def elect_sign(weighted: Tensor, consensus: str) -> Tensor:
    """Mask [n, ...]: True where δᵢ has the elected sign of its entry (zeros never agree)."""
    sign = weighted.sign()
    votes = weighted.sum(dim=0) if consensus == "sum" else sign.sum(dim=0)
    elected = torch.where(votes >= 0, 1.0, -1.0).to(sign.dtype)
    return sign == elected


def task_vector_merge(tensors: Sequence[Tensor], base: Tensor, *, weight: Sequence[float],
                      density: Sequence[float] | None = None, sparsify: str | None = None,
                      consensus: str | None = None, normalize: bool = False, rescale: bool = False,
                      scale: float = 1.0, int8_mask: bool = False,
                      generator: torch.Generator | None = None) -> Tensor:
    """θ_base + scale · (sparsified, sign-agreeing, weighted task vectors), see the module docstring."""
    if not tensors:
        return base
    dtype = work_dtype(base)
    b = base.to(dtype)
    density = density or [1.0] * len(tensors)
    deltas = torch.empty((len(tensors), *base.shape), dtype=dtype)
    for i, t in enumerate(tensors):
        d = t.to(dtype) - b
        if sparsify == "magnitude":
            kept = trim_magnitude(d, density[i])
        elif sparsify == "random":
            kept = drop_random(d, density[i], generator)
        else:
            kept = d
        deltas[i] = rescale_l1(kept, d) if (rescale and sparsify) else kept
    w = torch.tensor([float(x) for x in weight], dtype=dtype).reshape(-1, *([1] * base.dim()))
    deltas.mul_(w)
    if consensus:
        agree = elect_sign(deltas, consensus).to(dtype)
        mixed = (deltas * agree).sum(dim=0)
        divisor = (w * agree).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = w.sum(dim=0)
        divisor = torch.where(divisor.abs() < 1e-8, torch.ones_like(divisor), divisor)
    if normalize:
        mixed = mixed / divisor
    if scale != 1:
        mixed = mixed * scale
    return (b + mixed).to(base.dtype)


def _params(normalize: bool, rescale: bool, density: bool) -> tuple[Param, ...]:
    ps = [Param("weight", float, "non_base"), Param("normalize", bool, default=normalize),
          Param("rescale", bool, default=rescale), Param("lambda", float, default=1.0, arg="scale"),
          Param("int8_mask", bool, default=False)]
    if density:
        ps.append(Param("density", float, "non_base", default=1.0))
    return tuple(ps)


for _name, _sparsify, _consensus, _normalize, _rescale, _url in (
        ("task_arithmetic", None, None, False, False, "https://arxiv.org/abs/2212.04089"),
        ("ties", "magnitude", "sum", True, False, "https://arxiv.org/abs/2306.01708"),
        ("dare_linear", "random", None, False, True, "https://arxiv.org/abs/2311.03099"),
        ("dare_ties", "random", "sum", False, True, "https://arxiv.org/abs/2311.03099")):
    register(Method(_name, partial(task_vector_merge, sparsify=_sparsify, consensus=_consensus),
                    _params(_normalize, _rescale, density=True), base="required",
                    random=_sparsify == "random", reference_url=_url))
