"""Hugging Face families as data: where each pocketlm tensor lives in a family's checkpoint.

A family's table maps pocketlm parameter names (as in `Transformer.state_dict()`) to HF names.
Inside a block, `{L}` stands for the HF per-layer prefix (e.g. `model.layers.3.`). A codec says
how tensors are packed when one HF tensor holds several pocketlm tensors:

- `copy`: one to one;
- `cat`: HF tensor = concatenation of the pocketlm tensors along dim 0 (Phi-3 qkv_proj, gate_up);
- `heads3`: HF tensor interleaves q, k, v per head: [H, 3, D, ...] (GPT-NeoX, BLOOM);
- `conv1d`: HF Conv1D stores the transpose (GPT-2); `conv1d_cat`: transposed and concatenated.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Family:
    model_type: str
    architecture: str  # transformers class written into config.json
    layer_prefix: str  # HF prefix of block i, with {i}
    top: dict[str, str]  # pocketlm top-level name -> HF name
    block: dict[str, str]  # pocketlm block-relative name -> HF name relative to the layer prefix
    packed: tuple[tuple[str, tuple[str, ...], str], ...] = ()  # (HF name, pocketlm names, codec)
    ignore: tuple[str, ...] = ()  # HF tensor name fragments that carry no weights (buffers)
    extra: dict = field(default_factory=dict)


# ---- name tables shared by several families ---------------------------------------------------
LLAMA_TOP = {"embed.weight": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight",
             "lm_head.weight": "lm_head.weight"}
LLAMA_BLOCK = {
    "attn.q_proj.weight": "self_attn.q_proj.weight", "attn.q_proj.bias": "self_attn.q_proj.bias",
    "attn.k_proj.weight": "self_attn.k_proj.weight", "attn.k_proj.bias": "self_attn.k_proj.bias",
    "attn.v_proj.weight": "self_attn.v_proj.weight", "attn.v_proj.bias": "self_attn.v_proj.bias",
    "attn.o_proj.weight": "self_attn.o_proj.weight", "attn.o_proj.bias": "self_attn.o_proj.bias",
    "attn.q_norm.weight": "self_attn.q_norm.weight", "attn.k_norm.weight": "self_attn.k_norm.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight", "mlp.gate_proj.bias": "mlp.gate_proj.bias",
    "mlp.up_proj.weight": "mlp.up_proj.weight", "mlp.up_proj.bias": "mlp.up_proj.bias",
    "mlp.down_proj.weight": "mlp.down_proj.weight", "mlp.down_proj.bias": "mlp.down_proj.bias",
    "attn_norm.weight": "input_layernorm.weight", "attn_norm.bias": "input_layernorm.bias",
    "mlp_norm.weight": "post_attention_layernorm.weight", "mlp_norm.bias": "post_attention_layernorm.bias",
    # mixture of experts (transformers >= 5 stacks experts)
    "mlp.router.weight": "mlp.gate.weight",
    "mlp.experts.gate_up_proj": "mlp.experts.gate_up_proj", "mlp.experts.down_proj": "mlp.experts.down_proj",
    "mlp.shared.gate_proj.weight": "mlp.shared_expert.gate_proj.weight",
    "mlp.shared.up_proj.weight": "mlp.shared_expert.up_proj.weight",
    "mlp.shared.down_proj.weight": "mlp.shared_expert.down_proj.weight",
    "mlp.shared_gate.weight": "mlp.shared_expert_gate.weight",
    # multi-head latent attention
    "attn.q_a_proj.weight": "self_attn.q_a_proj.weight", "attn.q_a_norm.weight": "self_attn.q_a_layernorm.weight",
    "attn.q_b_proj.weight": "self_attn.q_b_proj.weight",
    "attn.kv_a_proj.weight": "self_attn.kv_a_proj_with_mqa.weight",
    "attn.kv_a_norm.weight": "self_attn.kv_a_layernorm.weight", "attn.kv_b_proj.weight": "self_attn.kv_b_proj.weight",
}
LLAMA_IGNORE = ("rotary_emb.inv_freq",)


def _llama_like(model_type: str, architecture: str, **block_overrides: str) -> Family:
    return Family(model_type, architecture, "model.layers.{i}.", LLAMA_TOP, {**LLAMA_BLOCK, **block_overrides},
                  ignore=LLAMA_IGNORE)


FAMILIES: dict[str, Family] = {
    "llama": _llama_like("llama", "LlamaForCausalLM"),
    "mistral": _llama_like("mistral", "MistralForCausalLM"),
    "qwen2": _llama_like("qwen2", "Qwen2ForCausalLM"),
    "qwen3": _llama_like("qwen3", "Qwen3ForCausalLM"),
    "gemma": _llama_like("gemma", "GemmaForCausalLM"),
    "gemma2": _llama_like("gemma2", "Gemma2ForCausalLM", **{
        "mlp_norm.weight": "pre_feedforward_layernorm.weight",
        "post_attn_norm.weight": "post_attention_layernorm.weight",
        "post_mlp_norm.weight": "post_feedforward_layernorm.weight"}),
    "olmo": _llama_like("olmo", "OlmoForCausalLM"),
    "olmo2": _llama_like("olmo2", "Olmo2ForCausalLM", **{
        "attn_norm.weight": "post_attention_layernorm.weight",
        "mlp_norm.weight": "post_feedforward_layernorm.weight"}),
    "stablelm": Family("stablelm", "StableLmForCausalLM", "model.layers.{i}.",
                       {**LLAMA_TOP, "final_norm.bias": "model.norm.bias"}, LLAMA_BLOCK, ignore=LLAMA_IGNORE),
    "mixtral": _llama_like("mixtral", "MixtralForCausalLM"),
    "qwen2_moe": _llama_like("qwen2_moe", "Qwen2MoeForCausalLM"),
    "olmoe": _llama_like("olmoe", "OlmoeForCausalLM"),
    "deepseek_v2": _llama_like("deepseek_v2", "DeepseekV2ForCausalLM", **{
        "mlp.shared.gate_proj.weight": "mlp.shared_experts.gate_proj.weight",
        "mlp.shared.up_proj.weight": "mlp.shared_experts.up_proj.weight",
        "mlp.shared.down_proj.weight": "mlp.shared_experts.down_proj.weight"}),
    "minicpm3": _llama_like("minicpm3", "MiniCPM3ForCausalLM"),
    "phi": Family(
        "phi", "PhiForCausalLM", "model.layers.{i}.",
        {"embed.weight": "model.embed_tokens.weight", "final_norm.weight": "model.final_layernorm.weight",
         "final_norm.bias": "model.final_layernorm.bias", "lm_head.weight": "lm_head.weight",
         "lm_head.bias": "lm_head.bias"},
        {**{k: v for k, v in LLAMA_BLOCK.items() if k.startswith("attn.") and "proj" in k},
         "attn.o_proj.weight": "self_attn.dense.weight", "attn.o_proj.bias": "self_attn.dense.bias",
         "mlp.up_proj.weight": "mlp.fc1.weight", "mlp.up_proj.bias": "mlp.fc1.bias",
         "mlp.down_proj.weight": "mlp.fc2.weight", "mlp.down_proj.bias": "mlp.fc2.bias",
         "attn_norm.weight": "input_layernorm.weight", "attn_norm.bias": "input_layernorm.bias"},
        ignore=LLAMA_IGNORE),
    "phi3": Family(
        "phi3", "Phi3ForCausalLM", "model.layers.{i}.", LLAMA_TOP,
        {k: v for k, v in LLAMA_BLOCK.items() if k.endswith("norm.weight") or k in (
            "attn.o_proj.weight", "mlp.down_proj.weight")},
        packed=(("self_attn.qkv_proj.weight", ("attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight"), "cat"),
                ("mlp.gate_up_proj.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight"), "cat")),
        ignore=LLAMA_IGNORE),
    "gpt_neox": Family(
        "gpt_neox", "GPTNeoXForCausalLM", "gpt_neox.layers.{i}.",
        {"embed.weight": "gpt_neox.embed_in.weight", "final_norm.weight": "gpt_neox.final_layer_norm.weight",
         "final_norm.bias": "gpt_neox.final_layer_norm.bias", "lm_head.weight": "embed_out.weight"},
        {"attn.o_proj.weight": "attention.dense.weight", "attn.o_proj.bias": "attention.dense.bias",
         "mlp.up_proj.weight": "mlp.dense_h_to_4h.weight", "mlp.up_proj.bias": "mlp.dense_h_to_4h.bias",
         "mlp.down_proj.weight": "mlp.dense_4h_to_h.weight", "mlp.down_proj.bias": "mlp.dense_4h_to_h.bias",
         "attn_norm.weight": "input_layernorm.weight", "attn_norm.bias": "input_layernorm.bias",
         "mlp_norm.weight": "post_attention_layernorm.weight", "mlp_norm.bias": "post_attention_layernorm.bias"},
        packed=(("attention.query_key_value.weight", ("attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight"), "heads3"),
                ("attention.query_key_value.bias", ("attn.q_proj.bias", "attn.k_proj.bias", "attn.v_proj.bias"), "heads3")),
        ignore=("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq"),
        extra={"lm_head_aliases": ("lm_head.weight",)}),
    "bloom": Family(
        "bloom", "BloomForCausalLM", "transformer.h.{i}.",
        {"embed.weight": "transformer.word_embeddings.weight",
         "embed_norm.weight": "transformer.word_embeddings_layernorm.weight",
         "embed_norm.bias": "transformer.word_embeddings_layernorm.bias",
         "final_norm.weight": "transformer.ln_f.weight", "final_norm.bias": "transformer.ln_f.bias",
         "lm_head.weight": "lm_head.weight"},
        {"attn.o_proj.weight": "self_attention.dense.weight", "attn.o_proj.bias": "self_attention.dense.bias",
         "mlp.up_proj.weight": "mlp.dense_h_to_4h.weight", "mlp.up_proj.bias": "mlp.dense_h_to_4h.bias",
         "mlp.down_proj.weight": "mlp.dense_4h_to_h.weight", "mlp.down_proj.bias": "mlp.dense_4h_to_h.bias",
         "attn_norm.weight": "input_layernorm.weight", "attn_norm.bias": "input_layernorm.bias",
         "mlp_norm.weight": "post_attention_layernorm.weight", "mlp_norm.bias": "post_attention_layernorm.bias"},
        packed=(("self_attention.query_key_value.weight", ("attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight"), "heads3"),
                ("self_attention.query_key_value.bias", ("attn.q_proj.bias", "attn.k_proj.bias", "attn.v_proj.bias"), "heads3"))),
    "opt": Family(
        "opt", "OPTForCausalLM", "model.decoder.layers.{i}.",
        {"embed.weight": "model.decoder.embed_tokens.weight", "pos_embed.weight": "model.decoder.embed_positions.weight",
         "final_norm.weight": "model.decoder.final_layer_norm.weight",
         "final_norm.bias": "model.decoder.final_layer_norm.bias",
         "project_in.weight": "model.decoder.project_in.weight", "project_out.weight": "model.decoder.project_out.weight",
         "lm_head.weight": "lm_head.weight"},
        {"attn.q_proj.weight": "self_attn.q_proj.weight", "attn.q_proj.bias": "self_attn.q_proj.bias",
         "attn.k_proj.weight": "self_attn.k_proj.weight", "attn.k_proj.bias": "self_attn.k_proj.bias",
         "attn.v_proj.weight": "self_attn.v_proj.weight", "attn.v_proj.bias": "self_attn.v_proj.bias",
         "attn.o_proj.weight": "self_attn.out_proj.weight", "attn.o_proj.bias": "self_attn.out_proj.bias",
         "mlp.up_proj.weight": "fc1.weight", "mlp.up_proj.bias": "fc1.bias",
         "mlp.down_proj.weight": "fc2.weight", "mlp.down_proj.bias": "fc2.bias",
         "attn_norm.weight": "self_attn_layer_norm.weight", "attn_norm.bias": "self_attn_layer_norm.bias",
         "mlp_norm.weight": "final_layer_norm.weight", "mlp_norm.bias": "final_layer_norm.bias"}),
    "gpt2": Family(
        "gpt2", "GPT2LMHeadModel", "transformer.h.{i}.",
        {"embed.weight": "transformer.wte.weight", "pos_embed.weight": "transformer.wpe.weight",
         "final_norm.weight": "transformer.ln_f.weight", "final_norm.bias": "transformer.ln_f.bias",
         "lm_head.weight": "lm_head.weight"},
        {"attn_norm.weight": "ln_1.weight", "attn_norm.bias": "ln_1.bias",
         "mlp_norm.weight": "ln_2.weight", "mlp_norm.bias": "ln_2.bias"},
        packed=(("attn.c_attn.weight", ("attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight"), "conv1d_cat"),
                ("attn.c_attn.bias", ("attn.q_proj.bias", "attn.k_proj.bias", "attn.v_proj.bias"), "cat"),
                ("attn.c_proj.weight", ("attn.o_proj.weight",), "conv1d"),
                ("attn.c_proj.bias", ("attn.o_proj.bias",), "copy"),
                ("mlp.c_fc.weight", ("mlp.up_proj.weight",), "conv1d"),
                ("mlp.c_fc.bias", ("mlp.up_proj.bias",), "copy"),
                ("mlp.c_proj.weight", ("mlp.down_proj.weight",), "conv1d"),
                ("mlp.c_proj.bias", ("mlp.down_proj.bias",), "copy")),
        ignore=("attn.bias", "attn.masked_bias")),
}

# legacy per-expert layouts (transformers < 5 checkpoints): HF name patterns with {e}
LEGACY_EXPERTS = (
    # (gate, up, down, router)
    ("block_sparse_moe.experts.{e}.w1.weight", "block_sparse_moe.experts.{e}.w3.weight",
     "block_sparse_moe.experts.{e}.w2.weight", "block_sparse_moe.gate.weight"),
    ("mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight",
     "mlp.experts.{e}.down_proj.weight", "mlp.gate.weight"),
)
