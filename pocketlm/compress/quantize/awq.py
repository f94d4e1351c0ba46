"""AWQ: activation-aware weight quantization (Lin et al. 2024, "AWQ: Activation-aware Weight Quantization for
LLM Compression and Acceleration", https://arxiv.org/abs/2306.00978).

Follows mit-han-lab/llm-awq `auto_scale.py` / `auto_clip.py`. Per block, for each group of matrices that
read one input produced by a layer we may rescale (the attention norm -> q/k/v; v_proj -> o_proj when
v and o have the same width, i.e. no grouped-query sharing; the FFN norm -> gate/up; up_proj -> down_proj
of a gated FFN): s = mean|x|^α per input channel, normalised by sqrt(max s · min s), for α in
{0, 1/20, ..., 19/20}; each candidate quantizes W·s, divides by s, and is scored by the mean squared error
of the output of the module llm-awq inspects (attention for q/k/v, o_proj, the FFN for gate/up, down_proj)
against its float output, on the calibration inputs captured when the walk ran the float block. α = 0
is plain RTN, so the chosen scales never score worse than RTN. The best s is folded: the producer's output divided by s (a norm's gain and bias,
Gemma's 1 + w form included, or a linear's rows), the group's columns multiplied by s, so the float
model computes the same function. Then, with `clip=True` (llm-awq's default; off by default here), the clip
search: for every matrix but q/k (whose errors the attention softmax amplifies, as llm-awq skips them) each
group's range is shrunk to max|w|·(1 - i/20), i < 10, keeping per (row, group) the shrink with the least
output error on 512 sampled input tokens. On a model trained on books, the clip search brought the
quantized model closer to the float one (lower KL) and lowered perplexity on unseen chunks of those books,
but it raised perplexity on unseen books above RTN's, where the scales alone stay below RTN
(docs/compress.md, round 8). llm-compressor's AWQ has no clip search either.

Not folded (the group's matrices are still quantized, without scales): post-norm and post-sublayer
placements, a norm shared by attention and FFN, a norm without gain, routed-expert FFNs (the router
reads the same norm output), a shared FFN, and groups with a matrix left out by `skip`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pocketlm.compress.layerwise import BlockStep
from pocketlm.compress.stats import MeanAbs
from pocketlm.compress.targets import Target
from pocketlm.model.transformer import MLP, Attention, Norm, Transformer

REFERENCE = "https://github.com/mit-han-lab/llm-awq/blob/main/awq/quantize/auto_scale.py"
__all__ = ["MeanAbs", "ScaleGroup", "TokenSample", "clip_search", "scale_and_clip", "scale_groups"]


class TokenSample:
    """Up to `keep` input rows, evenly spaced over the first `cap` tokens seen (llm-awq's clip sample)."""

    def __init__(self, in_features: int, keep: int = 512, cap: int = 8192):
        self.rows: list[Tensor] = []
        self.count, self.keep, self.cap = 0, keep, cap

    def add_batch(self, x: Tensor) -> None:
        rows = x.reshape(-1, x.shape[-1]).float()[: self.cap - self.count]
        if rows.numel():
            self.rows.append(rows)
            self.count += rows.shape[0]

    def tokens(self) -> Tensor:
        x = torch.cat(self.rows)
        return x[:: max(1, x.shape[0] // self.keep)][: self.keep]


@dataclass
class ScaleGroup:
    """Matrices reading one input, and the layer producing it (whose output the scales divide)."""

    producer: nn.Module  # Norm or nn.Linear
    targets: list[Target]
    inspect: nn.Module  # the module whose output scores a candidate (llm-awq's module2inspect)

    @property
    def input_key(self) -> str:
        return self.targets[0].input_key

    @torch.no_grad()
    def fold(self, s: Tensor) -> None:
        """Producer's output / s, consumers' columns * s: the float function is unchanged."""
        p = self.producer
        if isinstance(p, Norm):
            if p.unit_offset:
                p.weight.copy_((1 + p.weight.float()) / s - 1)
            else:
                p.weight.div_(s.to(p.weight.dtype))
        else:
            p.weight.div_(s.to(p.weight.dtype)[:, None])
        if p.bias is not None:
            p.bias.div_(s.to(p.bias.dtype))
        for t in self.targets:
            t.weight.mul_(s.to(t.weight.dtype)[None, :])


def scale_groups(model: Transformer, b: int, targets: list[Target]) -> list[ScaleGroup]:
    """The foldable groups of stored block `b`, in the block's order (see the module docstring)."""
    cfg, block, prefix = model.config, model.blocks[b], f"blocks.{b}"
    by_name = {t.name: t for t in targets}

    def present(module_prefix: str, leaves: list[str]) -> list[Target] | None:
        found = [by_name.get(f"{module_prefix}.{leaf}") for leaf in leaves]
        return found if all(found) else None

    groups = []
    pre_norm = cfg.norm_placement in ("pre", "sandwich") and not (cfg.parallel_residual and cfg.parallel_shared_norm)
    attn, mlp = block.attn, getattr(block, "mlp", None)
    readers = [n for n in ("q_proj", "k_proj", "v_proj", "q_a_proj", "kv_a_proj") if getattr(attn, n, None) is not None]
    if pre_norm and block.attn_norm.weight is not None and (found := present(f"{prefix}.attn", readers)):
        groups.append(ScaleGroup(block.attn_norm, found, attn))
    if isinstance(attn, Attention) and attn.n_kv == attn.n_head and (found := present(f"{prefix}.attn", ["o_proj"])) \
            and f"{prefix}.attn.v_proj" in by_name:
        groups.append(ScaleGroup(attn.v_proj, found, attn.o_proj))
    if isinstance(mlp, MLP) and model.shared_mlp is None:
        leaves = ["gate_proj", "up_proj"] if mlp.gated else ["up_proj"]
        if pre_norm and block.mlp_norm.weight is not None and (found := present(f"{prefix}.mlp", leaves)):
            groups.append(ScaleGroup(block.mlp_norm, found, mlp))
        if mlp.gated and (found := present(f"{prefix}.mlp", ["down_proj"])) and f"{prefix}.mlp.up_proj" in by_name:
            groups.append(ScaleGroup(mlp.up_proj, found, mlp.down_proj))
    return groups


def fake_quantize(grid: Any, weight: Tensor) -> Tensor:
    q, *params = grid.quantize(weight.float())
    return grid.dequantize(q, *params)


class Recorded:
    """The (args, output) of each call of a module while the walk runs the float block once."""

    def __init__(self, module: nn.Module):
        self.module, self.calls = module, []
        self.handle = module.register_forward_hook(lambda m, args, out: self.calls.append((args, out.detach())))

    def mse(self) -> float:
        """Mean squared error of the module's output now against the recorded output."""
        return sum(float((self.module(*args).float() - out.float()).pow(2).mean())
                   for args, out in self.calls) / len(self.calls)


def record_inspected(groups: list[ScaleGroup], step: BlockStep) -> dict[int, Recorded]:
    """Run the float block once, recording each group's inspected module: id(module) -> Recorded."""
    recorded = {id(g.inspect): Recorded(g.inspect) for g in groups}
    try:
        step.run()
    finally:
        for r in recorded.values():
            r.handle.remove()
    return recorded


@torch.no_grad()
def search_scale(group: ScaleGroup, mean_abs: Tensor, recorded: Recorded, grid: Any,
                 n_grid: int = 20) -> tuple[Tensor, float, list[float]]:
    """(best scales, best α, loss per α) for one group; the group's weights are left as they were."""
    originals = [t.weight.clone() for t in group.targets]
    losses, best = [], (float("inf"), None, 0.0)
    for i in range(n_grid):
        alpha = i / n_grid
        s = mean_abs.pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        for t, w in zip(group.targets, originals):
            t.weight.copy_(fake_quantize(grid, w.float() * s) / s)
        losses.append(recorded.mse())
        if losses[-1] < best[0]:
            best = (losses[-1], s, alpha)
    for t, w in zip(group.targets, originals):
        t.weight.copy_(w)
    return best[1], best[2], losses


@torch.no_grad()
def clip_search(weight: Tensor, x: Tensor, grid: Any, n_grid: int = 20, max_shrink: float = 0.5) -> Tensor:
    """Per (row, group) max |w| [N, G] that minimises the group's output error on the tokens `x` [T, K]."""
    n, k = weight.shape
    g = grid.group_of(k)
    w = weight.float().reshape(n, k // g, g)
    xg = x.float().reshape(-1, k // g, g)
    reference = torch.einsum("ngc,tgc->ntg", w, xg)
    full = w.abs().amax(-1)
    best_max, best_err = full.clone(), torch.full_like(full, float("inf"))
    for i in range(int(max_shrink * n_grid)):
        max_val = full * (1 - i / n_grid)
        clipped = torch.maximum(torch.minimum(w, max_val[..., None]), -max_val[..., None])
        q = fake_quantize(grid, clipped.reshape(n, k)).reshape(n, k // g, g)
        err = (torch.einsum("ngc,tgc->ntg", q, xg) - reference).pow(2).mean(1)
        better = err < best_err
        best_err[better], best_max[better] = err[better], max_val[better]
    return best_max


def _clips(name: str) -> bool:
    return not name.rpartition(".")[2].startswith(("q_", "k_", "kv_"))


@torch.no_grad()
def scale_and_clip(model: Transformer, step: BlockStep, grid: Any, n_grid: int = 20,
                   clip: bool = False) -> tuple[list[dict[str, Any]], dict[str, Tensor]]:
    """AWQ on one block (before the driver rounds it): fold the searched scales, then clip (when `clip`).

    Returns (a record per scaled group, each clipped target's weight before clipping). The error probe's
    Gram of each scaled input (and, for the clip search, its sampled tokens) is rescaled to the folded
    inputs x / s."""
    groups = scale_groups(model, step.index, step.targets)
    recorded = record_inspected(groups, step)
    records = []
    for group in groups:
        stats = step.stats[group.input_key]
        s, alpha, losses = search_scale(group, stats["mean"].mean(), recorded[id(group.inspect)], grid, n_grid)
        group.fold(s)
        if "tokens" in stats:  # the clip search's sample (collected only for it)
            stats["tokens"].rows = [torch.cat(stats["tokens"].rows) / s]
        stats["error"].G = stats["error"].G / s[:, None] / s[None, :]
        records.append({"layers": [t.name for t in group.targets], "alpha": alpha,
                        "loss": losses[round(alpha * n_grid)], "rtn_loss": losses[0]})
    unclipped = {}
    if clip:
        for t in step.targets:
            if _clips(t.name) and step.stats[t.input_key]["tokens"].rows:
                unclipped[t.name] = t.weight.float().clone()
                n, k = t.shape
                g = grid.group_of(k)
                max_val = clip_search(t.weight, step.stats[t.input_key]["tokens"].tokens(), grid, n_grid)
                limit = max_val.repeat_interleave(g, 1).to(t.weight.dtype)
                t.weight.copy_(torch.maximum(torch.minimum(t.weight, limit), -limit))
    return records, unclipped
