"""Architectures pocketlm builds (from the catalog) whose transformers code is remote, so no family
here loads their checkpoints, but llama.cpp runs them: MiniCPM-1/2, OpenELM and DeciLM (GGUF only)."""

from __future__ import annotations

from typing import Any

from pocketlm.interop.families.base import QKV, GGUFArch, failed_rules, gguf_name
from pocketlm.interop.families.llama import (GGUF_ATTN, GGUF_EMBED, GGUF_FFN, GGUF_HEAD, GGUF_NORMS, GGUF_QK_NORM,
                                             PAIR_ROPE, N, blocks, graph_rules, half_rope_rules, llama3_rope_factors,
                                             pair_rope_rules, transformer_hparams)
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



# DeciLM (Llama-3.1-Nemotron-51B, NVIDIA's NAS-pruned Llama): llama's tensors and pair RoPE, with a graph
# that reads head_count / head_count_kv / feed_forward_length per layer (llama's graph takes layer 0's
# for every layer). pocketlm writes it only for per-layer widths: uniform models stay `llama`.
def _deci_rules(cfg: ModelConfig) -> list[str]:
    lists = any(isinstance(getattr(cfg, f), list) for f in ("n_head", "n_kv_head", "intermediate_size"))
    return graph_rules(cfg, qkv_bias=(False, True), out_bias=(False, True), per_layer_shapes=True,
                       rope_scaling=("default", "linear", "llama3")) + failed_rules(pair_rope_rules(cfg) + [
        (lists, "per-layer head counts or FFN widths (a uniform llama-shaped model is written as llama)")])


DECI_GGUF = GGUFArch("deci", {**GGUF_EMBED, **blocks({**GGUF_NORMS, **GGUF_ATTN, **GGUF_FFN}), **GGUF_HEAD},
                     transformer_hparams, _deci_rules, PAIR_ROPE, extra=llama3_rope_factors)

GGUF_ARCHS = (MINICPM_GGUF, OPENELM_GGUF, DECI_GGUF)
