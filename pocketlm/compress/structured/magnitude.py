"""Weight-magnitude importance (no calibration data): the L2 norm of every weight a structure owns.

A head owns its q rows and its o_proj columns; an FFN channel its gate and up rows and its down_proj
column; an embedding channel its column in the token embedding and in every matrix that reads the
residual stream, its row in every matrix that writes it, and its norm gains."""

from __future__ import annotations

import torch
from torch import Tensor

from pocketlm.compress.structured.importance import Importance, zeros
from pocketlm.model.transformer import Transformer


def _rows(w: Tensor, group: int = 1) -> Tensor:
    """Squared L2 norm of each group of `group` rows of w [out, in]."""
    return w.float().pow(2).sum(1).unflatten(0, (-1, group)).sum(1)


@torch.no_grad()
def magnitude_importance(model: Transformer) -> Importance:
    cfg = model.config
    heads, ffn, embed = zeros(cfg)
    hd = cfg.dim_head
    embed += model.embed.weight.float().pow(2).sum(0)
    if not cfg.tie_embeddings:
        embed += model.lm_head.weight.float().pow(2).sum(0)
    for i, block in enumerate(model.blocks):
        a, m = block.attn, block.mlp
        heads[i] = _rows(a.q_proj.weight, hd) + _rows(a.o_proj.weight.T, hd)
        ins = [m.up_proj] + ([m.gate_proj] if m.gated else [])
        ffn[i] = sum(_rows(lin.weight) for lin in ins) + _rows(m.down_proj.weight.T)
        for lin in (a.q_proj, a.k_proj, a.v_proj, *ins):
            embed += lin.weight.float().pow(2).sum(0)
        for lin in (a.o_proj, m.down_proj):
            embed += lin.weight.float().pow(2).sum(1)
    return Importance("magnitude", heads.sqrt(), ffn.sqrt(), embed.sqrt())
