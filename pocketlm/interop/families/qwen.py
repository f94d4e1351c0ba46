"""Qwen2 (and Qwen1.5, Qwen2.5), Qwen3 and Qwen2-MoE: llama with q/k/v biases, qk-norm, or experts."""

from __future__ import annotations

from typing import Any

from pocketlm.interop.families.base import UnsupportedModelError, layer_types, read_moe
from pocketlm.interop.families.llama import MLP_EXPERTS, llama_like, read_windowed, write_llama_like
from pocketlm.model.config import ModelConfig


def read_qwen2(c: Any) -> dict[str, Any]:
    return {**read_windowed(c), "qkv_bias": True, "attn_out_bias": False}


def read_qwen3(c: Any) -> dict[str, Any]:
    return {**read_windowed(c), "qk_norm": "head"}


def read_qwen2_moe(c: Any) -> dict[str, Any]:
    if getattr(c, "mlp_only_layers", None) or getattr(c, "decoder_sparse_step", 1) != 1:
        raise UnsupportedModelError("qwen2_moe: dense layers between MoE layers (mlp_only_layers / "
                                    "decoder_sparse_step != 1) are not supported")
    return {**read_qwen2(c), **read_moe(c, c.num_experts, c.norm_topk_prob),
            "moe_intermediate_size": c.moe_intermediate_size, "n_shared_experts": 1,
            "shared_expert_intermediate_size": c.shared_expert_intermediate_size, "shared_expert_gate": True}


def write_qwen2(cfg: ModelConfig) -> dict[str, Any]:
    d = write_llama_like(cfg)
    if cfg.sliding_window is not None:  # Qwen configs switch the window on and list the layer kinds
        d.update(sliding_window=cfg.sliding_window, use_sliding_window=True, layer_types=layer_types(cfg))
    return d


def write_qwen3(cfg: ModelConfig) -> dict[str, Any]:
    return {**write_qwen2(cfg), "attention_bias": cfg.qkv_bias}


def write_qwen2_moe(cfg: ModelConfig) -> dict[str, Any]:
    return {**write_qwen2(cfg), "num_experts": cfg.n_experts, "num_experts_per_tok": cfg.top_k,
            "norm_topk_prob": cfg.router_norm_topk, "moe_intermediate_size": cfg.expert_dim,
            "shared_expert_intermediate_size": cfg.shared_expert_intermediate_size}


FAMILIES = (
    llama_like("qwen2", "Qwen2ForCausalLM", read_qwen2, write_qwen2,
               picks=lambda cfg: cfg.qkv_bias and not cfg.attn_out_bias, pick_order=100),
    llama_like("qwen3", "Qwen3ForCausalLM", read_qwen3, write_qwen3,
               picks=lambda cfg: cfg.qk_norm == "head", pick_order=30),
    llama_like("qwen2_moe", "Qwen2MoeForCausalLM", read_qwen2_moe, write_qwen2_moe, legacy_experts=MLP_EXPERTS,
               picks=lambda cfg: bool(cfg.n_experts and cfg.n_shared_experts), pick_order=20),
)
