"""Round-to-nearest weight-only quantization: every linear's weight rounded onto its int8 / int4 grid."""

from __future__ import annotations

import torch
from torch import nn

from pocketlm.model.quantize.grids import round_to_grid
from pocketlm.model.quantize.kernels import DTYPE_NAMES, check_scheme, kernel_layer, select_linears, to_kernels
from pocketlm.model.linears import QuantizationError, QuantRecipe
from pocketlm.model.transformer import Transformer
from pocketlm.utils import check_finite_weights


def quantize_model(model: nn.Module, scheme: str, group_size: int = 32, *,
                   skip: tuple[str, ...] | list[str] = (), compute_dtype: torch.dtype = torch.bfloat16,
                   skip_unsupported: bool = False, fuse: bool = True) -> nn.Module:
    """RTN-quantize every linear of `model` (in place) to Int8Linear / Int4Linear; returns `model`.

    With `fuse`, a pocketlm Transformer's q/k/v and gate/up are first fused (`model.fuse()`): each
    row is quantized as before, in fewer matmuls; routed MoE experts are quantized one expert at a time.
    Every layer is checked before any is swapped, so a QuantizationError leaves the weights
    untouched; with `skip_unsupported` such layers stay float. The float layers (skipped or
    unsupported) are listed in `model.transforms.quantization.float_layers`.
    """
    check_scheme(scheme, group_size)
    check_finite_weights(model, "model", QuantizationError)
    if fuse and isinstance(model, Transformer):
        model.fuse()
    kept = select_linears(model, scheme, group_size, tuple(skip), skip_unsupported)[1]  # no reference kept: each
    # float layer is freed as its integer layer replaces it
    recipe = QuantRecipe(scheme, group_size if scheme == "int4" else None, "rtn", DTYPE_NAMES[compute_dtype],
                         tuple(kept))
    return to_kernels(model, lambda name, lin: round_to_grid(lin.weight, scheme, group_size), recipe)


def rtn_linear(linear: nn.Module, scheme: str, group_size: int = 32,
               compute_dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """One nn.Linear rounded onto the scheme's grid, as its integer kernel layer."""
    check_scheme(scheme, group_size)
    return kernel_layer(round_to_grid(linear.weight, scheme, group_size), linear, compute_dtype)
