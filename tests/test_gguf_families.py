"""Every family llama.cpp runs: a tiny random model of it, exported as F32 GGUF, gives pocketlm's
logits in llama.cpp (llama-cpp-python) on the same tokens."""

from __future__ import annotations

import pytest
import torch

from pocketlm.export.gguf import export_gguf, unsupported_reasons
from pocketlm.interop import config_from_hf
from pocketlm.interop.families import gguf_arch
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import Transformer
from tests.hf_tiny import TINY, tiny_config
from tests.llamacpp import llamacpp_logits

IDS = [1, 7, 3, 99, 42, 5, 17, 64, 2, 88, 31, 12, 77, 9, 50, 23, 110, 6, 71, 40]

# tiny configs changed only where llama.cpp's graph fixes a constant the family's config sets freely
# (each says which), plus the remote-code families pocketlm builds from the catalog (no HF config here)
LLAMA_CPP_FIXED = {
    # llama.cpp scales gemma2 queries by head_dim^-0.5 (query_pre_attn_scalar = head_dim, as in Gemma-2 2B/9B)
    "gemma2": dict(attn_scale=16 ** -0.5),
    # llama.cpp's minicpm3 graph hard-codes scale_emb 12, scale_depth 1.4 and dim_model_base 256
    "minicpm3": dict(logit_scale=256 / 64),
    # llama.cpp's olmoe sizes the k-norm as d_model: kv heads = heads (as OLMoE-1B-7B)
    "olmoe": dict(n_kv_head=4),
}
BASE = dict(vocab_size=128, d_model=64, n_layer=2, n_head=4, n_kv_head=2, intermediate_size=96, max_seq_len=128,
            tie_embeddings=False)
CATALOG_SHAPED = {
    "minicpm": ModelConfig(**BASE, embed_scale=12.0, residual_scale=1.4 / 2 ** 0.5, logit_scale=256 / 64 / 10),
    "openelm": ModelConfig(**{**BASE, "tie_embeddings": True, "n_head": [4, 6], "n_kv_head": [1, 2],
                              "intermediate_size": [64, 128]}, head_dim=16, qk_norm="head", norm_eps=1e-6),
    # a llama pruned to per-layer widths (`prune-structured --per-layer`) runs as llama.cpp's deci
    "deci": ModelConfig(**{**BASE, "tie_embeddings": True, "n_head": [4, 2], "n_kv_head": [2, 1],
                           "intermediate_size": [64, 128]}, head_dim=16),  # (untied: test_compress_per_layer)
    "gpt_neox_sequential": config_from_hf(tiny_config("gpt_neox").to_dict()).replace(parallel_residual=False),
    "stablelm_parallel": config_from_hf(tiny_config("stablelm").to_dict()).replace(
        parallel_residual=True, parallel_shared_norm=True),
}


def _config(name: str) -> ModelConfig:
    if name in CATALOG_SHAPED:
        return CATALOG_SHAPED[name]
    cfg = config_from_hf(tiny_config(name).to_dict())
    return cfg.replace(**LLAMA_CPP_FIXED.get(name, {}))


def random_model(cfg: ModelConfig, bias_std: float = 0.05, norm_range: tuple[float, float] = (0.7, 1.3)) -> Transformer:
    """Seeded random weights with non-trivial norms and biases, so a misplaced one shows."""
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=bias_std)
            elif "norm" in name:
                p.uniform_(*norm_range)
    return model


# OPT: no llama.cpp architecture; Mistral's window (6 < context) is not applied by llama.cpp's llama graph
LLAMA_CPP_RUNS = sorted([n for n in TINY if n not in ("opt", "opt_postln", "mistral")] + list(CATALOG_SHAPED))


@pytest.mark.parametrize("name", LLAMA_CPP_RUNS)
def test_f32_gguf_gives_pocketlm_logits_in_llama_cpp(name, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (optional extra) is not installed")
    cfg = _config(name)
    assert not unsupported_reasons(cfg), unsupported_reasons(cfg)
    model = random_model(cfg)
    path = export_gguf(model, tmp_path / f"{name}.gguf", "F32")
    got = llamacpp_logits(path, IDS)
    with torch.no_grad():
        ref = model(torch.tensor([IDS]))[0]
    err = (got - ref).abs().max().item() / ref.abs().max().item()
    assert err <= 1e-3, f"{name} as llama.cpp's {gguf_arch(cfg).arch!r}: max |Δ| / max |logit| = {err:.2e}"
