"""Multi-head latent attention families: DeepSeek-V2 (with experts) and MiniCPM3 (with scalings)."""

from __future__ import annotations

import math
from typing import Any

from pocketlm.interop.families.base import UnsupportedModelError
from pocketlm.interop.families.llama import MLP_EXPERTS, llama_like, read_llama, write_llama_like
from pocketlm.model.config import ModelConfig


def read_mla(c: Any) -> dict[str, Any]:
    out = read_llama(c)
    out.update(attention="mla", n_kv_head=None, head_dim=None, q_lora_rank=c.q_lora_rank,
               kv_lora_rank=c.kv_lora_rank, qk_rope_head_dim=c.qk_rope_head_dim,
               qk_nope_head_dim=c.qk_nope_head_dim, v_head_dim=c.v_head_dim, rotary_fraction=1.0)
    qk = c.qk_rope_head_dim + c.qk_nope_head_dim
    scale = qk**-0.5
    rp = out["rope_scaling"] or {}
    if rp.get("mscale_all_dim"):  # yarn: softmax scale grows with the context extension
        m = 0.1 * rp["mscale_all_dim"] * math.log(rp["factor"]) + 1.0
        scale = scale * m * m
    out["attn_scale"] = scale if scale != qk**-0.5 else None
    return out


def read_deepseek_v2(c: Any) -> dict[str, Any]:
    if getattr(c, "topk_method", "greedy") != "greedy":
        raise UnsupportedModelError(f"deepseek_v2: topk_method {c.topk_method!r} is not supported (only 'greedy')")
    return {**read_mla(c), "rope_interleaved": True, "n_experts": c.n_routed_experts, "top_k": c.num_experts_per_tok,
            "router_norm_topk": False, "moe_intermediate_size": c.moe_intermediate_size,
            "n_shared_experts": c.n_shared_experts or 0, "routed_scaling": c.routed_scaling_factor,
            "first_dense_layers": c.first_k_dense_replace}


def read_minicpm3(c: Any) -> dict[str, Any]:
    return {**read_mla(c), "embed_scale": float(c.scale_emb), "embed_scale_round": True,
            "residual_scale": c.scale_depth / math.sqrt(c.num_hidden_layers),
            "logit_scale": c.dim_model_base / c.hidden_size}


def write_mla(cfg: ModelConfig) -> dict[str, Any]:
    d = {**write_llama_like(cfg), "attention_bias": cfg.qkv_bias, "mlp_bias": cfg.mlp_bias}
    if cfg.attention == "mla":  # a standard-attention config keeps the class defaults (and is refused)
        d.update(q_lora_rank=cfg.q_lora_rank, kv_lora_rank=cfg.kv_lora_rank, qk_rope_head_dim=cfg.qk_rope_head_dim,
                 qk_nope_head_dim=cfg.qk_nope_head_dim, v_head_dim=cfg.v_head_dim, head_dim=cfg.qk_rope_head_dim,
                 num_key_value_heads=cfg.heads(0))
    return d


def write_deepseek_v2(cfg: ModelConfig) -> dict[str, Any]:
    return {**write_mla(cfg), "n_routed_experts": cfg.n_experts, "num_experts_per_tok": cfg.top_k,
            "moe_intermediate_size": cfg.expert_dim, "n_shared_experts": cfg.n_shared_experts or None,
            "routed_scaling_factor": cfg.routed_scaling, "first_k_dense_replace": cfg.first_dense_layers,
            "intermediate_size": cfg.ffn_dim(0), "topk_method": "greedy"}


def write_minicpm3(cfg: ModelConfig) -> dict[str, Any]:
    return {**write_mla(cfg), "scale_emb": cfg.embed_scale, "scale_depth": cfg.residual_scale * math.sqrt(cfg.n_layer),
            "dim_model_base": round(cfg.logit_scale * cfg.d_model)}


FAMILIES = (
    llama_like("deepseek_v2", "DeepseekV2ForCausalLM", read_deepseek_v2, write_deepseek_v2,
               renamed={"mlp.shared.gate_proj.weight": "mlp.shared_experts.gate_proj.weight",
                        "mlp.shared.up_proj.weight": "mlp.shared_experts.up_proj.weight",
                        "mlp.shared.down_proj.weight": "mlp.shared_experts.down_proj.weight"},
               legacy_experts=MLP_EXPERTS,
               picks=lambda cfg: cfg.attention == "mla" and cfg.rope_interleaved, pick_order=10),
    llama_like("minicpm3", "MiniCPM3ForCausalLM", read_minicpm3, write_minicpm3,
               picks=lambda cfg: cfg.attention == "mla", pick_order=11),
)
