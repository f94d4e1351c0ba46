"""Mixtral: llama with a sparse mixture of experts in every layer."""

from __future__ import annotations

from typing import Any

from pocketlm.interop.families.base import read_moe
from pocketlm.interop.families.llama import LLAMA_GGUF, llama_like, read_windowed, write_llama_like
from pocketlm.model.config import ModelConfig


def read_mixtral(c: Any) -> dict[str, Any]:
    return {**read_windowed(c), **read_moe(c, c.num_local_experts, True)}


def write_mixtral(cfg: ModelConfig) -> dict[str, Any]:
    return {**write_llama_like(cfg), "sliding_window": cfg.sliding_window, "num_local_experts": cfg.n_experts,
            "num_experts_per_tok": cfg.top_k}


FAMILIES = (
    llama_like("mixtral", "MixtralForCausalLM", read_mixtral, write_mixtral,
               legacy_experts=(("block_sparse_moe.experts.{e}.w1.weight", "block_sparse_moe.experts.{e}.w3.weight",
                                "block_sparse_moe.experts.{e}.w2.weight", "block_sparse_moe.gate.weight"),),
               picks=lambda cfg: bool(cfg.n_experts), pick_order=21,
               gguf=LLAMA_GGUF),  # llama.cpp runs Mixtral as `llama` with expert tensors
)
