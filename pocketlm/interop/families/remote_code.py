"""Architectures pocketlm builds (from the catalog) whose transformers code is remote, so no family
here loads their checkpoints, but llama.cpp runs them: MiniCPM-1/2 and OpenELM (GGUF only)."""

from __future__ import annotations

from typing import Any

from pocketlm.interop.families.base import QKV, GGUFArch, failed_rules, gguf_name
from pocketlm.interop.families.llama import (GGUF_ATTN, GGUF_EMBED, GGUF_FFN, GGUF_HEAD, GGUF_NORMS, GGUF_QK_NORM,
                                             PAIR_ROPE, N, blocks, graph_rules, half_rope_rules, pair_rope_rules,
                                             transformer_hparams)
from pocketlm.model.config import ModelConfig


# MiniCPM-1/2: llama with muP-style scales; llama.cpp divides logits by its logit_scale key (as its
# converter writes hidden_size / dim_model_base) and rotates pairs (q/k rows permuted)
def _minicpm_hparams(cfg: ModelConfig) -> dict[str, Any]:
    return {**transformer_hparams(cfg), "embedding_scale": float(cfg.embed_scale),
            "residual_scale": float(cfg.residual_scale), "logit_scale": 1.0 / cfg.logit_scale}


def _minicpm_rules(cfg: ModelConfig) -> list[str]:
    return graph_rules(cfg, scales=None) + failed_rules(pair_rope_rules(cfg) + [
        ((cfg.embed_scale, cfg.residual_scale, cfg.logit_scale) != (1.0, 1.0, 1.0),
         "MiniCPM's embedding / residual / logit scales (a model without them is llama)")])


MINICPM_GGUF = GGUFArch("minicpm", {**GGUF_EMBED, **blocks({**GGUF_NORMS, **GGUF_ATTN, **GGUF_FFN}), **GGUF_HEAD},
                        _minicpm_hparams, _minicpm_rules, PAIR_ROPE)

# OpenELM: per-layer head counts and FFN widths (array keys), q/k/v as one tensor, per-head qk RMSNorm
OPENELM_GGUF = GGUFArch(
    "openelm", {**GGUF_EMBED, **blocks({**GGUF_NORMS, QKV: gguf_name(N.ATTN_QKV), "attn.o_proj.weight": gguf_name(
        N.ATTN_OUT), **GGUF_QK_NORM, **GGUF_FFN}), **GGUF_HEAD},
    transformer_hparams,
    lambda cfg: graph_rules(cfg, qk_norm=("head",), per_layer_shapes=True, tied=(True,))
    + failed_rules(half_rope_rules(cfg)))

GGUF_ARCHS = (MINICPM_GGUF, OPENELM_GGUF)
