"""First-order Taylor importance (LLM-Pruner, Ma et al. 2023): the loss change from deleting a structure,
estimated per weight as |w * dL/dw| (LLM-Pruner's element-wise first order) and summed over the
weights the structure owns (the same ownership as `magnitude`). The gradient is of the next-token loss,
accumulated over the calibration batches."""

from __future__ import annotations

import torch
from torch import Tensor

from pocketlm.compress.structured.importance import Importance, zeros
from pocketlm.model.transformer import Transformer
from pocketlm.train.loop import lm_loss


def _rows(s: Tensor, group: int = 1) -> Tensor:
    return s.sum(1).unflatten(0, (-1, group)).sum(1)


def taylor_importance(model: Transformer, calib: Tensor, batch_size: int = 8) -> Importance:
    cfg = model.config
    was_training, flags = model.training, [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    try:
        for i in range(0, calib.shape[0], batch_size):
            lm_loss(model, calib[i:i + batch_size]).backward()
        return _scores(model)
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.grad = None
            p.requires_grad_(flag)
        model.train(was_training)


@torch.no_grad()
def _scores(model: Transformer) -> Importance:
    cfg = model.config
    heads, ffn, embed = zeros(cfg)
    H, K, hd = cfg.heads(0), cfg.kv_heads(0), cfg.dim_head
    groups = torch.zeros(cfg.n_layer, K)

    def s(lin: torch.nn.Module) -> Tensor:
        return (lin.weight * lin.weight.grad).float().abs()

    embed += s(model.embed).sum(0)  # tied: the LM head's gradient is already in embed.weight.grad
    if not cfg.tie_embeddings:
        embed += s(model.lm_head).sum(0)
    for i, block in enumerate(model.blocks):
        a, m = block.attn, block.mlp
        q, k, v, o = s(a.q_proj), s(a.k_proj), s(a.v_proj), s(a.o_proj)
        heads[i] = _rows(q, hd) + _rows(o.T, hd)
        groups[i] = heads[i].reshape(K, H // K).sum(-1) + _rows(k, hd) + _rows(v, hd)
        ins = [s(m.up_proj)] + ([s(m.gate_proj)] if m.gated else [])
        down = s(m.down_proj)
        ffn[i] = sum(_rows(x) for x in ins) + _rows(down.T)
        embed += q.sum(0) + k.sum(0) + v.sum(0) + sum(x.sum(0) for x in ins) + o.sum(1) + down.sum(1)
    return Importance("taylor", heads, ffn, embed, kv_groups=groups)
