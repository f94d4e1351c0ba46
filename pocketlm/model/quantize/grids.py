"""The integer grids of pocketlm's weight-only kernels, and round-to-nearest onto them.

- int8: symmetric, one scale per output channel: w ~= q * s, q in [-127, 127].
- int4: asymmetric, one (scale, zero) per group of `group_size` input features:
  w ~= (q - 8) * s + z with q in [0, 15] (torch's packed-int4 convention; z = min + 8 s).

A `GridWeight` is one matrix on a grid; every method (RTN here, GPTQ and AWQ beside it) produces
them, and `pocketlm.model.quantize.kernels.to_kernels` turns them into kernel layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class GridWeight:
    """A weight matrix [N, K] as integer codes plus scales (and zeros for int4)."""

    scheme: str  # int8 | int4
    q: Tensor  # int8 [N, K] (int8) or int32 codes in [0, 15] [N, K] (int4)
    scales: Tensor  # [N] (int8) or [N, K / group_size] (int4)
    zeros: Tensor | None = None  # int4: [N, K / group_size]
    group_size: int | None = None  # int4 only

    def dequantize(self) -> Tensor:
        if self.scheme == "int8":
            return self.q.float() * self.scales.float()[:, None]
        return dequantize_int4(self.q, self.scales.float(), self.zeros.float(), self.group_size)

    @staticmethod
    def cat(parts: list["GridWeight"]) -> "GridWeight":
        """Rows of several matrices on the same grid stacked (the grids are per row: fused q/k/v, gate/up)."""
        zeros = None if parts[0].zeros is None else torch.cat([p.zeros for p in parts])
        return GridWeight(parts[0].scheme, torch.cat([p.q for p in parts]), torch.cat([p.scales for p in parts]),
                          zeros, parts[0].group_size)


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Per-output-channel symmetric int8: returns (q int8 [N, K], scales fp32 [N])."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def quantize_int4(weight: Tensor, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Group-wise asymmetric int4: returns (q int32 in [0,15] [N, K], scales [N, G], zeros [N, G]).

    Dequantization: w ~= (q - 8) * scale + zero, with zero = min + 8 * scale.
    """
    w = weight.detach().float()
    n, k = w.shape
    g = w.reshape(n, k // group_size, group_size)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    scales = ((hi - lo) / 15.0).clamp(min=1e-12)
    q = torch.round((g - lo[..., None]) / scales[..., None]).clamp(0, 15).to(torch.int32)
    zeros = lo + 8.0 * scales
    return q.reshape(n, k), scales, zeros


def dequantize_int4(q: Tensor, scales: Tensor, zeros: Tensor, group_size: int) -> Tensor:
    n, k = q.shape
    g = q.reshape(n, k // group_size, group_size).float()
    return ((g - 8.0) * scales[..., None] + zeros[..., None]).reshape(n, k)


def round_to_grid(weight: Tensor, scheme: str, group_size: int | None = None) -> GridWeight:
    """Round-to-nearest (RTN) of `weight` onto the scheme's grid."""
    if scheme == "int8":
        return GridWeight("int8", *quantize_int8(weight))
    return GridWeight("int4", *quantize_int4(weight, group_size), group_size=group_size)


def sqnr_db(reference: Tensor, approx: Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(|ref|^2 / |ref - approx|^2)."""
    ref = reference.detach().double()
    err = ref - approx.detach().double()
    return float(10 * torch.log10(ref.pow(2).sum() / err.pow(2).sum().clamp(min=1e-300)))
