"""The linear layers a pocketlm model can hold besides nn.Linear, and the record of how it got them.

- `fused_linear`: several nn.Linear of one input as one wider nn.Linear (`splits` gives the widths);
- `PackedLinear`: weights prepacked by oneDNN for fast CPU inference (machine-specific, never saved);
- `TransposedLinear`: weights held transposed [in, out], for CPUs whose matmul reads that layout faster
  (chosen per device by `pocketlm.runtime.kernel_choice`; an inference layout, never saved);
- `Int8Linear`, `Int4Linear`: weight-only integer layers on torch's CPU kernels, built from integers
  already on their grid (`pocketlm.model.quantize` chooses them), saved in a portable form;
- `QuantRecipe`: what quantized a model (scheme, group size, method, the layers kept in float).

Integer grids (the kernels' conventions)
- int8: symmetric, one scale per output channel: w ~= q * s, q in [-127, 127].
- int4: asymmetric, one (scale, zero) per group of `group_size` input features:
  w ~= (q - 8) * s + z with q in [0, 15] (torch's packed-int4 convention).

Both kernels (`torch._weight_int8pack_mm`, `torch._weight_int4pack_mm_for_cpu`) are fast only with
bf16 activations on this project's CPU (fp32 takes a reference path 30-60x slower), so the layers
cast activations to `compute_dtype` around the kernel and cast the result back; scales and zeros
are held in `compute_dtype`, exactly as the kernel reads them.

Saved form (state_dict): int8 `qweight` int8 [N, K], `scales` [N]; int4 `qweight` uint8 [N, K/2]
with column 2j in the low nibble of byte j and 2j+1 in the high nibble, `scales` [N, G], `zeros`
[N, G]; `bias` if any. torch's in-memory int4 layout depends on the CPU's vector width, so it is
converted to and from that portable form when saving and loading.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from pocketlm.model.relayout import transpose_releasing

SCHEMES = ("int8", "int4")
INT4_GROUP_SIZES = (32, 64, 128, 256)


# ---------------------------------------------------------------------------------------------
# fused float layers
# ---------------------------------------------------------------------------------------------


def fused_linear(linears: list[nn.Linear]) -> nn.Linear:
    """One nn.Linear computing several of one input, outputs side by side; `.splits` gives their widths."""
    parts = [lin.weight.detach() for lin in linears]
    if parts[0].is_meta:  # placeholders (a loader's skeleton): the shape is all; a meta cat imports torch's compiler
        weight = torch.empty(sum(p.shape[0] for p in parts), parts[0].shape[1], dtype=parts[0].dtype, device="meta")
    else:
        weight = torch.cat(parts, dim=0)  # the one new matrix: no init, no copy
    has_bias = any(lin.bias is not None for lin in linears)
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias, device="meta", dtype=weight.dtype)
    fused.weight = nn.Parameter(weight)
    if has_bias:
        fused.bias = nn.Parameter(torch.cat([lin.bias.detach() if lin.bias is not None else
                                             torch.zeros(lin.out_features, dtype=weight.dtype, device=weight.device)
                                             for lin in linears]))
    fused.splits = [lin.out_features for lin in linears]
    return fused


def split_linear(fused: nn.Linear, biases: list[bool]) -> list[nn.Linear]:
    """The inverse of `fused_linear`: one nn.Linear per entry of `fused.splits`."""
    parts, start = [], 0
    for width, has_bias in zip(fused.splits, biases):
        lin = nn.Linear(fused.in_features, width, bias=has_bias, device=fused.weight.device,
                        dtype=fused.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(fused.weight[start:start + width])
            if has_bias:
                lin.bias.copy_(fused.bias[start:start + width])
        parts.append(lin)
        start += width
    return parts


def splits_of(layer: nn.Module) -> list[int]:
    return list(getattr(layer, "splits", [layer.out_features]))


# ---------------------------------------------------------------------------------------------
# oneDNN-packed float layers (CPU inference)
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("pocketlm::packed_linear", mutates_args=())
def packed_linear(x: Tensor, packed: Tensor, bias: Tensor | None, out_features: int) -> Tensor:
    """oneDNN linear on a prepacked weight; an op of its own so torch.compile calls it as is."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@packed_linear.register_fake
def _packed_linear_shape(x: Tensor, packed: Tensor, bias: Tensor | None, out_features: int) -> Tensor:
    return x.new_empty(*x.shape[:-1], out_features)


class PackedLinear(nn.Module):
    """y = x W^T + b with W prepacked by oneDNN; keeps a fused layer's `splits`."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.splits = splits_of(linear)
        self.dtype = weight.dtype
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.nbytes = sum(t.numel() * t.element_size() for t in (weight, linear.bias) if t is not None)

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            return packed_linear(x, self.packed, self.bias, self.out_features)
        # eager: the op itself (a custom op's first eager call imports torch's compiler, ~70 MB of RSS)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.splits}, dtype={self.dtype}, oneDNN-packed"


class TransposedLinear(nn.Module):
    """y = x @ W^T + b with W^T held contiguous [in, out]; keeps a fused layer's `splits`.

    `share=True` (a tied LM head) moves `linear.weight` to a view of the transposed copy, so the
    embedding that shares it reads the same storage and no second matrix stays in memory; the copy
    releases the original's rows as it goes (`relayout.transpose_releasing`), so none exists even
    for a moment where nothing else reads the original."""

    def __init__(self, linear: nn.Linear, share: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.splits = splits_of(linear)
        weight_t = transpose_releasing(linear.weight) if share else linear.weight.detach().t().contiguous()
        self.register_buffer("weight_t", weight_t, persistent=False)
        if share:
            linear.weight.data = self.weight_t.t()
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.matmul(x, self.weight_t)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.splits}, dtype={self.weight_t.dtype}, transposed"


# ---------------------------------------------------------------------------------------------
# weight-only integer layers: what they need, what made them
# ---------------------------------------------------------------------------------------------


class QuantizationError(ValueError):
    """A layer that the requested scheme cannot represent; the message names the layer and the fix."""


def check_group_size(group_size: int) -> None:
    if group_size not in INT4_GROUP_SIZES:
        raise QuantizationError(f"int4: group_size {group_size} is not supported by torch's int4 CPU "
                                f"kernel; choose one of {INT4_GROUP_SIZES}.")


def check_int8(name: str, linear: nn.Module) -> None:
    k = linear.in_features
    if k % 16:
        raise QuantizationError(
            f"int8: layer {name!r} has in_features={k}, not a multiple of 16, which torch's int8 CPU "
            "kernel requires; skip this layer (skip=[...]) or keep the model in fp32/bf16.")


def check_int4(name: str, linear: nn.Module, group_size: int) -> None:
    n, k = linear.out_features, linear.in_features
    check_group_size(group_size)
    if k % group_size:
        ok = [g for g in INT4_GROUP_SIZES if k % g == 0]
        fix = f"use group_size in {ok}" if ok else "use int8 instead, or skip this layer"
        raise QuantizationError(
            f"int4: layer {name!r} has in_features={k}, not divisible by group_size={group_size}; {fix}.")
    if n % 16:
        raise QuantizationError(
            f"int4: layer {name!r} has out_features={n}, not a multiple of 16, which torch's int4 CPU "
            "kernel requires; use int8 or skip this layer (skip=[...]).")


@dataclass(frozen=True)
class QuantRecipe:
    """How a model's linears were put on an integer grid; saved beside the weights."""

    scheme: str  # int8 | int4
    group_size: int | None = None  # int4 only
    method: str = "rtn"  # how the integers were chosen: rtn | gptq | awq ...
    compute_dtype: str = "bf16"  # activations inside the kernels
    float_layers: tuple[str, ...] = ()  # linears left in float (asked to skip, or the kernels cannot take them)
    params: dict[str, Any] = field(default_factory=dict)  # the method's settings (damping, calibration ...)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "float_layers": list(self.float_layers)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantRecipe":
        return cls(**{**d, "float_layers": tuple(d.get("float_layers", ()))})

    @property
    def precision(self) -> str:
        return self.scheme

    @property
    def torch_compute_dtype(self) -> torch.dtype:
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.compute_dtype]


# ---------------------------------------------------------------------------------------------
# the integer layers
# ---------------------------------------------------------------------------------------------


class _IntLinear(nn.Module):
    """What both integer layers share: shape, fused `splits`, float bias, casting around the kernel."""

    def __init__(self, in_features: int, out_features: int, bias: Tensor | None, splits: list[int] | None,
                 compute_dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.splits = list(splits or [out_features])  # fused q/k/v or gate/up
        self.compute_dtype = compute_dtype
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        y = self._matmul(x.reshape(-1, self.in_features).to(self.compute_dtype).contiguous()).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*lead, self.out_features)

    def _matmul(self, x2: Tensor) -> Tensor:
        raise NotImplementedError

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        """Run the kernel on `dtype` activations; the scales (already on that grid or finer) follow, losslessly
        from bf16 to fp32 and back (a per-device kernel choice, `pocketlm.runtime.kernel_choice`)."""
        for name in ("scales", "scales_and_zeros"):
            if getattr(self, name, None) is not None:
                setattr(self, name, getattr(self, name).to(dtype))
        self.compute_dtype = dtype

    def weight_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())


def int8_matmul(x: Tensor, qweight: Tensor, scales: Tensor) -> Tensor:
    """x [..., K] @ (qweight * scales)^T on torch's int8 CPU kernel, activations in the scales' dtype: [..., N]."""
    x2 = x.reshape(-1, x.shape[-1]).to(scales.dtype).contiguous()
    return torch._weight_int8pack_mm(x2, qweight, scales).reshape(*x.shape[:-1], qweight.shape[0])


class Int8Linear(_IntLinear):
    """y = x @ (q * s)^T + b with q int8 per output channel; runs `torch._weight_int8pack_mm`."""

    def __init__(self, q: Tensor, scales: Tensor, bias: Tensor | None = None, splits: list[int] | None = None,
                 compute_dtype: torch.dtype = torch.bfloat16):
        super().__init__(q.shape[1], q.shape[0], bias, splits, compute_dtype)
        self.register_buffer("qweight", q.to(torch.int8).contiguous())
        self.register_buffer("scales", scales.to(compute_dtype).contiguous())

    @classmethod
    def placeholder(cls, like: nn.Module, compute_dtype: torch.dtype = torch.bfloat16) -> "Int8Linear":
        """A zero layer of `like`'s shape (on its device, meta included), to load saved integers into."""
        n, k, device = like.out_features, like.in_features, like.weight.device
        bias = None if like.bias is None else torch.zeros(n, device=device)
        return cls(torch.zeros(n, k, dtype=torch.int8, device=device), torch.ones(n, device=device), bias,
                   splits_of(like), compute_dtype)

    def _matmul(self, x2: Tensor) -> Tensor:
        return int8_matmul(x2, self.qweight, self.scales)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        # fresh allocations: the kernel reads with aligned vector loads, and tensors read from a
        # safetensors file are only 8-byte aligned (a segfault, seen on AVX-512)
        self.qweight, self.scales = self.qweight.clone(), self.scales.clone()

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.splits}, int8 per-channel, compute={self.compute_dtype}"


class Int4Linear(_IntLinear):
    """Group-wise asymmetric int4; runs `torch._weight_int4pack_mm_for_cpu` on packed nibbles."""

    def __init__(self, q: Tensor, scales: Tensor, zeros: Tensor, group_size: int, bias: Tensor | None = None,
                 splits: list[int] | None = None, compute_dtype: torch.dtype = torch.bfloat16):
        """q: codes in [0, 15] [N, K]; scales, zeros [N, K / group_size]."""
        super().__init__(q.shape[1], q.shape[0], bias, splits, compute_dtype)
        self.group_size = group_size
        if q.is_meta:  # a placeholder to load into: the CPU layout is [N, K/2] bytes
            packed = torch.empty(q.shape[0], q.shape[1] // 2, dtype=torch.uint8, device="meta")
        else:
            packed = torch._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 2)
        self.register_buffer("qweight", packed)
        sz = torch.stack([scales.t(), zeros.t()], dim=-1).contiguous()  # [K/gs, N, 2], as the kernel reads it
        self.register_buffer("scales_and_zeros", sz.to(compute_dtype))

    @classmethod
    def placeholder(cls, like: nn.Module, group_size: int, compute_dtype: torch.dtype = torch.bfloat16) -> "Int4Linear":
        """A zero layer of `like`'s shape (on its device, meta included), to load saved integers into."""
        n, k, device = like.out_features, like.in_features, like.weight.device
        g = torch.zeros(n, k // group_size, device=device)
        bias = None if like.bias is None else torch.zeros(n, device=device)
        return cls(torch.zeros(n, k, dtype=torch.int32, device=device), g + 1, g, group_size, bias,
                   splits_of(like), compute_dtype)

    def _matmul(self, x2: Tensor) -> Tensor:
        return torch._weight_int4pack_mm_for_cpu(x2, self.qweight, self.group_size, self.scales_and_zeros)

    def codes(self) -> Tensor:
        """The int32 codes [N, K] in [0, 15] this layer holds (read back from the kernel layout)."""
        return unpack_int4_kernel_layout(self.qweight, self.out_features, self.in_features)

    # saved form: portable nibbles, scales and zeros apart (see the module docstring)
    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        n, k = self.out_features, self.in_features
        if self.qweight.is_meta:
            destination[prefix + "qweight"] = torch.empty(n, k // 2, dtype=torch.uint8, device="meta")
        else:
            codes = self.codes().to(torch.uint8)
            destination[prefix + "qweight"] = codes[:, 0::2] | (codes[:, 1::2] << 4)
        destination[prefix + "scales"] = self.scales_and_zeros[..., 0].t().contiguous()
        destination[prefix + "zeros"] = self.scales_and_zeros[..., 1].t().contiguous()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        names = ["qweight", "scales", "zeros"] + (["bias"] if self.bias is not None else [])
        missing = [prefix + s for s in names if prefix + s not in state_dict]
        if missing:
            missing_keys.extend(missing)
            return
        nibbles = state_dict[prefix + "qweight"]
        codes = torch.stack([nibbles & 15, nibbles >> 4], dim=-1).reshape(self.out_features, self.in_features)
        self.qweight = torch._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 2)
        sz = torch.stack([state_dict[prefix + "scales"].t(), state_dict[prefix + "zeros"].t()], dim=-1)
        self.scales_and_zeros = sz.to(self.compute_dtype).contiguous()
        if self.bias is not None:
            self.bias = state_dict[prefix + "bias"].clone()

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.splits}, int4 group={self.group_size}, "
                f"compute={self.compute_dtype}")


class W8A8Linear(Int8Linear):
    """int8 weights per output channel and int8 activations per token (SmoothQuant's W8A8), multiplied by
    `torch._int_mm` (int8 x int8 -> int32, oneDNN/VNNI on x86 CPUs), never dequantized to float first:
    y = (round(x / s_x) @ q^T) * s_x * s_w, with s_x = max|x_token| / 127. Same saved form as Int8Linear."""

    def _matmul(self, x2: Tensor) -> Tensor:
        x = x2.float()
        s_x = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / 127.0
        xq = torch.round(x / s_x).clamp(-127, 127).to(torch.int8)
        y = torch._int_mm(xq, self.qweight.t())
        return (y.float() * s_x * self.scales.float()).to(x2.dtype)

    @classmethod
    def from_int8(cls, layer: Int8Linear) -> "W8A8Linear":
        return cls(layer.qweight, layer.scales, layer.bias, layer.splits, layer.compute_dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.splits}, W8A8 (int8 per channel x int8 per token, torch._int_mm)"


INT_LINEARS = (Int8Linear, Int4Linear)
KERNEL_LINEARS = (PackedLinear, TransposedLinear, Int8Linear, Int4Linear)

_PROBE_ROWS = 1024  # a multiple of every CPU block width torch packs int4 rows in (32 or 64)


def unpack_int4_kernel_layout(packed: Tensor, n: int, k: int) -> Tensor:
    """Codes [n, k] (int32, 0..15) from torch's CPU int4 layout, whatever this CPU's block width.

    The layout moves nibbles without changing them, in independent blocks of rows, so packing index
    probes (the base-16 digits of each element's position) shows where every element lands; each
    probed mapping is checked once on random codes."""
    codes = torch.empty(n, k, dtype=torch.int32)
    for r0 in range(0, n, _PROBE_ROWS):
        rows = min(_PROBE_ROWS, n - r0)
        codes[r0:r0 + rows] = _unpack_rows(packed[r0:r0 + rows], rows, k)
    return codes


def _unpack_rows(packed: Tensor, rows: int, k: int) -> Tensor:
    flat = torch.empty(rows * k, dtype=torch.uint8)
    flat[_int4_positions(rows, k)] = _nibbles(packed)
    return flat.reshape(rows, k).to(torch.int32)


def _nibbles(packed: Tensor) -> Tensor:
    flat = packed.reshape(-1)
    return torch.stack([flat & 15, flat >> 4], dim=-1).reshape(-1)


@functools.lru_cache(maxsize=8)
def _int4_positions(rows: int, k: int) -> Tensor:
    """For each nibble of the packed layout of a [rows, k] matrix, the flat index it came from."""
    index = torch.arange(rows * k, dtype=torch.int64)
    where = torch.zeros(rows * k, dtype=torch.int64)
    digit = 0
    while (1 << (4 * digit)) < rows * k:
        probe = ((index >> (4 * digit)) & 15).to(torch.int32).reshape(rows, k)
        where |= _nibbles(torch._convert_weight_to_int4pack_for_cpu(probe, 2)).long() << (4 * digit)
        digit += 1
    check = torch.randint(0, 16, (rows, k), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    flat = torch.empty(rows * k, dtype=torch.uint8)
    flat[where] = _nibbles(torch._convert_weight_to_int4pack_for_cpu(check, 2))
    if not torch.equal(flat.reshape(rows, k).to(torch.int32), check):
        raise RuntimeError("could not read back torch's int4 weight layout on this CPU")
    return where


def replace_linears(module: nn.Module, convert, kinds: tuple[type, ...] = (nn.Linear,)) -> None:
    """Set each child of `module` (any depth) that is one of `kinds` to `convert(name, layer)` (in place)."""
    names = [name for name, child in module.named_modules() if isinstance(child, kinds) and name]
    for name in names:  # by name: a replaced layer is freed at once, not held to the end of the walk
        new = convert(name, module.get_submodule(name))
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        if new is not getattr(parent, attr):
            setattr(parent, attr, new)
