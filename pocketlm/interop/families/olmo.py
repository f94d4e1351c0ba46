"""OLMo (non-parametric LayerNorm, qkv clipping), OLMo-2 (norms after each sublayer, full qk-norm)
and OLMoE (OLMo-2-style attention with experts)."""

from __future__ import annotations

from typing import Any

from pocketlm.interop.families.base import read_moe
from pocketlm.interop.families.llama import MLP_EXPERTS, llama_like, read_llama, write_llama_like
from pocketlm.model.config import ModelConfig


def read_olmo(c: Any) -> dict[str, Any]:
    return {**read_llama(c), "norm": "layernorm", "norm_affine": False, "norm_eps": 1e-5, "clip_qkv": c.clip_qkv}


def read_olmo2(c: Any) -> dict[str, Any]:
    return {**read_llama(c), "norm_placement": "post_sublayer", "qk_norm": "full"}


def read_olmoe(c: Any) -> dict[str, Any]:
    return {**read_llama(c), **read_moe(c, c.num_experts, c.norm_topk_prob), "qk_norm": "full",
            "clip_qkv": c.clip_qkv}


def write_olmo(cfg: ModelConfig) -> dict[str, Any]:
    return {**write_llama_like(cfg), "attention_bias": cfg.qkv_bias, "clip_qkv": cfg.clip_qkv}


def write_olmoe(cfg: ModelConfig) -> dict[str, Any]:
    return {**write_olmo(cfg), "num_experts": cfg.n_experts, "num_experts_per_tok": cfg.top_k,
            "norm_topk_prob": cfg.router_norm_topk}


FAMILIES = (
    llama_like("olmo", "OlmoForCausalLM", read_olmo, write_olmo,
               picks=lambda cfg: cfg.norm == "layernorm" and not cfg.norm_affine, pick_order=90),
    llama_like("olmo2", "Olmo2ForCausalLM", read_olmo2, write_llama_like,
               renamed={"attn_norm.weight": "post_attention_layernorm.weight",
                        "mlp_norm.weight": "post_feedforward_layernorm.weight"}),
    llama_like("olmoe", "OlmoeForCausalLM", read_olmoe, write_olmoe, legacy_experts=MLP_EXPERTS),
)
