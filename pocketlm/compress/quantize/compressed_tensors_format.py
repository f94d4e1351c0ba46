"""Quantized codes -> a Hugging Face folder in the compressed-tensors layout (what llm-compressor writes and
vLLM serves as W4A16 / W8A16; transformers decompresses it with the `compressed-tensors` package).

Layout (compressed-tensors 0.20, format "pack-quantized"), per quantized linear `<m>` of the HF model:
- `<m>.weight_packed` int32 [N, ceil(K bits / 32)]: each row's codes, shifted to unsigned (q + 2^(bits-1)),
  laid end to end as one bit stream (code i at bits i*bits .. i*bits+bits-1, low bit first) and cut into
  32-bit words: at 4 and 8 bits, word j holds codes j*32/bits ... (j+1)*32/bits - 1;
- `<m>.weight_scale` [N, K / group_size] (strategy "group") or [N, 1] ("channel"), in the model's dtype;
- `<m>.weight_zero_point` (asymmetric only) int32 [ceil(N bits / 32), G]: the signed integer zero points
  packed the same way down each column;
- `<m>.weight_shape` int64 [2] = (N, K).
A weight decompresses as w = (q - z) * s with q, z signed in [-2^(bits-1), 2^(bits-1)), z = 0 when symmetric.
`config.json` gains the `quantization_config` that compressed-tensors' ModelCompressor writes: one config
group targeting every `Linear`, `ignore` naming the linears left float (always `lm_head`).

The codes are the ones the quantizer chose (`QuantReport.codes`, on an `IntGrid`), never re-rounded: a
symmetric grid is the format's as is; an asymmetric one must have integer zero points
(`IntGrid(integer_zero=True)`, which `quantize_checkpoint(..., fmt="compressed-tensors")` uses), since the
format has no float offsets. Before writing, every matrix is decompressed by the rule above and compared
with the model's own dequantized weight, bit for bit.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pocketlm.interop.hf import hf_checkpoint, hf_tensor_name, write_hf_folder
from pocketlm.model.linears import INT_LINEARS, Int8Linear
from pocketlm.model.quantize import IntGrid
from pocketlm.model.transformer import Transformer

FORMAT = "pack-quantized"
QUANT_METHOD = "compressed-tensors"
LAYOUT_VERSION = "0.20.1"  # the compressed-tensors release whose layout this writes (config `version`)
BITS = (4, 8)  # W4A16 / W8A16: what vLLM's compressed-tensors WNA16 scheme (Marlin) has always served
_CHUNK_CODES = 1 << 22  # rows are packed in chunks of about this many codes (32 MiB as int64)


class CompressedTensorsError(ValueError):
    """Codes or a model the compressed-tensors layout cannot hold; the message names the problem and the fix."""


def check_grid(grid: Any) -> None:
    """Refuse grids the layout cannot express before any work is done."""
    if not isinstance(grid, IntGrid):
        raise CompressedTensorsError(f"compressed-tensors holds integer grids; {getattr(grid, 'name', grid)!r} is not "
                                     "one (GGUF block grids go to --gguf).")
    if grid.bits not in BITS:
        raise CompressedTensorsError(
            f"{grid.bits}-bit codes: --format compressed-tensors writes W4A16 / W8A16, the 4 or 8 bits vLLM's Marlin "
            "kernels serve; use --bits 4 or 8, or keep 2/3-bit codes in pocketlm's own checkpoint (--format pocketlm).")
    if not grid.sym and not grid.integer_zero:
        raise CompressedTensorsError(
            "compressed-tensors stores integer zero points, and this asymmetric grid has float offsets: quantize "
            "with IntGrid(integer_zero=True) (what --format compressed-tensors does) or sym=True.")


def pack_codes(codes: Tensor, bits: int, dim: int = 1) -> Tensor:
    """Signed codes [R, C] in [-2^(bits-1), 2^(bits-1)) -> int32 words, packed densely along `dim` (bits dividing
    32, so no code straddles two words: word j holds codes j*32/bits ..., the first in the lowest bits)."""
    if 32 % bits:
        raise CompressedTensorsError(f"{bits}-bit codes straddle int32 words; this writer packs 1, 2, 4 or 8 bits")
    if dim == 0:
        return pack_codes(codes.t(), bits).t().contiguous()
    rows, cols = codes.shape
    per = 32 // bits
    words = -(-cols // per)
    shifts = torch.arange(per, dtype=torch.int64) * bits
    out = torch.empty(rows, words, dtype=torch.int32)
    chunk = max(1, _CHUNK_CODES // max(1, cols))
    for r0 in range(0, rows, chunk):
        unsigned = codes[r0:r0 + chunk].to(torch.int64) + (1 << (bits - 1))
        unsigned = torch.nn.functional.pad(unsigned, (0, words * per - cols))
        value = (unsigned.reshape(-1, words, per) << shifts).sum(-1)  # each word's unsigned value, < 2^32
        out[r0:r0 + chunk] = torch.where(value >= 1 << 31, value - (1 << 32), value).to(torch.int32)
    return out


def signed_codes(grid: IntGrid, q: Tensor, scales: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor | None]:
    """(codes, zero points) in the format's signed range from an IntGrid's codes and (scale, offset) per group."""
    half = 1 << (grid.bits - 1)
    if grid.sym:
        return q.to(torch.int8), None
    zero = -offsets / scales
    if not torch.equal(zero, zero.round()) or zero.min() < 0 or zero.max() > grid.qmax:
        raise CompressedTensorsError("the asymmetric offsets are not integer zero points on this grid; quantize "
                                     "with IntGrid(integer_zero=True).")
    return (q - half).to(torch.int8), (zero - half).to(torch.int8)


def quantization_config(grid: IntGrid, ignore: list[str]) -> dict[str, Any]:
    """config.json's `quantization_config` for one grid over every Linear (compressed-tensors' own field set)."""
    weights = {"num_bits": grid.bits, "type": "int", "symmetric": grid.sym, "dynamic": False,
               "group_size": grid.group_size, "strategy": "group" if grid.group_size else "channel"}
    return {"version": LAYOUT_VERSION, "quant_method": QUANT_METHOD, "format": FORMAT,
            "quantization_status": "compressed", "global_compression_ratio": None,
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None,
                                          "output_activations": None, "format": FORMAT}},
            "ignore": ignore, "kv_cache_scheme": None, "moe_sparsity_config": None,
            "sparsity_config": {}, "transform_config": {}}


def compressed_tensors(grid: IntGrid, q: Tensor, scales: Tensor, offsets: Tensor,
                       dtype: torch.dtype) -> dict[str, Tensor]:
    """One matrix's tensors in the layout (names relative to its module), from its grid codes."""
    codes, zero = signed_codes(grid, q, scales, offsets)
    out = {"weight_packed": pack_codes(codes, grid.bits), "weight_scale": scales.to(dtype).contiguous(),
           "weight_shape": torch.tensor(list(q.shape), dtype=torch.int64)}
    if zero is not None:
        out["weight_zero_point"] = pack_codes(zero, grid.bits, dim=0)
    return out


def _decompressed(grid: IntGrid, q: Tensor, scales: Tensor, offsets: Tensor, dtype: torch.dtype) -> Tensor:
    """The format's rule w = (q - z) s on these codes, group by group, in `dtype`."""
    codes, zero = signed_codes(grid, q, scales, offsets)
    g = grid.group_of(q.shape[1])
    z = 0 if zero is None else zero.to(dtype).repeat_interleave(g, 1)
    return (codes.to(dtype) - z) * scales.to(dtype).repeat_interleave(g, 1)


def check_dense(model: Transformer) -> None:
    if model.config.n_experts:
        raise CompressedTensorsError("mixture-of-experts models: transformers stacks routed experts into 3-D tensors, "
                                     "not Linear modules, so compressed-tensors' Linear targets cannot reach them; "
                                     "write pocketlm's own checkpoint (--format pocketlm) or a GGUF.")


def check_model(model: Transformer,
                model_type: str | None = None) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, str]]:
    """(config.json, HF state, HF name of every linear) when the layout can hold `model`'s matrices, else one
    clear error: before quantizing, so a refusal costs nothing."""
    check_dense(model)
    hf_cfg, state, family = hf_checkpoint(model, model_type)
    names = {}
    for name in model.named_linears():
        hf_name = hf_tensor_name(family, f"{name}.weight")
        if hf_name is None or hf_name not in state:
            if not name.startswith("blocks."):
                continue  # a tied LM head has no tensor of its own
            raise CompressedTensorsError(f"the {family.model_type} family stores {name!r} packed with other matrices "
                                         "(e.g. one fused qkv tensor), and compressed-tensors quantizes one HF Linear "
                                         "per matrix; save this family with --format pocketlm or as a GGUF.")
        names[name] = hf_name
    return hf_cfg, state, names


@torch.no_grad()
def save_compressed_tensors(model: Transformer, codes: dict[str, tuple[Tensor, tuple[Tensor, ...]]], grid: IntGrid,
                            out_dir: str | Path, tokenizer: Any = None, model_type: str | None = None,
                            dtype: torch.dtype | None = None) -> Path:
    """Write `model` (float, its quantized matrices holding their dequantized values) with the matrices named in
    `codes` (`QuantReport.codes`: name -> (codes [N, K], (scales, offsets) [N, G])) in the compressed-tensors
    layout, atomically; `dtype` (default: the model's) for the float tensors and scales, e.g. torch.bfloat16,
    what vLLM serves in (scales must be exact in it: the grid's bf16 scales are). transformers.AutoModelForCausalLM.from_pretrained(out_dir) loads a symmetric folder as
    is; with transformers 5.23 + compressed-tensors 0.20.1 no asymmetric pack-quantized folder loads there
    (llm-compressor issue #1618), while the package's own decompressor reads ours (tested)."""
    check_grid(grid)
    hf_cfg, state, names = check_model(model, model_type)
    own = next(model.parameters()).dtype
    dtype = dtype or own
    ignore = {"lm_head"}  # a tied head is still a Linear in transformers, and stays float
    for name, hf_name in names.items():
        if name not in codes:
            ignore.add(hf_name.removesuffix(".weight"))
            continue
        q, (scales, offsets) = codes[name]
        if not torch.equal(_decompressed(grid, q, scales, offsets, own), state[hf_name]):
            raise CompressedTensorsError(f"{name!r}: its codes do not decompress to the model's weight; pass the "
                                         "codes the quantizer wrote into this model (quantize(..., kernels=False)).")
        if not torch.equal(scales.to(dtype).to(scales.dtype), scales):
            raise CompressedTensorsError(f"{name!r}: its scales are not exact in {dtype}; write in the dtype the "
                                         "grid rounded them to (IntGrid.scale_dtype, bf16 by default).")
        del state[hf_name]
        base = hf_name.removesuffix("weight")
        state.update({base + k: v for k, v in compressed_tensors(grid, q, scales, offsets, dtype).items()})
    unknown = sorted(set(codes) - set(names))
    if unknown:
        raise CompressedTensorsError(f"codes for {unknown[:3]}, which are not linears of this model")
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    hf_cfg["dtype"] = str(dtype).removeprefix("torch.")
    hf_cfg["quantization_config"] = quantization_config(grid, sorted(ignore))
    return write_hf_folder(out_dir, hf_cfg, state, tokenizer)


@torch.no_grad()
def convert_checkpoint(checkpoint: str | Path, out_dir: str | Path, tokenizer: Any = None) -> Path:
    """pocketlm's quantized checkpoint (int8 / int4 kernel layers) -> the compressed-tensors folder holding the same
    integers and scales, never re-rounded. Symmetric checkpoints only: the int4 kernel's asymmetric grid keeps a
    float zero per group, which the format cannot hold (re-quantize with `--format compressed-tensors`). A 2- or
    3-bit symmetric code is a 4-bit one that uses fewer levels, so it is written as 4 bits, exactly."""
    from pocketlm.interop import load_model, load_tokenizer

    model = load_model(checkpoint)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(checkpoint)
    check_dense(model)
    recipe = model.transforms.quantization
    if recipe is None or recipe.scheme not in ("int8", "int4"):
        raise CompressedTensorsError(f"{checkpoint} is not a weight-only int8/int4 pocketlm checkpoint "
                                     f"({recipe.scheme if recipe else 'float'}); quantize it with --format "
                                     "compressed-tensors instead.")
    if isinstance(model.lm_head, INT_LINEARS):
        raise CompressedTensorsError("the LM head is quantized, and compressed-tensors checkpoints keep lm_head float "
                                     "(ignore); quantize without the head.")
    grid = IntGrid(8 if recipe.scheme == "int8" else 4, recipe.group_size, sym=True)
    codes: dict[str, tuple[Tensor, tuple[Tensor, ...]]] = {}

    def to_float(name: str, layer: nn.Module) -> nn.Linear:
        if isinstance(layer, Int8Linear):
            q, scales = layer.qweight.to(torch.int32), layer.scales.float()[:, None]
        else:
            scales, zeros = layer.scales_and_zeros.float().unbind(-1)
            if zeros.any():
                raise CompressedTensorsError(
                    f"{name!r} is on the int4 kernel's asymmetric grid (a float zero per group), which "
                    "compressed-tensors cannot hold; re-quantize with --format compressed-tensors (integer zero "
                    "points) or --sym.")
            q, scales = layer.codes() - 8, scales.t().contiguous()
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        linear.weight.copy_(grid.dequantize(q, scales, torch.zeros_like(scales)))
        if layer.bias is not None:
            linear.bias.copy_(layer.bias)
        linear.splits = list(layer.splits)
        prefix, _, leaf = name.rpartition(".")
        parts = {"qkv": ("q_proj", "k_proj", "v_proj"), "gate_up": ("gate_proj", "up_proj")}.get(leaf, (leaf,))
        for part, rows in zip(parts, torch.arange(layer.out_features).split(layer.splits)):
            codes[f"{prefix}.{part}"] = (q[rows], (scales[rows], torch.zeros_like(scales[rows])))
        return linear

    for name, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, INT_LINEARS)]:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, to_float(name, layer))
    model.transforms = dataclasses.replace(model.transforms, quantization=None)
    model.unfuse()
    return save_compressed_tensors(model, codes, grid, out_dir, tokenizer)
