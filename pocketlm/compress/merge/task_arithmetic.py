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
from pocketlm.compress.merge.sparsify import drop_random, magnitude_keep, rescale_l1, trim_magnitude


def elect_sign(deltas: Tensor, consensus: str) -> Tensor:
    """True where the elected sign of an entry is positive: the sign of Σᵢ wᵢδᵢ ("sum", TIES) or of
    the majority of signs ("count"); a tie counts as positive."""
    votes = deltas[0].clone() if consensus == "sum" else deltas[0].sign()
    for d in deltas[1:]:
        votes.add_(d if consensus == "sum" else d.sign())
    return votes >= 0


def task_vector_merge(tensors: Sequence[Tensor], base: Tensor, *, weight: Sequence[float],
                      density: Sequence[float] | None = None, sparsify: str | None = None,
                      consensus: str | None = None, normalize: bool = False, rescale: bool = False,
                      scale: float = 1.0, int8_mask: bool = False,
                      generator: torch.Generator | None = None) -> Tensor:
    """θ_base + scale · (sparsified, sign-agreeing, weighted task vectors), see the module docstring.

    Works one input at a time, so besides the k weighted task vectors it holds only a few tensors of
    one input's size (a 28 M-entry embedding merges in ~1 GB, not k times that), and in as few passes
    over memory as it can: each pass over the embedding costs about as much as its arithmetic."""
    if not tensors:
        return base
    dtype = work_dtype(base)
    b = base.to(dtype)
    density = density or [1.0] * len(tensors)
    w = [float(x) for x in weight]
    deltas = torch.empty((len(tensors), *base.shape), dtype=dtype)
    zero = torch.zeros((), dtype=dtype)
    for i, t in enumerate(tensors):
        d = torch.sub(t, b)  # t promoted to the work dtype inside the subtraction
        if sparsify == "magnitude" and not rescale:
            torch.where(magnitude_keep(d, density[i]), d, zero, out=deltas[i])
        else:
            if sparsify == "magnitude":
                kept = trim_magnitude(d, density[i])
            elif sparsify == "random":
                kept = drop_random(d, density[i], generator)
            else:
                kept = d
            deltas[i] = rescale_l1(kept, d) if (rescale and sparsify) else kept
            del kept
        del d
        deltas[i].mul_(w[i])
    if consensus:
        elected = elect_sign(deltas, consensus).to(dtype).mul_(2).sub_(1)  # +1 / -1 per entry
        mixed = torch.zeros(base.shape, dtype=dtype)
        divisor = torch.zeros(base.shape, dtype=dtype)
        for wi, d in zip(w, deltas):
            agree = torch.eq(d.sign(), elected).to(dtype)  # zeros (sign 0) agree with neither sign
            mixed.addcmul_(d, agree)
            divisor.add_(agree, alpha=wi)
            del agree
        divisor.masked_fill_(divisor == 0, 1)
    else:
        mixed = deltas.sum(dim=0)
        total = sum(w)
        divisor = torch.tensor(total if abs(total) >= 1e-8 else 1.0, dtype=dtype)
    del deltas
    if normalize:
        mixed.div_(divisor)
    if scale != 1:
        mixed.mul_(scale)
    return mixed.add_(b).to(base.dtype)


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
