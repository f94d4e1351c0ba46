"""OLMo (non-parametric LayerNorm, qkv clipping), OLMo-2 (norms after each sublayer, full qk-norm)
and OLMoE (OLMo-2-style attention with experts)."""

from __future__ import annotations

from typing import Any

from pocketlm.interop.families.base import GGUFArch, failed_rules, gguf_name, read_moe
from pocketlm.interop.families.llama import (GGUF_ATTN, GGUF_EMBED, GGUF_EXPERTS, GGUF_FFN, GGUF_HEAD, GGUF_NORMS,
                                             GGUF_QK_NORM, MLP_EXPERTS, PAIR_ROPE, N, blocks, graph_rules,
                                             half_rope_rules, llama_like, pair_rope_rules, read_llama,
                                             transformer_hparams, write_llama_like)
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


# ---- GGUF: llama.cpp's olmo (pair RoPE: q/k rows permuted), olmo2 and olmoe (RoPE on halves) ---------

def _olmo_hparams(cfg: ModelConfig) -> dict[str, Any]:
    hp = transformer_hparams(cfg)
    if cfg.clip_qkv is not None:
        hp["clamp_kqv"] = float(cfg.clip_qkv)
    return hp


OLMO_GGUF = GGUFArch(
    "olmo", {**GGUF_EMBED, **blocks({**GGUF_ATTN, **GGUF_FFN}), **GGUF_HEAD}, _olmo_hparams,
    lambda cfg: graph_rules(cfg, norm=("layernorm_plain",), clip=True) + failed_rules(pair_rope_rules(cfg)),
    PAIR_ROPE)
# OLMo-2 norms each sublayer's output: pocketlm's attn_norm / mlp_norm sit where llama.cpp's post norms do
OLMO2_GGUF = GGUFArch(
    "olmo2", {**GGUF_EMBED, **blocks({"attn_norm.weight": gguf_name(N.ATTN_POST_NORM),
                                     "mlp_norm.weight": gguf_name(N.FFN_POST_NORM),
                                     **GGUF_ATTN, **GGUF_QK_NORM, **GGUF_FFN}), **GGUF_HEAD},
    transformer_hparams,
    lambda cfg: graph_rules(cfg, residual=("post_sublayer",), qk_norm=("full",)) + failed_rules(half_rope_rules(cfg)))
OLMOE_GGUF = GGUFArch(
    "olmoe", {**GGUF_EMBED, **blocks({**GGUF_NORMS, **GGUF_ATTN, **GGUF_QK_NORM, **GGUF_EXPERTS}), **GGUF_HEAD},
    transformer_hparams,
    lambda cfg: graph_rules(cfg, qk_norm=("full",), moe=(True,), norm_topk=(False,)) + failed_rules(
        half_rope_rules(cfg) + [(cfg.kv_heads(0) == cfg.heads(0), "kv heads = heads (llama.cpp's olmoe sizes the "
                                                                   "k-norm as d_model, as in OLMoE-1B-7B)")]))

FAMILIES = (
    llama_like("olmo", "OlmoForCausalLM", read_olmo, write_olmo,
               picks=lambda cfg: cfg.norm == "layernorm" and not cfg.norm_affine, pick_order=90, gguf=OLMO_GGUF),
    llama_like("olmo2", "Olmo2ForCausalLM", read_olmo2, write_llama_like,
               renamed={"attn_norm.weight": "post_attention_layernorm.weight",
                        "mlp_norm.weight": "post_feedforward_layernorm.weight"}, gguf=OLMO2_GGUF),
    llama_like("olmoe", "OlmoeForCausalLM", read_olmoe, write_olmoe, legacy_experts=MLP_EXPERTS, gguf=OLMOE_GGUF),
)
