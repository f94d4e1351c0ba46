"""Gemma and Gemma-2: (1 + w) RMSNorm, a scaled embedding; Gemma-2 adds sandwich norms, logit
soft-capping, a set attention scale and alternating sliding-window layers."""

from __future__ import annotations

from typing import Any

from pocketlm.interop.families.base import activation, layer_types, read_sliding
from pocketlm.interop.families.llama import llama_like, read_llama, write_llama_like
from pocketlm.model.config import ModelConfig


def read_gemma(c: Any) -> dict[str, Any]:
    act = getattr(c, "hidden_activation", None) or c.hidden_act
    return {**read_llama(c), "activation": activation(act, c.model_type), "norm_unit_offset": True,
            "embed_scale": c.hidden_size**0.5, "embed_scale_round": True}


def read_gemma2(c: Any) -> dict[str, Any]:
    return {**read_gemma(c), **read_sliding(c, c.num_hidden_layers), "norm_placement": "sandwich",
            "attn_scale": c.query_pre_attn_scalar**-0.5,
            "attn_logit_softcap": c.attn_logit_softcapping, "final_logit_softcap": c.final_logit_softcapping}


def write_gemma(cfg: ModelConfig) -> dict[str, Any]:
    d = {**write_llama_like(cfg), "attention_bias": cfg.qkv_bias}
    d["hidden_activation"] = d["hidden_act"]
    return d


def write_gemma2(cfg: ModelConfig) -> dict[str, Any]:
    d = {**write_gemma(cfg), "sliding_window": cfg.sliding_window}
    if cfg.sliding_window is not None:
        d["layer_types"] = layer_types(cfg)
    d.update(query_pre_attn_scalar=round(cfg.attn_scale**-2), attn_logit_softcapping=cfg.attn_logit_softcap,
             final_logit_softcapping=cfg.final_logit_softcap)
    return d


FAMILIES = (
    llama_like("gemma", "GemmaForCausalLM", read_gemma, write_gemma,
               picks=lambda cfg: cfg.norm_unit_offset, pick_order=50),
    llama_like("gemma2", "Gemma2ForCausalLM", read_gemma2, write_gemma2,
               renamed={"mlp_norm.weight": "pre_feedforward_layernorm.weight",
                        "post_attn_norm.weight": "post_attention_layernorm.weight",
                        "post_mlp_norm.weight": "post_feedforward_layernorm.weight"},
               picks=lambda cfg: cfg.norm_placement == "sandwich", pick_order=40),
)
