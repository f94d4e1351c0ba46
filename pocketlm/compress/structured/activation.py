"""Minitron's activation-based importance (Muralidharan et al. 2024, "Compact Language Models via
Pruning and Knowledge Distillation", section 2.2), from one forward pass over the calibration set:

- a head: the L2 norm of its attention output (the o_proj input slice of that head);
- an FFN channel: the magnitude of its hidden activation (the down_proj input, act(gate) * up);
- an embedding channel: the magnitude of the normalised residual stream (every attn_norm / mlp_norm
  output, i.e. the inputs of q/k/v and gate/up), summed over layers.

The same pass measures each block's Block Influence (`depth.block_influence`'s definition) from the
block's input and output, so depth scoring costs no second forward.

Per-token magnitudes are aggregated over the sequence, then the batch, by 'mean' or 'l2' (the paper's
best for width: L2 over batch, mean over sequence; pocketlm's default). Statistics are gathered on the
shared block walk, one block at a time, never holding more than one block boundary of activations.
`compute_dtype=torch.bfloat16` runs those forwards under bf16 autocast (statistics stay fp32), as the
unstructured pruners' `--calib-dtype bf16` does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pocketlm.compress.layerwise import BlockStep, walk
from pocketlm.compress.structured.importance import Importance, aggregate, check_aggregation, finish, zeros
from pocketlm.compress.targets import Target
from pocketlm.model.transformer import Transformer


class Magnitudes:
    """Aggregated per-channel (or per-group, L2 within a group of `group` channels) magnitudes."""

    def __init__(self, in_features: int, group: int, seq: str, batch: str):
        self.group, self.seq, self.batch = group, seq, batch
        self.total = torch.zeros(in_features // group)
        self.count = 0

    def add_batch(self, x: Tensor) -> None:
        x = x.float()
        if x.dim() == 2:
            x = x[None]
        if self.group > 1:
            x = x.unflatten(-1, (-1, self.group)).norm(dim=-1)
        else:
            x = x.abs()
        self.total += aggregate(x, self.seq, self.batch)
        self.count += x.shape[0]

    def value(self) -> Tensor:
        return finish(self.total, self.batch, self.count)


def _leaf(target: Target) -> str:
    return target.name.rpartition(".")[2]


@torch.no_grad()
def activation_importance(model: Transformer, calib: Tensor, seq: str = "mean", batch: str = "l2",
                          batch_size: int = 8, progress: bool = False,
                          compute_dtype: torch.dtype | None = None) -> Importance:
    """Minitron importance of every head, FFN channel and embedding channel of `model` on `calib` [N, L]."""
    check_aggregation(seq, batch)
    cfg = model.config
    heads, ffn, embed = zeros(cfg)
    hd = cfg.dim_head

    def make_stat(t: Target) -> Magnitudes:
        return Magnitudes(t.shape[1], hd if _leaf(t) == "o_proj" else 1, seq, batch)

    def collect(step: BlockStep) -> bool:
        for t in step.targets:
            stat = step.stats.get(t.input_key)
            leaf = _leaf(t)
            if leaf == "o_proj":
                heads[step.index] = stat.value()
            elif leaf == "down_proj":
                ffn[step.index] = stat.value()
            elif leaf in ("q_proj", "up_proj"):  # the attn_norm / mlp_norm outputs (shared with k/v, gate)
                embed.add_(stat.value())
        return False

    influence, tokens = torch.zeros(cfg.n_layer), torch.zeros(cfg.n_layer)

    def block_hook(i: int):
        def fn(module, args, output):
            cos = torch.nn.functional.cosine_similarity(args[0].float(), output.float(), dim=-1)
            influence[i] += float((1 - cos).sum())
            tokens[i] += cos.numel()
        return fn

    handles = [b.register_forward_hook(block_hook(i)) for i, b in enumerate(model.blocks)]
    try:
        walk(model, calib, make_stat, collect, skip=(), batch_size=batch_size, progress=progress,
             description="activation importance", compute_dtype=compute_dtype)
    finally:
        for h in handles:
            h.remove()
    return Importance("activation", heads, ffn, embed, block_influence=influence / tokens)
