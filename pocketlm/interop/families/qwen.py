"""Qwen2 (and Qwen1.5, Qwen2.5), Qwen3 and Qwen2-MoE: llama with q/k/v biases, qk-norm, or experts."""

from __future__ import annotations

from typing import Any

from pocketlm.interop.families.base import GGUFArch, UnsupportedModelError, failed_rules, layer_types, read_moe
from pocketlm.interop.families.llama import (GGUF_ATTN, GGUF_EMBED, GGUF_EXPERTS, GGUF_FFN, GGUF_HEAD, GGUF_NORMS,
                                             GGUF_QK_NORM, GGUF_SHARED_EXPERT, MLP_EXPERTS, blocks, graph_rules,
                                             half_rope_rules, llama_like, read_windowed, transformer_hparams,
                                             write_llama_like)
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


# ---- GGUF: llama.cpp's qwen2, qwen3 and qwen2moe (RoPE on halves: rows written as they are) -----------

def _qwen2_moe_hparams(cfg: ModelConfig) -> dict[str, Any]:
    return {**transformer_hparams(cfg), "expert_shared_feed_forward_length": cfg.shared_expert_intermediate_size}


def _qwen2_moe_rules(cfg: ModelConfig) -> list[str]:
    return graph_rules(cfg, qkv_bias=(True,), moe=(True,), norm_topk=(False,), shared_experts=True) + failed_rules(
        half_rope_rules(cfg) + [(cfg.shared_expert_gate, "the shared expert must have its sigmoid gate")])


QWEN_TENSORS = {**GGUF_EMBED, **blocks({**GGUF_NORMS, **GGUF_ATTN, **GGUF_QK_NORM, **GGUF_FFN, **GGUF_EXPERTS,
                                       **GGUF_SHARED_EXPERT}), **GGUF_HEAD}
QWEN2_GGUF = GGUFArch("qwen2", QWEN_TENSORS, transformer_hparams,
                      lambda cfg: graph_rules(cfg, qkv_bias=(True,)) + failed_rules(half_rope_rules(cfg)))
QWEN3_GGUF = GGUFArch("qwen3", QWEN_TENSORS, transformer_hparams,
                      lambda cfg: graph_rules(cfg, qk_norm=("head",)) + failed_rules(half_rope_rules(cfg)))
QWEN2_MOE_GGUF = GGUFArch("qwen2moe", QWEN_TENSORS, _qwen2_moe_hparams, _qwen2_moe_rules)

FAMILIES = (
    llama_like("qwen2", "Qwen2ForCausalLM", read_qwen2, write_qwen2,
               picks=lambda cfg: cfg.qkv_bias and not cfg.attn_out_bias, pick_order=100, gguf=QWEN2_GGUF),
    llama_like("qwen3", "Qwen3ForCausalLM", read_qwen3, write_qwen3,
               picks=lambda cfg: cfg.qk_norm == "head", pick_order=30, gguf=QWEN3_GGUF),
    llama_like("qwen2_moe", "Qwen2MoeForCausalLM", read_qwen2_moe, write_qwen2_moe, legacy_experts=MLP_EXPERTS,
               picks=lambda cfg: bool(cfg.n_experts and cfg.n_shared_experts), pick_order=20, gguf=QWEN2_MOE_GGUF),
)
