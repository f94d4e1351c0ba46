"""Integers already on a grid -> the model's integer kernel layers: the step every quantizer ends with.

RTN, GPTQ and AWQ differ in how they choose the codes; all of them hand `to_kernels` one
`GridWeight` per layer name (names as `Transformer.named_linears(experts=True)` gives them: fused
`qkv` / `gate_up` once the model is fused, routed experts as `<moe>.experts.gate_up.<e>`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import torch
from torch import nn

from pocketlm.model.quantize.grids import GridWeight
from pocketlm.model.linears import (SCHEMES, Int4Linear, Int8Linear, QuantizationError, QuantRecipe, check_group_size,
                                    check_int4, check_int8, replace_linears, splits_of)
from pocketlm.model.transformer import Transformer

DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def check_scheme(scheme: str, group_size: int | None) -> None:
    if scheme not in SCHEMES:
        raise QuantizationError(f"unknown quantization {scheme!r}; choose one of {SCHEMES}.")
    if scheme == "int4":
        check_group_size(group_size)


def linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers a weight-only scheme can take: every nn.Linear, and a Transformer's routed experts."""
    if isinstance(model, Transformer):
        return model.named_linears(experts=True)
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def select_linears(model: nn.Module, scheme: str, group_size: int | None, skip: tuple[str, ...] = (),
                   skip_unsupported: bool = False) -> tuple[dict[str, nn.Module], list[str]]:
    """(layers to quantize, names left in float), every layer checked against the kernel first.

    `skip`: names, name prefixes or suffixes ("lm_head") kept in float. A layer the kernel cannot
    take raises QuantizationError naming it, or with `skip_unsupported` stays float."""
    check_scheme(scheme, group_size)

    def skipped(name: str) -> bool:
        return any(name == s or name.startswith(s + ".") or name.endswith(s) for s in skip)

    layers = linear_layers(model)
    targets, kept = {}, [n for n in layers if skipped(n)]
    for name, lin in layers.items():
        if skipped(name):
            continue
        try:
            check_int8(name, lin) if scheme == "int8" else check_int4(name, lin, group_size)
            targets[name] = lin
        except QuantizationError:
            if not skip_unsupported:
                raise
            kept.append(name)
    if not targets:
        raise QuantizationError("the model has no linear layers left to quantize.")
    return targets, kept


def kernel_layer(grid: GridWeight, linear: nn.Module, compute_dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """The integer kernel layer computing `linear` with the weight `grid` (bias and fused splits kept)."""
    if grid.scheme == "int8":
        return Int8Linear(grid.q, grid.scales, linear.bias, splits_of(linear), compute_dtype)
    return Int4Linear(grid.q, grid.scales, grid.zeros, grid.group_size, linear.bias, splits_of(linear), compute_dtype)


@torch.no_grad()
def to_kernels(model: nn.Module, grids: Mapping[str, GridWeight] | Callable[[str, nn.Module], GridWeight | None],
               recipe: QuantRecipe) -> nn.Module:
    """Swap each named layer for the integer kernel holding its grid weight (in place); returns `model`.

    `grids`: name -> GridWeight, or a function (name, linear) -> GridWeight | None computing them one
    layer at a time (so only one layer's codes exist at once). A Transformer records `recipe` in
    `model.transforms.quantization`; its tied LM head gets its own copy, the embedding stays float."""
    lookup = (lambda name, lin: grids.get(name)) if isinstance(grids, Mapping) else grids
    dtype = recipe.torch_compute_dtype

    def convert(name: str, linear: nn.Module) -> nn.Module:
        grid = lookup(name, linear) if name not in recipe.float_layers else None
        return linear if grid is None else kernel_layer(grid, linear, dtype)

    if isinstance(model, Transformer):
        model.swap_linears(convert, experts=True)
        model.transforms = dataclasses.replace(model.transforms, quantization=recipe)
    else:
        replace_linears(model, convert)
    return model
