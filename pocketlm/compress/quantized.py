"""Weight-only int8 and group-wise int4 linear layers on torch's own CPU kernels.

The matmuls run on packed integer weights (`torch._weight_int8pack_mm`,
`torch._weight_int4pack_mm_for_cpu`); weights are never dequantized to a float matrix.
Measured on this project's CPU (AVX-512 + bf16), both kernels are fast only with bf16 activations
(fp32 activations take a slow reference path, 30-60x slower), so the layers cast activations to
`compute_dtype` (bf16 by default) around the kernel and cast the result back.

Schemes
- int8: symmetric, one scale per output channel: w ~= q * s, q in [-127, 127].
- int4: asymmetric, one (scale, zero) per group of `group_size` input features:
  w ~= (q - 8) * s + z with q in [0, 15] (torch's packed-int4 convention).
"""

from __future__ import annotations

import torch
from torch import nn

from pocketlm.model.packing import fuse_projections
from pocketlm.model.transformer import Transformer

SCHEMES = ("int8", "int4")
INT4_GROUP_SIZES = (32, 64, 128, 256)


class QuantizationError(ValueError):
    """A layer that the requested scheme cannot represent; the message names the layer and the fix."""


# --------------------------------------------------------------------------------------------
# quantizers (pure functions, also used by tests as the dequantized reference)
def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8: returns (q int8 [N, K], scales fp32 [N])."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


def dequantize_int4(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    n, k = q.shape
    g = q.reshape(n, k // group_size, group_size).float()
    return ((g - 8.0) * scales[..., None] + zeros[..., None]).reshape(n, k)


# --------------------------------------------------------------------------------------------
# checks (raise before anything is swapped)
def check_int8(name: str, linear: nn.Linear) -> None:
    k = linear.in_features
    if k % 16:
        raise QuantizationError(
            f"int8: layer {name!r} has in_features={k}, not a multiple of 16, which torch's int8 CPU "
            "kernel requires; skip this layer (skip=[...]) or keep the model in fp32/bf16.")


def check_int4(name: str, linear: nn.Linear, group_size: int) -> None:
    n, k = linear.out_features, linear.in_features
    if group_size not in INT4_GROUP_SIZES:
        raise QuantizationError(
            f"int4: group_size {group_size} is not supported by torch's int4 CPU kernel; "
            f"choose one of {INT4_GROUP_SIZES}.")
    if k % group_size:
        ok = [g for g in INT4_GROUP_SIZES if k % g == 0]
        fix = f"use group_size in {ok}" if ok else "use int8 instead, or skip this layer"
        raise QuantizationError(
            f"int4: layer {name!r} has in_features={k}, not divisible by group_size={group_size}; {fix}.")
    if n % 16:
        raise QuantizationError(
            f"int4: layer {name!r} has out_features={n}, not a multiple of 16, which torch's int4 CPU "
            "kernel requires; use int8 or skip this layer (skip=[...]).")


# --------------------------------------------------------------------------------------------
class _QuantLinearBase(nn.Module):
    in_features: int
    out_features: int

    def _finish(self, y: torch.Tensor, x: torch.Tensor, lead: torch.Size) -> torch.Tensor:
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*lead, self.out_features)

    def weight_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())


class Int8Linear(_QuantLinearBase):
    """y = x @ (q * s)^T + b with q int8 per-channel; runs `torch._weight_int8pack_mm`."""

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype = torch.bfloat16, name: str = "linear"):
        super().__init__()
        check_int8(name, linear)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.splits = getattr(linear, "splits", [linear.out_features])  # fused q/k/v or gate/up
        self.compute_dtype = compute_dtype
        q, s = quantize_int8(linear.weight)
        self.register_buffer("qweight", q.contiguous())
        self.register_buffer("scales", s.to(compute_dtype))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(self.compute_dtype)
        return self._finish(torch._weight_int8pack_mm(x2, self.qweight, self.scales), x, lead)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 per-channel, compute={self.compute_dtype}"


class Int4Linear(_QuantLinearBase):
    """Group-wise asymmetric int4; runs `torch._weight_int4pack_mm_for_cpu` on packed nibbles."""

    def __init__(self, linear: nn.Linear, group_size: int = 32,
                 compute_dtype: torch.dtype = torch.bfloat16, name: str = "linear"):
        super().__init__()
        check_int4(name, linear, group_size)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.splits = getattr(linear, "splits", [linear.out_features])  # fused q/k/v or gate/up
        self.group_size, self.compute_dtype = group_size, compute_dtype
        q, scales, zeros = quantize_int4(linear.weight, group_size)
        packed = torch._convert_weight_to_int4pack_for_cpu(q.contiguous(), 2)  # [N, K/2] uint8
        sz = torch.stack([scales.t(), zeros.t()], dim=-1).contiguous()  # [K/gs, N, 2]
        self.register_buffer("qweight", packed)
        self.register_buffer("scales_and_zeros", sz.to(compute_dtype))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(self.compute_dtype)
        y = torch._weight_int4pack_mm_for_cpu(x2, self.qweight, self.group_size, self.scales_and_zeros)
        return self._finish(y, x, lead)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, int4 group={self.group_size}, "
                f"compute={self.compute_dtype}")


QUANT_LINEARS = (Int8Linear, Int4Linear)


def quantize_model(model: nn.Module, scheme: str, group_size: int = 32, *,
                   skip: tuple[str, ...] | list[str] = (), compute_dtype: torch.dtype = torch.bfloat16,
                   skip_unsupported: bool = False, fuse: bool = True) -> nn.Module:
    """Swap every nn.Linear in `model` (in place) for an Int8Linear / Int4Linear; returns `model`.

    With `fuse`, a pocketlm Transformer's q/k/v and gate/up are first fused into one layer each
    (`pocketlm.model.packing.fuse_projections`): each row is quantized as before, in fewer matmuls.

    `skip`: module names (or name prefixes / suffixes such as "lm_head") left in float. Every layer
    is checked before any is swapped, so a QuantizationError leaves the model untouched; with
    `skip_unsupported` such layers stay float instead, and their names land in
    `model.quantization_skipped`. A tied LM head gets its own quantized copy; the embedding table
    stays float (a lookup reads one row).
    """
    if scheme not in SCHEMES:
        raise QuantizationError(f"unknown quantization {scheme!r}; choose one of {SCHEMES}.")
    skip = tuple(skip)
    if fuse and isinstance(model, Transformer):
        fuse_projections(model)

    def skipped(name: str) -> bool:
        return any(name == s or name.startswith(s + ".") or name.endswith("." + s) or name.endswith(s)
                   for s in skip)

    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and not skipped(n)]
    if not targets:
        raise QuantizationError("quantize_model: the model has no nn.Linear layers to quantize.")
    if scheme == "int4" and group_size not in INT4_GROUP_SIZES:
        raise QuantizationError(f"int4: group_size {group_size} is not supported by torch's int4 CPU "
                                f"kernel; choose one of {INT4_GROUP_SIZES}.")
    unsupported = []
    for name, lin in targets:
        try:
            check_int8(name, lin) if scheme == "int8" else check_int4(name, lin, group_size)
        except QuantizationError:
            if not skip_unsupported:
                raise
            unsupported.append(name)
    targets = [(n, m) for n, m in targets if n not in unsupported]
    model.quantization_skipped = unsupported
    for name, lin in targets:
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        if scheme == "int8":
            new = Int8Linear(lin, compute_dtype=compute_dtype, name=name)
        else:
            new = Int4Linear(lin, group_size=group_size, compute_dtype=compute_dtype, name=name)
        setattr(parent, name.rpartition(".")[2], new)
    return model


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(|ref|^2 / |ref - approx|^2)."""
    ref = reference.detach().double()
    err = ref - approx.detach().double()
    return float(10 * torch.log10(ref.pow(2).sum() / err.pow(2).sum().clamp(min=1e-300)))
