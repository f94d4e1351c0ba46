"""Core model behaviour: config validation, analytic costs against measurement, the KV cache,
generation options, and variants no HF family has (sharing, layer-wise scaling)."""

from __future__ import annotations

import pytest
import torch

from pocketlm.model import costs
from pocketlm.model.config import ConfigError, ModelConfig
from pocketlm.model.transformer import Transformer

TINY = dict(vocab_size=97, d_model=32, n_layer=2, n_head=4, n_kv_head=2, intermediate_size=48, max_seq_len=64)


@pytest.mark.parametrize("changes, field", [
    (dict(n_head=3, n_kv_head=1), "n_head"),  # 32 not divisible by 3
    (dict(n_kv_head=3), "n_kv_head"),  # 3 does not divide 4
    (dict(activation="swishy"), "activation"),
    (dict(norm="batchnorm"), "norm"),
    (dict(n_layer=3, block_repeat=2), "block_repeat"),
    (dict(intermediate_size=[48, 48, 48]), "intermediate_size"),
    (dict(n_experts=4, top_k=5), "top_k"),
    (dict(rotary_fraction=0.1), "rotary_fraction"),
    (dict(attention="mla"), "kv_lora_rank"),
])
def test_impossible_config_names_field(changes, field):
    with pytest.raises(ConfigError, match=rf"ModelConfig\.{field}"):
        ModelConfig(**{**TINY, **changes})


def test_unknown_config_field_rejected():
    with pytest.raises(ConfigError, match="unknown field"):
        ModelConfig.from_dict({**TINY, "n_heads": 4})


VARIANTS = {
    "gqa": {},
    "mqa_headdim": dict(n_kv_head=1, head_dim=16),
    "layerwise": dict(n_head=[2, 4], n_kv_head=[1, 2], intermediate_size=[32, 64], qk_norm="head"),
    "block_repeat": dict(n_layer=4, block_repeat=2),
    "shared_ffn": dict(shared_ffn=True),
    "moe": dict(n_experts=4, top_k=2, n_shared_experts=1, moe_intermediate_size=16, first_dense_layers=1),
    "mla": dict(attention="mla", kv_lora_rank=12, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8),
    "sliding": dict(sliding_window=4, layer_window=[True, False]),
    "learned_std": dict(positions="learned", ffn_type="standard", activation="gelu", norm="layernorm", norm_bias=True),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_param_count_analytic_equals_module(name):
    cfg = ModelConfig(**{**TINY, **VARIANTS[name]})
    model = Transformer(cfg)
    assert costs.param_counts(cfg)["total"] == sum(p.numel() for p in model.parameters())


def test_moe_active_params():
    cfg = ModelConfig(**{**TINY, **VARIANTS["moe"]})
    p = costs.param_counts(cfg)
    expert = 3 * cfg.d_model * cfg.expert_dim
    assert p["total"] - p["active"] == (cfg.n_experts - cfg.top_k) * expert * (cfg.n_layer - cfg.first_dense_layers)


@pytest.mark.parametrize("name", ["gqa", "mqa_headdim", "mla", "sliding", "block_repeat", "layerwise"])
def test_kv_cache_bytes_match_allocation(name):
    cfg = ModelConfig(**{**TINY, **VARIANTS[name]})
    model = Transformer(cfg).to(torch.bfloat16)
    cache = model.new_cache(batch_size=3, max_len=40)
    assert cache.nbytes() == costs.kv_cache_bytes(cfg, 40, dtype_bytes=2, batch_size=3)


def test_flops_match_profiler_count():
    """Matmul FLOPs counted by torch's FLOP counter equal the analytic decode figure (soft-capping
    takes the eager attention path, whose matmuls the counter sees)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = ModelConfig(**TINY, attn_logit_softcap=30.0)
    model = Transformer(cfg).eval()
    cache = model.new_cache(1, 20)
    with torch.no_grad():
        model(torch.randint(0, 97, (1, 10)), cache=cache)
        with FlopCounterMode(display=False) as counter:
            model(torch.randint(0, 97, (1, 1)), cache=cache)
    assert counter.get_total_flops() == pytest.approx(costs.flops_per_token(cfg, 10)["decode"], rel=1e-9)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_cache_matches_full_forward(name):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**TINY, **VARIANTS[name]})
    model = Transformer(cfg).eval()
    ids = torch.randint(0, 97, (2, 11))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        full = model(ids, mask)
        cache = model.new_cache(2, 11)
        parts = [model(ids[:, :6], mask[:, :6], cache=cache)]
        parts += [model(ids[:, t:t + 1], mask[:, :t + 1], cache=cache) for t in range(6, 11)]
    got = torch.cat(parts, 1)
    assert (got - full).abs()[mask.bool()].max() < 1e-5


def test_generate_options():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**TINY)).eval()
    ids = torch.randint(0, 97, (2, 5))
    a = model.generate(ids, max_new_tokens=12, temperature=1.0, top_k=5, seed=7)
    b = model.generate(ids, max_new_tokens=12, temperature=1.0, top_k=5, seed=7)
    assert torch.equal(a, b) and a.shape == (2, 17)
    # top-k = 1 sampling is greedy
    assert torch.equal(model.generate(ids, max_new_tokens=6, temperature=1.0, top_k=1, seed=3),
                       model.generate(ids, max_new_tokens=6))
    # a tiny nucleus keeps only the most likely token: greedy again
    assert torch.equal(model.generate(ids, max_new_tokens=6, temperature=1.0, top_p=1e-6, seed=3),
                       model.generate(ids, max_new_tokens=6))
    # stop tokens: rows end at the first stop token and are padded afterwards
    greedy = model.generate(ids, max_new_tokens=12)
    stop = int(greedy[0, 7])
    out = model.generate(ids, max_new_tokens=12, stop_tokens=[stop], pad_token_id=-1)
    row = out[0, 5:].tolist()
    first = row.index(stop)
    assert all(t == -1 for t in row[first + 1:])


def test_cache_overflow_is_clear():
    model = Transformer(ModelConfig(**TINY)).eval()
    cache = model.new_cache(1, 4)
    with pytest.raises(ValueError, match="KV cache holds 4 tokens"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("name", ["gqa", "mla", "moe", "learned_std", "shared_ffn"])
def test_packed_for_cpu_matches_unpacked(name, tmp_path):
    """oneDNN-packed inference (fused q/k/v, gate/up) computes the same function."""
    from pocketlm.interop import save_native
    from pocketlm.model.packing import pack_for_cpu

    torch.manual_seed(0)
    cfg = ModelConfig(**{**TINY, **VARIANTS[name]})
    model = Transformer(cfg).eval()
    packed = pack_for_cpu(_copy(model))
    ids = torch.randint(0, 97, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    with torch.no_grad():
        assert (model(ids, mask) - packed(ids, mask)).abs().max() < 1e-5
    assert torch.equal(model.generate(ids, mask, max_new_tokens=8), packed.generate(ids, mask, max_new_tokens=8))
    assert not any(isinstance(m, torch.nn.Linear) for m in packed.modules())
    with pytest.raises(ValueError, match="packed for CPU inference"):
        save_native(packed, tmp_path)


def _copy(model: Transformer) -> Transformer:
    import copy

    return copy.deepcopy(model)


def test_gated_mlp_in_place_product_only_without_autograd() -> None:
    """MLP computes act(gate) * up in place when autograd is off: the same values bit for bit (fused and
    unfused), and with autograd on the out-of-place product, so training still backpropagates."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layer=1, n_head=2, intermediate_size=48,
                                    max_seq_len=16, activation="relu"))
    mlp, x = model.blocks[0].mlp, torch.randn(2, 5, 32)
    for fused in (False, True):
        if fused:
            mlp.fuse()
        out = mlp(x)
        out.sum().backward()  # relu's backward reads its own output: an in-place product here would raise
        assert mlp.down_proj.weight.grad is not None
        with torch.no_grad():
            assert torch.equal(mlp(x), out.detach())
