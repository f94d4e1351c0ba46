"""Spherical linear interpolation between two models, one whole tensor at a time (Shoemake 1985;
popularised for LLM merging by mergekit).

Each tensor is flattened and both endpoints are normalised; with Ω the angle between them,
merged = sin((1−t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b. The unnormalised tensors are interpolated, so
a merge of two tensors of equal norm stays on that sphere. Nearly colinear (or antipodal) pairs,
|cos Ω| > 0.9995, fall back to linear interpolation, as mergekit does. `t` is the weight of the
non-base model: t=0 returns the base, t=1 the other model; mergekit's `t` gradients and filters
(e.g. a different schedule for self_attn and mlp) resolve per tensor in recipe.py.
Parity: equal to mergekit 0.1.5 `slerp` within 1e-6 (tests/test_merge_mergekit.py).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from pocketlm.compress.merge.linear import work_dtype
from pocketlm.compress.merge.registry import Method, Param, register

DOT_THRESHOLD = 0.9995  # above this |cos|, the arc is numerically a line
EPS = 1e-8


def slerp_pair(a: Tensor, b: Tensor, t: float) -> Tensor:
    """The point at fraction t along the great-circle arc from a to b (a at t=0, b at t=1)."""
    dtype = work_dtype(a)
    x, y = a.reshape(-1).to(dtype), b.reshape(-1).to(dtype)
    nx, ny = torch.linalg.vector_norm(x), torch.linalg.vector_norm(y)
    nx = nx if nx > EPS else torch.ones_like(nx)
    ny = ny if ny > EPS else torch.ones_like(ny)
    dot = ((x / nx) * (y / ny)).sum().clamp(-1, 1)
    if dot.abs() > DOT_THRESHOLD or x.numel() == 0:
        out = (1 - t) * x + t * y
    else:
        omega = torch.acos(dot)
        s = torch.sin(omega)
        out = torch.sin((1 - t) * omega) / s * x + torch.sin(t * omega) / s * y
    return out.reshape(a.shape).to(a.dtype)


def slerp(tensors: Sequence[Tensor], base: Tensor, *, t: float) -> Tensor:
    """SLERP from `base` (t=0) to the one other input (t=1)."""
    if len(tensors) != 1:
        raise ValueError(f"slerp merges a base and exactly one other model, got {len(tensors)} others")
    return slerp_pair(base, tensors[0], float(t))


register(Method("slerp", slerp, (Param("t", float),), base="required", min_inputs=2, max_inputs=2,
                reference_url="https://en.wikipedia.org/wiki/Slerp"))
