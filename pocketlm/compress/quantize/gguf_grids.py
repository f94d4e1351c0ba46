"""The grids of llama.cpp's GGUF types, so GPTQ / AWQ / RTN choose the integers llama.cpp will read.

Each grid fits a block's parameters the way ggml stores them (fp16 scales; Q4_K's and Q6_K's
sub-block scales as 6-bit / int8 multiples of an fp16 super-block scale), encodes columns onto them,
decodes exactly as `gguf.quants.dequantize` computes in float32 (products of an fp16 value and small
integers are exact in fp32, then one rounding), and writes ggml's block bytes (`export.gguf_blocks`).

- Q8_0: blocks of 32, w = d·q, q in [-128, 127], d = max|w| / 127 (ggml's rule).
- Q4_0 / Q5_0: blocks of 32, w = d·(q - 8) / d·(q - 16), d = (signed value of largest |w|) / -8 (-16).
- Q4_1: blocks of 32, w = d·q + m, d = (max - min) / 15, m = min.
- Q4_K: super-blocks of 256 = 8 sub-blocks of 32, w = d·sc·q - dmin·m, sc and m 6-bit, q in [0, 15].
- Q6_K: super-blocks of 256 = 16 sub-blocks of 16, w = d·sc·(q - 32), sc int8, q in [0, 63].

K-quant sub-block scales depend on their super-block's scale, so those grids are `static`: GPTQ fits
every block's parameters on the original weight before the column walk (GPTQ's static groups). The
parameters are simple min/max fits per block (llama.cpp's own quantizer searches them, with an
importance matrix when given one); GPTQ's error feedback is where the quality comes from.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from pocketlm.export import gguf_blocks
from pocketlm.model.quantize import GridError


def _fp16(x: Tensor) -> Tensor:
    return x.to(torch.float16).float()


def _signed_absmax(w: Tensor) -> Tensor:
    """The value of largest magnitude along the last dim, with its sign (ggml's `max` in Q4_0)."""
    return w.gather(-1, w.abs().argmax(-1, keepdim=True)).squeeze(-1)


def _safe(x: Tensor) -> Tensor:
    return torch.where(x == 0, torch.ones_like(x), x)


class BlockGrid:
    """One GGUF type as a grid: `fit` / `fit_groups`, `encode`, `decode`, `to_bytes` (see module docstring)."""

    qtype: str
    block: int = 32  # elements per ggml block
    group: int = 32  # columns sharing one (scale, offset): the GPTQ group
    qmin: int = 0
    qmax: int = 15
    code_shift: int = 0  # stored unsigned code = value code + shift
    static = False
    bits_per_weight: float = 4.5

    @property
    def name(self) -> str:
        return self.qtype

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def group_of(self, in_features: int) -> int:
        if in_features % self.block:
            raise GridError(f"GGUF {self.qtype} stores rows in blocks of {self.block} values; a width of "
                            f"{in_features} does not split into them. Leave this layer out (skip=[...]) or choose "
                            f"a type with {'32' if self.block == 256 else 'smaller'}-value blocks.")
        return self.group

    def check_kernel(self, in_features: int) -> str:
        return self.kernel_scheme()

    def kernel_scheme(self) -> str:
        raise GridError(f"{self.qtype} codes are written to GGUF, not to pocketlm's int kernels: "
                        "quantize with kernels=False and export them (export_quantized_gguf).")

    def fit_blocks(self, w: Tensor) -> tuple[Tensor, ...]:
        """Parameters per block of w [N, B, group] -> each [N, B]; (scale, offset, stored values ...)."""
        raise NotImplementedError

    def fit(self, w: Tensor) -> tuple[Tensor, ...]:
        return tuple(p[:, 0] for p in self.fit_blocks(w.float()[:, None, :]))

    def fit_groups(self, weight: Tensor) -> tuple[Tensor, ...]:
        n, k = weight.shape
        return self.fit_blocks(weight.float().reshape(n, k // self.group_of(k), self.group))

    def encode(self, w: Tensor, scale: Tensor, offset: Tensor, *stored: Tensor) -> Tensor:
        if w.dim() == 2 and scale.dim() == 1:
            scale, offset = scale[:, None], offset[:, None]
        return torch.round((w.float() - offset) / _safe(scale)).clamp(self.qmin, self.qmax).to(torch.int32)

    def decode(self, q: Tensor, scale: Tensor, offset: Tensor, *stored: Tensor) -> Tensor:
        if q.dim() == 2 and scale.dim() == 1:
            scale, offset = scale[:, None], offset[:, None]
        return q.float() * scale + offset

    def quantize(self, weight: Tensor) -> tuple[Tensor, ...]:
        params = self.fit_groups(weight)
        return (self.encode(weight, *(p.repeat_interleave(self.group, 1) for p in params[:2])), *params)

    def dequantize(self, q: Tensor, scale: Tensor, offset: Tensor, *stored: Tensor) -> Tensor:
        return self.decode(q, scale.repeat_interleave(self.group, 1), offset.repeat_interleave(self.group, 1))

    def to_bytes(self, q: Tensor, *params: Tensor) -> np.ndarray:
        raise NotImplementedError

    @property
    def ggml_type(self):
        import gguf

        return gguf.GGMLQuantizationType[self.qtype]


class Q8_0(BlockGrid):
    qtype, qmin, qmax, bits_per_weight = "Q8_0", -128, 127, 8.5

    def fit_blocks(self, w: Tensor) -> tuple[Tensor, ...]:
        d = _fp16(w.abs().amax(-1) / 127)
        return d, torch.zeros_like(d)

    def to_bytes(self, q: Tensor, scale: Tensor, offset: Tensor) -> np.ndarray:
        return gguf_blocks.encode_q8_0(q.numpy(), scale.numpy())


class _SignedMax(BlockGrid):
    """Q4_0 / Q5_0: d = signed max / -(2^(b-1)), value codes in [-2^(b-1), 2^(b-1) - 1]."""

    def fit_blocks(self, w: Tensor) -> tuple[Tensor, ...]:
        d = _fp16(_signed_absmax(w) / self.qmin)
        return d, torch.zeros_like(d)


class Q4_0(_SignedMax):
    qtype, qmin, qmax, code_shift, bits_per_weight = "Q4_0", -8, 7, 8, 4.5

    def to_bytes(self, q: Tensor, scale: Tensor, offset: Tensor) -> np.ndarray:
        return gguf_blocks.encode_q4_0((q + 8).numpy(), scale.numpy())


class Q5_0(_SignedMax):
    qtype, qmin, qmax, code_shift, bits_per_weight = "Q5_0", -16, 15, 16, 5.5

    def to_bytes(self, q: Tensor, scale: Tensor, offset: Tensor) -> np.ndarray:
        return gguf_blocks.encode_q5_0((q + 16).numpy(), scale.numpy())


class Q4_1(BlockGrid):
    qtype, bits_per_weight = "Q4_1", 5.0

    def fit_blocks(self, w: Tensor) -> tuple[Tensor, ...]:
        lo, hi = w.amin(-1), w.amax(-1)
        return _fp16((hi - lo) / 15), _fp16(lo)

    def to_bytes(self, q: Tensor, scale: Tensor, offset: Tensor) -> np.ndarray:
        return gguf_blocks.encode_q4_1(q.numpy(), scale.numpy(), offset.numpy())


class Q4_K(BlockGrid):
    """Parameters per 32-column sub-block: (d·sc, -dmin·m, d, sc, dmin, m)."""

    qtype, block, group, static, bits_per_weight = "Q4_K", 256, 32, True, 4.5

    def fit_blocks(self, w: Tensor) -> tuple[Tensor, ...]:
        n, b, _ = w.shape
        sub = w.reshape(n, b * self.group // 256, 256 // self.group, self.group)
        lo = sub.amin(-1).clamp(max=0)
        scale, the_min = (sub.amax(-1) - lo) / 15, -lo
        d, dmin = _fp16(scale.amax(-1) / 63), _fp16(the_min.amax(-1) / 63)
        sc = torch.round(scale / _safe(d)[..., None]).clamp(1, 63) * (d[..., None] > 0)
        m = torch.round(the_min / _safe(dmin)[..., None]).clamp(0, 63)
        d, dmin = d[..., None].expand_as(sc), dmin[..., None].expand_as(m)
        flat = lambda x: x.reshape(n, b)  # noqa: E731
        return flat(d * sc), flat(-(dmin * m)), flat(d), flat(sc), flat(dmin), flat(m)

    def to_bytes(self, q, scale, offset, d, sc, dmin, m) -> np.ndarray:
        per = 256 // self.group
        return gguf_blocks.encode_q4_k(q.numpy(), d[:, ::per].numpy(), dmin[:, ::per].numpy(), sc.numpy(), m.numpy())


class Q6_K(BlockGrid):
    """Parameters per 16-column sub-block: (d·sc, 0, d, sc)."""

    qtype, block, group, static, qmin, qmax, code_shift, bits_per_weight = "Q6_K", 256, 16, True, -32, 31, 32, 6.5625

    def fit_blocks(self, w: Tensor) -> tuple[Tensor, ...]:
        n, b, _ = w.shape
        sub = w.reshape(n, b * self.group // 256, 256 // self.group, self.group)
        scale = _signed_absmax(sub) / -32
        max_scale = _signed_absmax(scale)
        iscale = torch.where(max_scale == 0, torch.zeros_like(max_scale), -128 / _safe(max_scale))
        sc = torch.round(iscale[..., None] * scale).clamp(-128, 127)
        d = _fp16(torch.where(iscale == 0, torch.zeros_like(iscale), 1 / _safe(iscale)))[..., None].expand_as(sc)
        flat = lambda x: x.reshape(n, b)  # noqa: E731
        return flat(d * sc), torch.zeros(n, b), flat(d), flat(sc)

    def to_bytes(self, q, scale, offset, d, sc) -> np.ndarray:
        return gguf_blocks.encode_q6_k((q + 32).numpy(), d[:, ::256 // self.group].numpy(), sc.numpy())


GGUF_GRIDS = {g.qtype: g for g in (Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q6_K)}


def gguf_grid(qtype: str) -> BlockGrid:
    """The grid of a GGUF type (Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q6_K), or a clear error."""
    key = qtype.upper()
    if key not in GGUF_GRIDS:
        raise GridError(f"GPTQ / AWQ write GGUF types {', '.join(GGUF_GRIDS)} exactly; {qtype!r} is not one of "
                        "them (llama.cpp's own quantizer writes it: `pocketlm export gguf MODEL --qtype TYPE` "
                        "without --method).")
    return GGUF_GRIDS[key]()
