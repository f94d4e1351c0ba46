"""Model Stock (Jang et al. 2024, arXiv:2403.19522): average k fine-tunes, then pull the average
towards the base by a ratio set by the angle between their task vectors.

With δᵢ = θᵢ − θ₀ and cos θ the mean pairwise cosine of the δᵢ (over the whole tensor, or per
output row with `filter_wise: true`), t = k·cos θ / (1 + (k−1)·cos θ) and
merged = t · mean(θᵢ) + (1 − t) · θ₀ (the paper's eq. for k models). Where 1 + (k−1)cos θ ≈ 0 the
estimate has no finite value and the base is kept (t = 0), as mergekit does. Needs the base and at
least two fine-tunes. Parity: equal to mergekit 0.1.5 `model_stock` within 1e-6.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from pocketlm.compress.merge.registry import Method, Param, register


def model_stock(tensors: Sequence[Tensor], base: Tensor, *, filter_wise: bool = False) -> Tensor:
    if len(tensors) < 2:
        raise ValueError("model_stock needs at least two fine-tuned models besides the base")
    shape = base.shape
    if filter_wise:
        w0 = base if base.dim() > 1 else base.unsqueeze(0)
        ws = [t if t.dim() > 1 else t.unsqueeze(0) for t in tensors]
    else:
        w0, ws = base.reshape(-1), [t.reshape(-1) for t in tensors]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1:]:
            norms = (torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)).clamp(min=1e-6)
            cosines.append(((a * b).sum(dim=-1) / norms).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    k = len(ws)
    denominator = 1 + (k - 1) * cos
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(cos), k * cos / torch.where(singular, 1, denominator))
    average = sum(ws) / k
    return (t * average + (1 - t) * w0).reshape(shape)


register(Method("model_stock", model_stock, (Param("filter_wise", bool, default=False),), base="required",
                min_inputs=3, reference_url="https://arxiv.org/abs/2403.19522"))
