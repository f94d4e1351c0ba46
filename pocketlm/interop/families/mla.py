"""Multi-head latent attention families: DeepSeek-V2 (with experts) and MiniCPM3 (with scalings)."""

from __future__ import annotations

import math
from typing import Any

import gguf

from pocketlm.interop.families.base import GGUFArch, UnsupportedModelError, failed_rules, gguf_name
from pocketlm.interop.families.llama import (GGUF_EMBED, GGUF_EXPERTS, GGUF_FFN, GGUF_HEAD, GGUF_NORMS,
                                             GGUF_SHARED_EXPERT, MLP_EXPERTS, N, blocks, graph_rules, half_rope_rules,
                                             llama_like, read_llama, transformer_hparams, write_llama_like)
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


# ---- GGUF: llama.cpp's deepseek2 (pair RoPE, as DeepSeek-V2 rotates) and minicpm3 (RoPE on halves) ------
GGUF_MLA = {"attn.q_proj.weight": gguf_name(N.ATTN_Q), "attn.q_a_proj.weight": gguf_name(N.ATTN_Q_A),
            "attn.q_a_norm.weight": gguf_name(N.ATTN_Q_A_NORM), "attn.q_b_proj.weight": gguf_name(N.ATTN_Q_B),
            "attn.kv_a_proj.weight": gguf_name(N.ATTN_KV_A_MQA), "attn.kv_a_norm.weight": gguf_name(N.ATTN_KV_A_NORM),
            "attn.kv_b_proj.weight": gguf_name(N.ATTN_KV_B), "attn.o_proj.weight": gguf_name(N.ATTN_OUT)}
MLA_TENSORS = {**GGUF_EMBED, **blocks({**GGUF_NORMS, **GGUF_MLA, **GGUF_FFN, **GGUF_EXPERTS, **GGUF_SHARED_EXPERT}),
               **GGUF_HEAD}


def mla_hparams(cfg: ModelConfig) -> dict[str, Any]:
    """Heads of qk_nope + qk_rope key dims and v_head_dim values; the latent ranks (uncompressed KV:
    llama.cpp decompresses kv_b itself, as for GGUF files written before its absorbed-MLA layout)."""
    hp = {**transformer_hparams(cfg), "key_length": cfg.qk_nope_head_dim + cfg.qk_rope_head_dim,
          "value_length": cfg.v_head_dim, "rope_dimension_count": cfg.qk_rope_head_dim,
          "kv_lora_rank": cfg.kv_lora_rank}
    if cfg.q_lora_rank:
        hp["q_lora_rank"] = cfg.q_lora_rank
    return hp


def _deepseek2_hparams(cfg: ModelConfig) -> dict[str, Any]:
    return {**mla_hparams(cfg), "leading_dense_block_count": cfg.first_dense_layers,
            "expert_shared_count": cfg.n_shared_experts, "expert_weights_scale": float(cfg.routed_scaling),
            "expert_weights_norm": cfg.router_norm_topk, "expert_gating_func": gguf.ExpertGatingFuncType.SOFTMAX}


def mla_rules(cfg: ModelConfig) -> list[tuple[bool, str]]:
    return [(cfg.attn_scale is None, "attention scale must be (qk_nope + qk_rope)^-0.5 (no YaRN mscale)"),
            (cfg.kv_heads(0) == cfg.heads(0), "one latent per head group (kv heads = heads)")]


def _deepseek2_rules(cfg: ModelConfig) -> list[str]:
    width = cfg.shared_expert_intermediate_size or cfg.n_shared_experts * cfg.expert_dim
    return graph_rules(cfg, attention="mla", rope_scaling=("default",), moe=(True,), shared_experts=True,
                       deepseek_moe=True) + failed_rules(mla_rules(cfg) + [
        (cfg.rope_interleaved, "RoPE must rotate pairs (DeepSeek-V2's)"),
        (width == cfg.n_shared_experts * cfg.expert_dim, "shared experts as wide as routed ones"),
        (not cfg.shared_expert_gate, "no shared-expert gate")])


# llama.cpp's minicpm3 graph fixes MiniCPM3-4B's scale_emb 12, scale_depth 1.4 and dim_model_base 256
def _minicpm3_rules(cfg: ModelConfig) -> list[str]:
    scales = (12.0, 1.4 / math.sqrt(cfg.n_layer), 256 / cfg.d_model)
    close = all(abs(a - b) < 1e-6 * max(1.0, abs(b)) for a, b in
                zip((cfg.embed_scale, cfg.residual_scale, cfg.logit_scale), scales))
    return graph_rules(cfg, attention="mla", rope_scaling=("default",), scales=None) + failed_rules(
        mla_rules(cfg) + half_rope_rules(cfg) + [
            (close, "embedding / residual / logit scales must be MiniCPM3's (12, 1.4/sqrt(n_layer), 256/d_model), "
                    "which llama.cpp's minicpm3 graph hard-codes"),
            (bool(cfg.q_lora_rank), "a low-rank query (q_lora_rank)")])


DEEPSEEK2_GGUF = GGUFArch("deepseek2", MLA_TENSORS, _deepseek2_hparams, _deepseek2_rules)
MINICPM3_GGUF = GGUFArch("minicpm3", MLA_TENSORS, mla_hparams, _minicpm3_rules)

FAMILIES = (
    llama_like("deepseek_v2", "DeepseekV2ForCausalLM", read_deepseek_v2, write_deepseek_v2,
               renamed={"mlp.shared.gate_proj.weight": "mlp.shared_experts.gate_proj.weight",
                        "mlp.shared.up_proj.weight": "mlp.shared_experts.up_proj.weight",
                        "mlp.shared.down_proj.weight": "mlp.shared_experts.down_proj.weight"},
               legacy_experts=MLP_EXPERTS,
               picks=lambda cfg: cfg.attention == "mla" and cfg.rope_interleaved, pick_order=10, gguf=DEEPSEEK2_GGUF),
    llama_like("minicpm3", "MiniCPM3ForCausalLM", read_minicpm3, write_minicpm3,
               picks=lambda cfg: cfg.attention == "mla", pick_order=11, gguf=MINICPM3_GGUF),
)
