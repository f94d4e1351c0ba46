"""`quantize(model, ...)`: RTN, GPTQ and AWQ on the shared block walk, ending in the integer kernels.

Every method puts each target matrix on one grid (`model.quantize.IntGrid`, or a GGUF block grid),
writes the dequantized values back into the model as it goes (so later blocks calibrate on the
quantized earlier ones, the reference GPTQ's sequential order), and keeps the codes. Each block, once
the walk has its outputs, is fused and `to_kernels` swaps its quantized matrices for the kernel layers
holding their codes (q/k/v and gate/up stacked row-wise), so the float weights of finished blocks do
not wait for the end; what is left (routed experts, the LM head, RTN without calibration) is swapped
at the end, a routed expert's gate/up as one layer. The result is that of swapping everything at the
end. Embeddings, the LM head, routers and a shared FFN outside the blocks stay float, as in the
reference implementations.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from pocketlm.compress.layerwise import BlockStep, mark_phase, walk
from pocketlm.compress.quantize import awq
from pocketlm.compress.quantize.gptq import GPTQ
from pocketlm.compress.recipe import CALIB_DTYPES
from pocketlm.compress.report import LayerError, QuantReport, peak_rss_bytes
from pocketlm.compress.stats import Gram, Hessian, Several
from pocketlm.compress.targets import DEFAULT_SKIP, Target, left_dense, select
from pocketlm.model.linears import INT_LINEARS, QuantizationError, QuantRecipe
from pocketlm.model.quantize import GridError, GridWeight, IntGrid, to_kernels
from pocketlm.model.quantize.kernels import DTYPE_NAMES
from pocketlm.model.transformer import MLP, Attention, Experts, Transformer

METHODS = ("rtn", "gptq", "awq")
# GPTQ's true_sequential order inside a block: each group is quantized before the next one's inputs are read
SEQUENTIAL_GROUPS = [["*.q_proj", "*.k_proj", "*.v_proj", "*.q_a_proj", "*.kv_a_proj"], ["*.q_b_proj", "*.kv_b_proj"],
                     ["*.o_proj"], ["*.gate_proj", "*.up_proj"], ["*.down_proj"]]


class CalibrationTooShortError(ValueError):
    """Too few calibration tokens for the method's statistics; the message gives the minimum."""


def check_request(method: str, grid: Any, *, kernels: bool = True, calib_dtype: str = "fp32",
                  quantize_head: bool = False, float_dtype: torch.dtype | None = None, **_: Any) -> None:
    """The checks of a `quantize` call that need no model (method, grid and kernel, options; others are
    ignored): `quantize` runs them first, and so do callers before they load the model."""
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; choose one of {', '.join(METHODS)}")
    if calib_dtype not in CALIB_DTYPES:
        raise ValueError(f"calib_dtype must be one of {', '.join(CALIB_DTYPES)}, got {calib_dtype!r}")
    if (quantize_head or float_dtype is not None) and not kernels:
        raise ValueError("quantize_head and float_dtype shape the int-kernel model; with kernels=False the caller "
                         "writes the codes (GGUF, compressed-tensors) and decides the rest")
    if kernels:
        grid.kernel_scheme()


def check_targets(targets: list[Target], grid: Any, kernels: bool) -> None:
    """Every target representable on the grid (and in its kernel) before any weight changes."""
    for t in targets:
        n, k = t.shape
        try:
            scheme = grid.check_kernel(k) if kernels else grid.group_of(k)
        except GridError as e:
            raise GridError(f"layer {t.name!r} ({n}x{k}): {e}") from None
        if scheme == "int8" and k % 16 or scheme == "int4" and n % 16:
            raise QuantizationError(f"layer {t.name!r} ({n}x{k}): torch's {scheme} CPU kernel needs "
                                    f"{'in' if scheme == 'int8' else 'out'}_features divisible by 16; skip "
                                    "it (skip=[...]) or quantize without kernels.")


def check_calibration(calib: Tensor | None, method: str, targets: list[Target]) -> None:
    if method == "rtn" and calib is None:
        return
    if calib is None:
        raise CalibrationTooShortError(f"{method} needs calibration data: pass calib=LongTensor[N, L] "
                                       "(pocketlm.compress.calibration.calibration_batches), e.g. --calib bundled:128x512")
    widest = max(t.shape[1] for t in targets)
    if calib.numel() < widest:
        raise CalibrationTooShortError(
            f"calibration has {calib.numel()} tokens ({calib.shape[0]}x{calib.shape[1]}), fewer than the widest "
            f"layer input ({widest} features): its input statistics would be rank-deficient. Use at least "
            f"{widest} tokens (e.g. --calib bundled:128x512).")


def kernel_parts(model: Transformer, available: Iterable[str]) -> dict[str, list[str]]:
    """Each kernel layer of the fused model -> the targets whose codes it stacks (when all are `available`)."""
    available = set(available)
    out = {}
    for name in model.named_linears(experts=True):
        prefix, _, leaf = name.rpartition(".")
        parts = [name]
        if leaf == "qkv":
            parts = [f"{prefix}.{p}" for p in ("q_proj", "k_proj", "v_proj")]
        elif leaf == "gate_up":
            parts = [f"{prefix}.gate_proj", f"{prefix}.up_proj"]
        elif prefix.endswith(".experts.gate_up") or prefix.endswith(".experts.down"):
            experts, kind = prefix.rsplit(".", 1)
            parts = [f"{experts}.{leaf}.{p}" for p in (("gate_proj", "up_proj") if kind == "gate_up" else ("down_proj",))]
        if all(p in available for p in parts):
            out[name] = parts
    return out


def compact(q: Tensor) -> Tensor:
    """Integer codes in the narrowest signed type holding them (int8 for every <= 7-bit grid): the codes
    of all matrices are kept until the end, and int32 copies would cost as much as the fp32 weights."""
    return q.to(torch.int8) if q.numel() == 0 or (int(q.min()) >= -128 and int(q.max()) <= 127) else q.to(torch.int16)


def cast_float_layers(model: Transformer, dtype: torch.dtype) -> None:
    """Cast every floating parameter and buffer outside the integer kernel layers to `dtype` (in place;
    a tied LM head and its embedding stay one tensor)."""
    for module in model.modules():
        if isinstance(module, INT_LINEARS):
            continue
        for p in module.parameters(recurse=False):
            p.data = p.data.to(dtype)
        for name, b in module.named_buffers(recurse=False):
            if b.is_floating_point():
                setattr(module, name, b.to(dtype))


def _round_head(weight: Tensor, grid: Any, rows: int = 8192) -> tuple[Tensor, tuple[Tensor, ...]]:
    """RTN codes and parameters of the LM head, a slab of rows at a time (rows are rounded independently;
    the temporaries of a 49k-row vocabulary would otherwise be several copies of the head)."""
    parts = [grid.quantize(weight[i:i + rows].float()) for i in range(0, weight.shape[0], rows)]
    parts = [(compact(q), *params) for q, *params in parts]
    return torch.cat([p[0] for p in parts]), tuple(torch.cat([p[j] for p in parts]) for j in range(1, len(parts[0])))


@torch.no_grad()
def quantize(model: Transformer, method: str = "gptq", bits: int = 4, group_size: int | None = 128,
             sym: bool = False, calib: Tensor | None = None, *, grid: Any = None, act_order: bool = False,
             static_groups: bool = False, true_sequential: bool = True, damp: float = 0.01, blocksize: int = 128,
             awq_grid: int = 20, awq_clip: bool = False, skip: tuple[str, ...] = DEFAULT_SKIP, batch_size: int = 8,
             error_samples: int = 8, compute_dtype: torch.dtype = torch.bfloat16, kernels: bool = True,
             float_dtype: torch.dtype | None = None, calib_dtype: str = "fp32", quantize_head: bool = False,
             progress: bool = False) -> QuantReport:
    """Quantize `model`'s block matrices in place (ending in int8/int4 kernel layers when `kernels`).

    `grid` replaces bits / group_size / sym (e.g. a GGUF block grid; then pass kernels=False and
    read `report.grids`). `float_dtype` (with kernels): the dtype of what stays float (embeddings,
    norms, the LM head; None keeps the model's) — bf16 is what `open_model(..., "int4")` runs, and
    halves the bytes a decode step reads from the LM head; `quantize_head` (with kernels) rounds the LM
    head to nearest on the blocks' grid, its own int layer (the embedding stays float), as
    `open_model(..., "int4")` does: with both, the checkpoint has that precision's layout. `calib_dtype="bf16"` runs the calibration
    forwards under bf16 autocast (pruning's option: about 1.7x faster matmuls; the statistics are still
    accumulated and the weights solved in fp32). `awq_clip` adds llm-awq's weight-clipping search after AWQ's
    scales (see the `awq` module docstring). Returns the report; `report.grids` holds each target's codes."""
    t_start = time.perf_counter()
    grid = grid or IntGrid(bits, group_size, sym, compute_dtype)
    check_request(method, grid, kernels=kernels, calib_dtype=calib_dtype, quantize_head=quantize_head,
                  float_dtype=float_dtype)
    if model.transforms.quantization or model.packed:
        raise QuantizationError("the model is already quantized or packed; quantize the float model")
    if model.transforms.fused:
        model.unfuse()
    targets = select(model, tuple(skip))
    check_targets(targets, grid, kernels)
    if kernels:
        group = grid.kernel_group([t.shape[1] for t in targets]  # one kernel group size must fit every layer
                                  + ([model.lm_head.weight.shape[1]] if quantize_head else []))
    check_calibration(calib, method, targets)
    report = QuantReport(method=method, grid=getattr(grid, "name", str(grid)),
                         options={"act_order": act_order, "static_groups": static_groups, "damp": damp,
                                  "blocksize": blocksize, "true_sequential": true_sequential, "awq_grid": awq_grid,
                                  "awq_clip": awq_clip, "calibration_tokens": 0 if calib is None else calib.numel(),
                                  "calib_dtype": calib_dtype},
                         left_float=left_dense(model) + ["embed"] + ([] if quantize_head else ["lm_head"]))
    codes: dict[str, Any] = {}
    solver = GPTQ(grid, blocksize, damp, act_order, static_groups)

    unclipped: dict[str, Tensor] = {}  # AWQ: the weights before clipping, so clipping counts as error

    def finish(t: Target, result_codes: Tensor, params: tuple, error: Gram | None, seconds: float) -> None:
        before = unclipped.pop(t.name) if t.name in unclipped else t.weight.float().clone()
        t.weight.copy_(grid.dequantize(result_codes, *params))
        codes[t.name] = (compact(result_codes), params)
        report.layers.append(LayerError(t.name, t.shape, error.relative_error(before, t.weight.float())
                                        if error is not None and error.n else None, seconds))

    def rtn(t: Target, error: Gram | None) -> None:
        t0 = time.perf_counter()
        q, *params = grid.quantize(t.weight.float())
        finish(t, q, tuple(params), error, time.perf_counter() - t0)

    def gptq(same: list[Target], acc: Several) -> None:
        """One solve for the matrices that share an input (q/k/v, gate/up): GPTQ treats every row alone
        given H, so their rows stacked are solved exactly as each matrix alone, in one column loop."""
        t0 = time.perf_counter()
        r = solver.quantize(torch.cat([t.weight for t in same]) if len(same) > 1 else same[0].weight,
                            acc["hessian"].H)
        seconds, row = (time.perf_counter() - t0) / r.codes.shape[0], 0
        for t in same:
            rows = slice(row, row + t.shape[0])
            finish(t, r.codes[rows], tuple(p[rows].clone() for p in r.params), acc["error"], seconds * t.shape[0])
            row += t.shape[0]

    def grid_lookup(parts: dict[str, list[str]]) -> Callable[[str, Any], GridWeight | None]:
        def grid_of(name: str, _linear: Any = None) -> GridWeight | None:  # one layer's int32 codes at a time
            if name not in parts:
                return None
            return GridWeight.cat([grid.to_grid_weight(codes[p][0].int(), *codes[p][1], kernel_group=group)
                                   for p in parts[name]])
        return grid_of

    def make_recipe(float_layers: tuple[str, ...]) -> QuantRecipe:
        q, params = next(iter(codes.values()))
        sample = grid.to_grid_weight(q.int(), *params, kernel_group=group)
        return QuantRecipe(sample.scheme, sample.group_size, method, DTYPE_NAMES[compute_dtype], float_layers,
                           {"bits": getattr(grid, "bits", None), "group_size": getattr(grid, "group_size", None),
                            "sym": getattr(grid, "sym", None), **report.options})

    def block_to_kernels(b: int, block: nn.Module) -> None:
        """Block b's outputs exist and the walk never runs it again: its matrices become the kernel layers
        of their codes now (the same layers as at the end), so its float weights are freed block by block
        instead of all living to the end beside the codes. Routed experts wait for the model-wide swap."""
        if any(isinstance(m, Experts) for m in block.modules()):
            return
        targets[:] = [t for t in targets if t.block != b]  # their views hold the unfused float weights
        for m in block.modules():
            if isinstance(m, (Attention, MLP)):
                m.fuse()
        prefix = f"blocks.{b}."
        parts = {n: p for n, p in kernel_parts(model, codes).items() if n.startswith(prefix)}
        if parts:
            lookup = grid_lookup(parts)
            to_kernels(block, lambda name, _linear: lookup(prefix + name), make_recipe(()))

    if calib is None:
        for t in targets:
            rtn(t, None)
    else:
        def make_stat(t: Target) -> Several:
            parts = {"error": Gram(t.shape[1], error_samples)}
            if method == "gptq":
                parts["hessian"] = Hessian(t.shape[1])
            elif method == "awq":
                parts["mean"] = awq.MeanAbs(t.shape[1])
                if awq_clip:  # the clip search's token sample
                    parts["tokens"] = awq.TokenSample(t.shape[1])
            return Several(**parts)

        def compress(step: BlockStep) -> bool:
            if method == "awq":
                records, weights = awq.scale_and_clip(model, step, grid, awq_grid, awq_clip)
                report.awq.extend(records)
                unclipped.update(weights)
            if method == "gptq":
                by_input: dict[str, list[Target]] = {}
                for t in step.targets:
                    by_input.setdefault(t.input_key, []).append(t)
                for key, same in by_input.items():
                    gptq(same, step.stats[key])
            else:
                for t in step.targets:
                    rtn(t, step.stats[t.input_key]["error"])
            return True

        walk(model, calib, make_stat, compress, skip=tuple(skip), batch_size=batch_size, progress=progress,
             groups=SEQUENTIAL_GROUPS if method == "gptq" and true_sequential else None,
             description=f"{method} {report.grid}", compute_dtype=torch.bfloat16 if calib_dtype == "bf16" else None,
             after_block=block_to_kernels if kernels else None)
    report.codes = codes
    if kernels:
        if quantize_head:
            codes["lm_head"] = _round_head(model.lm_head.weight, grid)
        del targets  # their views keep the unfused float weights alive through fuse()
        model.fuse()
        mark_phase("fused")
        parts = kernel_parts(model, codes)  # what the walk did not convert (all of it without calibration)
        recipe = make_recipe(tuple(n for n in model.named_linears(experts=True) if n not in parts))
        to_kernels(model, grid_lookup(parts), recipe)
        mark_phase("kernels")
        if float_dtype is not None:
            cast_float_layers(model, float_dtype)
    report.wall_s = time.perf_counter() - t_start
    report.peak_rss_bytes = peak_rss_bytes()
    report.weight_bytes = sum(b.numel() * b.element_size() for b in list(model.parameters()) + list(model.buffers()))
    return report
