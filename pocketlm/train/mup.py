"""µP (maximal update parametrisation, Yang et al. 2021 "Tensor Programs V") for pocketlm Transformers.

With width multiplier m = d_model / base_width:
- init: hidden matrices (every nn.Linear inside the blocks) ~ N(0, init_std^2 * base_width / fan_in),
  embeddings ~ N(0, init_std^2) (width independent), an untied LM head starts at zero;
- learning rates (Adam): hidden matrices lr / m, embeddings, norms and biases lr;
- output multiplier: logits scaled by 1 / m (ModelConfig.logit_scale);
- attention: softmax scale sqrt(base_head_dim) / head_dim, i.e. 1/d scaling, equal to the standard
  1/sqrt(d) at the base width (ModelConfig.attn_scale).
The standard parametrisation (SP) is the model's own init (std 0.02) with one learning rate.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pocketlm.model.config import ModelConfig


def mup_config(cfg: ModelConfig, base_width: int, base_head_dim: int | None = None) -> ModelConfig:
    """The config with µP's output multiplier and 1/d attention scale for width cfg.d_model."""
    base_hd = base_head_dim or max(1, round(cfg.dim_head * base_width / cfg.d_model))
    return cfg.replace(logit_scale=base_width / cfg.d_model, attn_scale=math.sqrt(base_hd) / cfg.dim_head)


def mup_init_(model: nn.Module, base_width: int, init_std: float = 0.02) -> None:
    """Re-initialise `model` in place with µP scales (see the module docstring)."""
    cfg = model.config
    with torch.no_grad():
        for module in model.blocks.modules():
            if isinstance(module, nn.Linear):
                fan_in = module.weight.shape[1]
                module.weight.normal_(0.0, init_std * math.sqrt(base_width / fan_in))
                if module.bias is not None:
                    module.bias.zero_()
        model.embed.weight.normal_(0.0, init_std)
        if not cfg.tie_embeddings:
            model.lm_head.weight.zero_()


def param_groups(model: nn.Module, lr: float, weight_decay: float, mup: bool = False,
                 base_width: int | None = None) -> list[dict]:
    """AdamW parameter groups: hidden matrices (lr / m under µP, decayed), embeddings/head (decayed),
    vectors such as norms and biases (not decayed). Each group carries `lr_scale` for schedules."""
    width_mult = model.config.d_model / base_width if (mup and base_width) else 1.0
    hidden, embed, vectors, seen = [], [], [], set()
    block_params = {id(p) for p in model.blocks.parameters()}
    shared = getattr(model, "shared_mlp", None)
    if shared is not None:
        block_params |= {id(p) for p in shared.parameters()}
    for name, p in model.named_parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        if p.ndim < 2:
            vectors.append(p)
        elif id(p) in block_params:
            hidden.append(p)
        else:
            embed.append(p)
    groups = [
        {"params": hidden, "lr_scale": 1.0 / width_mult, "weight_decay": weight_decay, "name": "hidden"},
        {"params": embed, "lr_scale": 1.0, "weight_decay": weight_decay, "name": "embedding"},
        {"params": vectors, "lr_scale": 1.0, "weight_decay": 0.0, "name": "vector"},
    ]
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    return groups
