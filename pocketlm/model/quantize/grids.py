"""The integer grids of pocketlm's weight-only kernels, and round-to-nearest onto them.

- int8: symmetric, one scale per output channel: w ~= q * s, q in [-127, 127].
- int4: asymmetric, one (scale, zero) per group of `group_size` input features:
  w ~= (q - 8) * s + z with q in [0, 15] (torch's packed-int4 convention; z = min + 8 s).

A `GridWeight` is one matrix on a kernel's grid; every method (RTN here, GPTQ and AWQ beside it) produces
them, and `pocketlm.model.quantize.kernels.to_kernels` turns them into kernel layers.

`IntGrid` is the grid a method quantizes onto, as three steps a column walk (GPTQ) can interleave:
`fit` a group's parameters (scale, offset per row) from a block of columns, `encode` columns onto
them, `decode` codes back. Bits 8/4/3/2, symmetric (w = q s) or asymmetric (w = q s + m, m the
group's minimum), one group per `group_size` input columns or per output row (`group_size=None`).
`integer_zero` (asymmetric only) is the grid of compressed-tensors and the GPTQ reference instead: the
range widened to hold 0, and the offset an integer number of steps, w = (q - z) s with z in [0, 2^bits).
Scales and offsets are rounded to the dtype the kernel stores them in when fitted, so the values a
method sees are the values the kernel computes with. `to_grid_weight` puts the codes in a kernel
container: 8-bit symmetric per-row in int8; 2-, 3- and 4-bit codes in the int4 kernel (a 3-bit code
is an int4 code that uses 8 of the 16 levels; per-row parameters are repeated over kernel groups).
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


GRID_BITS = (2, 3, 4, 8)
KERNEL_GROUP_SIZES = (256, 128, 64, 32)  # torch's int4 CPU kernel (see model.linears.INT4_GROUP_SIZES)


class GridError(ValueError):
    """A grid the kernels (or the matrix) cannot hold; the message names the problem and the fix."""


def _round_to(x: Tensor, dtype: torch.dtype | None) -> Tensor:
    return x if dtype is None else x.to(dtype).float()


@dataclass(frozen=True)
class IntGrid:
    """`bits`-bit integers per group of `group_size` input columns (None: one group per output row)."""

    bits: int = 4
    group_size: int | None = 128
    sym: bool = False
    scale_dtype: torch.dtype | None = torch.bfloat16  # how the kernel stores scales and offsets (None: fp32)
    integer_zero: bool = False  # asymmetric: offset = -z * scale with an integer z (compressed-tensors' grid)

    def __post_init__(self) -> None:
        if self.bits not in GRID_BITS:
            raise GridError(f"{self.bits}-bit grids are not supported; choose bits in {GRID_BITS}.")
        if self.group_size is not None and self.group_size < 1:
            raise GridError(f"group_size must be a positive number of columns or None (per channel), "
                            f"got {self.group_size}.")

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.sym else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.sym else (1 << self.bits) - 1

    @property
    def name(self) -> str:
        group = "per-channel" if self.group_size is None else f"g{self.group_size}"
        zero = " int-zero" if self.integer_zero and not self.sym else ""
        return f"{'sym' if self.sym else 'asym'}{self.bits} {group}{zero}"

    @property
    def bits_per_weight(self) -> float:
        """Code bits plus the group's fp16 scale (and offset) spread over its columns (per channel: ~bits)."""
        return self.bits + ((16 if self.sym else 32) / self.group_size if self.group_size else 0.0)

    def group_of(self, in_features: int) -> int:
        """Columns per group for a matrix of this width (the whole row per channel); checks divisibility."""
        g = self.group_size or in_features
        if in_features % g:
            ok = [s for s in (32, 64, 128, 256) if in_features % s == 0]
            raise GridError(f"a width of {in_features} input columns is not divisible by group_size={g}; "
                            f"use group_size in {ok or 'none of 32/64/128/256'} or per channel (group_size=None).")
        return g

    def fit(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """(scale, offset) per row [N] of the columns `w` [N, c] of one group."""
        w = w.float()
        if self.sym:
            scale = _round_to((w.abs().amax(dim=1) / max(self.qmax, 1)).clamp(min=1e-12), self.scale_dtype)
            return scale, torch.zeros_like(scale)
        lo, hi = w.amin(dim=1), w.amax(dim=1)
        if self.integer_zero:  # the range holds 0, which sits exactly on the integer code z
            lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        scale = _round_to(((hi - lo) / self.qmax).clamp(min=1e-12), self.scale_dtype)
        if self.integer_zero:
            return scale, -torch.round(-lo / scale).clamp(0, self.qmax) * scale
        if self.bits <= 4:  # the int4 kernel stores zero = offset + 8 * scale
            return scale, _round_to(lo + 8 * scale, self.scale_dtype) - 8 * scale
        return scale, _round_to(lo, self.scale_dtype)

    def encode(self, w: Tensor, scale: Tensor, offset: Tensor) -> Tensor:
        """Integer codes (int32) of `w` [N] or [N, c] on the rows' (scale, offset) [N] (or [N, c])."""
        if w.dim() == 2 and scale.dim() == 1:
            scale, offset = scale[:, None], offset[:, None]
        return torch.round((w.float() - offset) / scale).clamp(self.qmin, self.qmax).to(torch.int32)

    def decode(self, q: Tensor, scale: Tensor, offset: Tensor) -> Tensor:
        if q.dim() == 2 and scale.dim() == 1:
            scale, offset = scale[:, None], offset[:, None]
        return q.float() * scale + offset

    def fit_groups(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        """(scales, offsets) [N, G] fitted group by group on `weight` [N, K] (GPTQ's static groups)."""
        n, k = weight.shape
        g = self.group_of(k)
        parts = [self.fit(weight[:, c:c + g]) for c in range(0, k, g)]
        return torch.stack([p[0] for p in parts], 1), torch.stack([p[1] for p in parts], 1)

    def quantize(self, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Round to nearest: (codes [N, K], scales [N, G], offsets [N, G])."""
        scales, offsets = self.fit_groups(weight)
        g = self.group_of(weight.shape[1])
        return self.encode(weight, scales.repeat_interleave(g, 1), offsets.repeat_interleave(g, 1)), scales, offsets

    def dequantize(self, q: Tensor, scales: Tensor, offsets: Tensor) -> Tensor:
        g = self.group_of(q.shape[1])
        return self.decode(q, scales.repeat_interleave(g, 1), offsets.repeat_interleave(g, 1))

    def kernel_scheme(self) -> str:
        """The kernel scheme ('int8' | 'int4') that holds this grid whatever the widths, or GridError."""
        if self.integer_zero and not self.sym:
            raise GridError("integer zero points are compressed-tensors' asymmetric grid; pocketlm's int4 kernel "
                            "stores zeros in bf16, which would round them: write --format compressed-tensors, "
                            "or use the kernel's own asymmetric grid (integer_zero=False).")
        if self.bits < 8 and self.group_size is not None and self.group_size not in KERNEL_GROUP_SIZES:
            raise GridError(f"group_size {self.group_size} is not one of the int4 kernel's group sizes "
                            f"{KERNEL_GROUP_SIZES[::-1]}; choose one of them or per channel (group_size=None).")
        if self.bits == 8 and not (self.sym and self.group_size is None):
            raise GridError("8-bit codes run on the int8 kernel, which holds one symmetric scale per output "
                            "channel: use sym=True and group_size=None (per channel), or 4 bits for groups.")
        return "int8" if self.bits == 8 else "int4"

    def check_kernel(self, in_features: int) -> str:
        """The kernel scheme ('int8' | 'int4') that holds this grid for a matrix of this width, or GridError."""
        scheme = self.kernel_scheme()
        self.group_of(in_features)
        if scheme == "int8":
            return scheme
        if self.group_size is None and not any(in_features % g == 0 for g in KERNEL_GROUP_SIZES):
            raise GridError(f"per-channel {self.bits}-bit codes live in the int4 kernel, whose groups are "
                            f"{KERNEL_GROUP_SIZES[::-1]} columns; a width of {in_features} divides none of them.")
        return "int4"

    def kernel_group(self, widths: list[int]) -> int | None:
        """The int4 kernel's group size for matrices of these widths: one for the whole model, as the
        recipe records one (per-channel codes: the largest kernel group dividing every width)."""
        if self.check_kernel(min(widths)) == "int8" or self.group_size is not None:
            return self.group_size
        fits = [g for g in KERNEL_GROUP_SIZES if all(w % g == 0 for w in widths)]
        if not fits:
            raise GridError(f"per-channel {self.bits}-bit codes live in the int4 kernel; no kernel group size "
                            f"{KERNEL_GROUP_SIZES[::-1]} divides every layer width {sorted(set(widths))}.")
        return fits[0]

    def to_grid_weight(self, q: Tensor, scales: Tensor, offsets: Tensor, kernel_group: int | None = None) -> "GridWeight":
        """The kernel container holding these codes (see the module docstring)."""
        if self.check_kernel(q.shape[1]) == "int8":
            return GridWeight("int8", q.to(torch.int8), scales[:, 0].clone())
        group = self.group_size or kernel_group or self.kernel_group([q.shape[1]])
        repeat = 1 if self.group_size else q.shape[1] // group
        scales, offsets = scales.repeat_interleave(repeat, 1), offsets.repeat_interleave(repeat, 1)
        if self.sym:
            return GridWeight("int4", (q + 8).to(torch.int32), scales, torch.zeros_like(scales), group)
        return GridWeight("int4", q.to(torch.int32), scales, offsets + 8 * scales, group)


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Per-output-channel symmetric int8: returns (q int8 [N, K], scales fp32 [N])."""
    w = weight.detach()
    scales = torch.empty(w.shape[0], dtype=torch.float32)
    q = torch.empty(w.shape, dtype=torch.int8)
    for r0, r1 in _row_chunks(w):
        rows = w[r0:r1].float()
        scales[r0:r1] = (rows.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        q[r0:r1] = torch.round(rows / scales[r0:r1, None]).clamp(-127, 127)
    return q, scales


def quantize_int4(weight: Tensor, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Group-wise asymmetric int4: returns (q int32 in [0,15] [N, K], scales [N, G], zeros [N, G]).

    Dequantization: w ~= (q - 8) * scale + zero, with zero = min + 8 * scale.
    """
    w = weight.detach()
    n, k = w.shape
    q = torch.empty(n, k, dtype=torch.int32)
    scales = torch.empty(n, k // group_size, dtype=torch.float32)
    zeros = torch.empty_like(scales)
    for r0, r1 in _row_chunks(w):
        g = w[r0:r1].float().reshape(r1 - r0, k // group_size, group_size)
        lo, hi = g.amin(dim=-1), g.amax(dim=-1)
        scales[r0:r1] = ((hi - lo) / 15.0).clamp(min=1e-12)
        q[r0:r1] = torch.round((g - lo[..., None]) / scales[r0:r1, :, None]).clamp(0, 15).reshape(r1 - r0, k)
        zeros[r0:r1] = lo + 8.0 * scales[r0:r1]
    return q, scales, zeros


def _row_chunks(w: Tensor, chunk_bytes: int = 4 << 20):
    """(start, stop) row ranges of about `chunk_bytes` of fp32 each: RTN works a chunk at a time, so its
    float temporaries stay a few MiB beside a large matrix (a 49152-row tied head) instead of its size."""
    step = max(1, chunk_bytes // max(1, 4 * w.shape[1]))
    return ((r0, min(w.shape[0], r0 + step)) for r0 in range(0, w.shape[0], step))


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
