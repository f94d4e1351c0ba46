"""SmoothQuant W8A8: migrate activation outliers into the weights, then int8 weights per output channel and
int8 activations per token on an int8 x int8 -> int32 kernel (Xiao et al. 2023, "SmoothQuant: Accurate and
Efficient Post-Training Quantization for Large Language Models", https://arxiv.org/abs/2211.10438).

Follows mit-han-lab/smoothquant `smooth.py`: for the matrices reading a norm's output (q/k/v; gate/up),
s_j = max|X_j|^α / max|W_:,j|^(1-α) (max over calibration tokens, and over the rows of every matrix
of the group), folded into the norm (x / s) and the matrices (W · s), which leaves the float function
unchanged (the same folds as AWQ, `awq.ScaleGroup`). The reference fixes α (0.5; 0.8-0.85 for some
models); here α is searched per group over {0, 0.1, ..., 1} by the W8A8-simulated output error of the
module the group feeds (attention, FFN), or fixed by `alpha`. Every block matrix (o_proj and down_proj
unsmoothed, as in the reference) then becomes a `model.linears.W8A8Linear`.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn

from pocketlm.compress.layerwise import BlockStep, walk
from pocketlm.compress.quantize.awq import Recorded, ScaleGroup, fake_quantize, record_inspected, scale_groups
from pocketlm.compress.quantize.driver import check_calibration, quantize
from pocketlm.compress.report import QuantReport
from pocketlm.compress.targets import DEFAULT_SKIP, select
from pocketlm.model.linears import Int8Linear, QuantRecipe, W8A8Linear
from pocketlm.model.quantize import IntGrid
from pocketlm.model.transformer import Transformer

REFERENCE = "https://github.com/mit-han-lab/smoothquant/blob/main/smoothquant/smooth.py"
ALPHAS = tuple(i / 10 for i in range(11))
WEIGHTS = IntGrid(8, None, True, None)  # int8 per output channel, fp32 scales


class AbsMax:
    """Per-channel max |x| over every token seen (SmoothQuant's activation statistic)."""

    def __init__(self, in_features: int):
        self.max = torch.zeros(in_features)

    def add_batch(self, x: Tensor) -> None:
        self.max = torch.maximum(self.max, x.reshape(-1, x.shape[-1]).abs().amax(0).float())


def fake_quantize_tokens(x: Tensor) -> Tensor:
    """x rounded to int8 per token (row) and back: what W8A8Linear does to its input."""
    s = x.float().abs().amax(-1, keepdim=True).clamp(min=1e-8) / 127
    return (torch.round(x.float() / s).clamp(-127, 127) * s).to(x.dtype)


def smooth_scales(act_max: Tensor, weights: list[Tensor], alpha: float) -> Tensor:
    w_max = torch.stack([w.abs().amax(0).float() for w in weights]).amax(0)
    return (act_max.clamp(min=1e-5).pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)).clamp(min=1e-5)


@torch.no_grad()
def search_alpha(group: ScaleGroup, act_max: Tensor, recorded: Recorded, alphas=ALPHAS) -> tuple[float, list[float]]:
    """The α whose smoothing gives the least W8A8-simulated output error of the group's module."""
    originals = [t.weight.clone() for t in group.targets]
    losses = []
    for alpha in alphas:
        s = smooth_scales(act_max, originals, alpha)
        for t, w in zip(group.targets, originals):
            t.weight.copy_(fake_quantize(WEIGHTS, w.float() * s) / s)
        hooks = [m.register_forward_pre_hook(lambda m, args, s=s: (fake_quantize_tokens(args[0] / s) * s,))
                 for m in dict.fromkeys(t.module for t in group.targets)]
        try:
            losses.append(recorded.mse())
        finally:
            for h in hooks:
                h.remove()
    for t, w in zip(group.targets, originals):
        t.weight.copy_(w)
    return alphas[min(range(len(alphas)), key=losses.__getitem__)], losses


@torch.no_grad()
def smoothquant(model: Transformer, calib: Tensor | None, alpha: float | None = None, *, smooth: bool = True,
                skip: tuple[str, ...] = DEFAULT_SKIP, batch_size: int = 8, progress: bool = False) -> QuantReport:
    """Smooth (unless `smooth=False`: plain W8A8), then turn every block matrix into a W8A8Linear (in place)."""
    t0 = time.perf_counter()
    if model.transforms.fused:
        model.unfuse()
    if smooth:
        check_calibration(calib, "smoothquant", select(model, tuple(skip)))
    records: list[dict[str, Any]] = []

    def migrate(step: BlockStep) -> bool:
        groups = [g for g in scale_groups(model, step.index, step.targets) if not isinstance(g.producer, nn.Linear)]
        recorded = record_inspected(groups, step)
        for g in groups:
            act_max = step.stats[g.input_key].max
            best, losses = (alpha, []) if alpha is not None else search_alpha(g, act_max, recorded[id(g.inspect)])
            g.fold(smooth_scales(act_max, [t.weight for t in g.targets], best))
            records.append({"layers": [t.name for t in g.targets], "alpha": best, "losses": losses})
        return False  # folding keeps the float function: the next block's inputs are unchanged

    if smooth:
        walk(model, calib, lambda t: AbsMax(t.shape[1]), migrate, skip=tuple(skip), batch_size=batch_size,
             progress=progress, description="SmoothQuant scales")
    report = quantize(model, "rtn", 8, None, True, calib, skip=skip, batch_size=batch_size,
                      compute_dtype=torch.float32, progress=progress)
    report.method, report.awq = "smoothquant", records
    recipe = model.transforms.quantization
    for name, m in list(model.named_modules()):
        if type(m) is Int8Linear:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, W8A8Linear.from_int8(m))
    model.transforms = type(model.transforms)(model.transforms.fused, model.transforms.packed,
                                              QuantRecipe("w8a8", None, "smoothquant" if smooth else "rtn",
                                                          recipe.compute_dtype, recipe.float_layers,
                                                          {"alpha": alpha, **recipe.params}))
    report.wall_s = time.perf_counter() - t0
    return report
