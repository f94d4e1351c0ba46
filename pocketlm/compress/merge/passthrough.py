"""Passthrough: copy one model's tensor (optionally scaled). With `slices`, this stacks layer ranges
of one or more models into a deeper model: depth up-scaling as in SOLAR (Kim et al. 2023,
arXiv:2312.15166), where two copies of a 32-layer model, minus 8 layers each at the seam, make a
48-layer one. The stacking itself (renumbering layers, the new layer count) is the driver's job
(stream.py); this function sees one tensor at a time.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from pocketlm.compress.merge.registry import Method, Param, register


def passthrough(tensors: Sequence[Tensor], base: Tensor | None = None, *,
                scale: Sequence[float | None] | None = None) -> Tensor:
    if len(tensors) != 1:
        raise ValueError(f"passthrough takes exactly one model per tensor, got {len(tensors)}")
    s = scale[0] if scale else None
    return tensors[0] if s is None else tensors[0] * s


register(Method("passthrough", passthrough, (Param("scale", float, "input", default=None),), base="ignored",
                max_inputs=1, reference_url="https://arxiv.org/abs/2312.15166"))
