"""Tiny random Hugging Face configs, one per supported family, built with transformers' own
config classes (2 layers, small widths): the parity suite's reference models."""

from __future__ import annotations

import transformers as T

COMMON = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=128, tie_word_embeddings=False)
LLAMA_LIKE = dict(COMMON, intermediate_size=96, num_key_value_heads=2)

TINY: dict[str, tuple[type, dict]] = {
    "llama": (T.LlamaConfig, dict(LLAMA_LIKE)),
    "llama3_rope": (T.LlamaConfig, dict(LLAMA_LIKE, rope_parameters=dict(
        rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16))),
    "mistral": (T.MistralConfig, dict(LLAMA_LIKE, sliding_window=6)),
    "qwen2": (T.Qwen2Config, dict(LLAMA_LIKE, tie_word_embeddings=True)),
    "qwen3": (T.Qwen3Config, dict(LLAMA_LIKE, head_dim=24)),
    "gemma": (T.GemmaConfig, dict(LLAMA_LIKE, num_key_value_heads=1, head_dim=32, tie_word_embeddings=True)),
    "gemma2": (T.Gemma2Config, dict(LLAMA_LIKE, head_dim=16, sliding_window=6, query_pre_attn_scalar=24,
                                     tie_word_embeddings=True)),
    "phi": (T.PhiConfig, dict(COMMON, intermediate_size=96, partial_rotary_factor=0.5)),
    "phi3": (T.Phi3Config, dict(LLAMA_LIKE, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    "gpt_neox": (T.GPTNeoXConfig, dict(COMMON, intermediate_size=96, rotary_pct=0.25)),
    "opt": (T.OPTConfig, dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                              ffn_dim=96, max_position_embeddings=128, word_embed_proj_dim=64, pad_token_id=1)),
    "opt_postln": (T.OPTConfig, dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     ffn_dim=96, max_position_embeddings=128, word_embed_proj_dim=32,
                                     do_layer_norm_before=False, pad_token_id=1)),
    "gpt2": (T.GPT2Config, dict(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=128)),
    "bloom": (T.BloomConfig, dict(vocab_size=128, hidden_size=64, n_layer=2, n_head=4)),
    "stablelm": (T.StableLmConfig, dict(LLAMA_LIKE, partial_rotary_factor=0.25, use_qkv_bias=True)),
    "olmo": (T.OlmoConfig, dict(LLAMA_LIKE, pad_token_id=1, clip_qkv=8.0)),
    "olmo2": (T.Olmo2Config, dict(LLAMA_LIKE, pad_token_id=1)),
    "mixtral": (T.MixtralConfig, dict(LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": (T.Qwen2MoeConfig, dict(LLAMA_LIKE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                         shared_expert_intermediate_size=48, norm_topk_prob=False)),
    "olmoe": (T.OlmoeConfig, dict(LLAMA_LIKE, num_experts=4, num_experts_per_tok=2, pad_token_id=1)),
    "deepseek_v2": (T.DeepseekV2Config, dict(LLAMA_LIKE, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=24,
                                             qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, head_dim=8,
                                             n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
                                             moe_intermediate_size=32, first_k_dense_replace=1)),
    "minicpm3": (T.MiniCPM3Config, dict(LLAMA_LIKE, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=24,
                                        qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, head_dim=8,
                                        scale_emb=12, scale_depth=1.4, dim_model_base=16,
                                        tie_word_embeddings=True)),
}


def tiny_config(name: str):
    cls, kwargs = TINY[name]
    return cls(**kwargs)
