"""Structured pruning: slices checked against the analytic meaning of removing a structure (a removed
head = its o_proj columns zeroed, a removed FFN channel = its down_proj column zeroed, a removed layer =
the forward without that block), parameter counts against model.costs, and every output loaded by
transformers with the same logits."""

from __future__ import annotations

import pytest
import torch
import transformers

from pocketlm.compress.structured import depth
from pocketlm.compress.structured.driver import importance, plan_for, prune_structured, target_shapes
from pocketlm.compress.structured.importance import StructuredError
from pocketlm.compress.structured.shapes import Shape, candidate_shapes, explicit_shape, parse_count
from pocketlm.compress.structured.slicing import SlicePlan, slice_model
from pocketlm.interop import save_hf
from pocketlm.model import costs
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import Transformer

V = 96


def _model(**kw) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**dict(vocab_size=V, d_model=64, n_layer=4, n_head=8, n_kv_head=4, intermediate_size=96,
                                tie_embeddings=False, max_seq_len=64, qkv_bias=True), **kw})
    m = Transformer(cfg).eval()
    with torch.no_grad():  # random norm gains so a mis-sliced norm shows
        for n, p in m.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.uniform_(0.5, 1.5)
    return m


def _calib(n: int = 12, L: int = 16) -> torch.Tensor:
    return torch.randint(0, V, (n, L), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("method", ["activation", "magnitude", "taylor"])
def test_keeping_everything_gives_identical_logits(method):
    m = _model()
    imp = importance(m, method, _calib())
    pruned = slice_model(m, plan_for(m.config, imp, Shape.of(m.config)))
    x = _calib(2)
    assert torch.equal(pruned(x), m(x))


def _plan_without(cfg: ModelConfig, q_drop=(), kv_drop=(), ffn_drop=()) -> SlicePlan:
    plan = SlicePlan.keep_all(cfg)
    plan.q_heads = [[h for h in q if h not in q_drop] for q in plan.q_heads]
    plan.kv_heads = [[g for g in kv if g not in kv_drop] for kv in plan.kv_heads]
    plan.ffn = [[c for c in f if c not in ffn_drop] for f in plan.ffn]
    return plan


@torch.no_grad()
def test_removing_one_head_removes_exactly_its_slices():
    m = _model(n_kv_head=None, qkv_bias=False)  # MHA: one head is one q/k/v/o slice
    D, h = m.config.dim_head, 3
    pruned = slice_model(m, _plan_without(m.config, q_drop=(h,), kv_drop=(h,)))
    assert pruned.config.n_head == 7 and pruned.config.head_dim == D
    assert costs.param_counts(pruned.config)["total"] == sum(p.numel() for p in pruned.parameters())
    keep = torch.cat([torch.arange(0, h * D), torch.arange((h + 1) * D, 8 * D)])
    a, b = m.blocks[1].attn, pruned.blocks[1].attn
    for name in ("q_proj", "k_proj", "v_proj"):
        assert torch.equal(getattr(b, name).weight, getattr(a, name).weight[keep])
    assert torch.equal(b.o_proj.weight, a.o_proj.weight[:, keep])
    ref = _model(n_kv_head=None, qkv_bias=False)  # the same model with head h's output zeroed
    for blk in ref.blocks:
        blk.attn.o_proj.weight[:, h * D:(h + 1) * D] = 0
    x = _calib(2)
    torch.testing.assert_close(pruned(x), ref(x), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_removing_a_kv_group_and_ffn_channels_equals_zeroing_their_outputs():
    m = _model()
    pruned = slice_model(m, _plan_without(m.config, q_drop=(2, 3), kv_drop=(1,), ffn_drop=(0, 5, 50)))
    assert (pruned.config.n_head, pruned.config.n_kv_head, pruned.config.intermediate_size) == (6, 3, 93)
    assert costs.param_counts(pruned.config)["total"] == sum(p.numel() for p in pruned.parameters())
    ref = _model()
    D = m.config.dim_head
    for blk in ref.blocks:
        blk.attn.o_proj.weight[:, 2 * D:4 * D] = 0
        blk.mlp.down_proj.weight[:, [0, 5, 50]] = 0
    x = _calib(2)
    torch.testing.assert_close(pruned(x), ref(x), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_dropping_layer_i_equals_running_without_block_i():
    m = _model()
    plan = SlicePlan.keep_all(m.config)
    i = 2
    plan.layers = [j for j in range(4) if j != i]
    for fld in ("q_heads", "kv_heads", "ffn"):
        setattr(plan, fld, getattr(plan, fld)[:3])
    pruned = slice_model(m, plan)
    del m.blocks[i]
    m.config = m.config.replace(n_layer=3)
    x = _calib(2)
    assert torch.equal(pruned(x), m(x))


def test_block_influence_and_importance_see_a_dead_block_and_a_dead_head():
    m = _model()
    with torch.no_grad():
        m.blocks[1].attn.o_proj.weight.zero_()
        m.blocks[1].mlp.down_proj.weight.zero_()
        m.blocks[2].attn.v_proj.weight[16:24] = 0  # kv group 2 (query heads 4 and 5) has no values
        m.blocks[2].attn.v_proj.bias[16:24] = 0
    bi = depth.block_influence(m, _calib())
    assert int(bi.argmin()) == 1 and float(bi[1]) < 1e-6
    assert depth.removal_kl(m, _calib()).argmin() == 1
    imp = importance(m, "activation", _calib())
    torch.testing.assert_close(imp.block_influence, bi, atol=1e-5, rtol=1e-4)  # measured on the scoring pass
    assert int(imp.group_scores(m.config)[2].argmin()) == 2 and float(imp.heads[2, 4:6].max()) == 0.0


def test_pruned_models_load_in_transformers_with_identical_logits(tmp_path):
    m = _model(n_layer=5)
    calib = _calib()
    shapes = [Shape(4, 4, 2, 48, 48), Shape(3, 4, 4, 64, 64), Shape(5, 8, 4, 40, 32)]  # groups, within, width
    for k, shape in enumerate(shapes):
        res = prune_structured(m, calib, shape, layer_method="removal_kl" if k else "block_influence")
        assert Shape.of(res.model.config) == shape
        assert res.params_after == costs.param_counts(res.model.config)["total"] == sum(
            p.numel() for p in res.model.parameters())
        out = save_hf(res.model, tmp_path / f"s{k}")
        hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        x = _calib(2)
        torch.testing.assert_close(hf(input_ids=x).logits, res.model(x), atol=1e-5, rtol=1e-5)


def test_parameter_target_ranks_shapes_that_meet_it_exactly():
    m = _model(n_layer=6, d_model=128, intermediate_size=352)
    total = costs.param_counts(m.config)["total"]
    found = candidate_shapes(m.config, total // 2)
    assert found and all(abs(p - total // 2) <= 0.02 * total / 2 for _, p in found)
    assert all(s.params(m.config) == p for s, p in found)
    shapes = target_shapes(m.config, "0.5x", max_candidates=5)
    res = prune_structured(m, _calib(24), shapes)
    assert len(res.ranking) == len(shapes)
    assert [r["kl"] for r in res.ranking] == sorted(r["kl"] for r in res.ranking)
    assert res.ranking[0]["shape"] == str(res.shape)
    assert abs(res.params_after / total - 0.5) <= 0.011


def test_targets_parse_and_bad_targets_are_refused_clearly():
    m = _model()
    cfg, total = m.config, costs.param_counts(m.config)["total"]
    assert parse_count("0.5x", 1000) == 500 and parse_count("50%", 1000) == 500 and parse_count("1.5M", 0) == 1_500_000
    assert explicit_shape(cfg, width=0.5, depth=0.5) == Shape(2, 8, 4, 48, 32)
    with pytest.raises(StructuredError, match="nearest is"):
        candidate_shapes(cfg, total // 50)
    with pytest.raises(StructuredError, match="not below"):
        target_shapes(cfg, "1.2x")
    with pytest.raises(StructuredError, match="cannot keep the GQA structure"):
        explicit_shape(cfg, n_head=5)  # 8 q / 4 kv: 5 is neither whole groups (x2) nor even within groups (x4)
    with pytest.raises(StructuredError, match="GQA"):
        explicit_shape(cfg, n_head=4, n_kv_head=1)
    assert explicit_shape(cfg, n_head=4) == Shape(4, 4, 2, 96, 64)  # whole groups: the 2:1 ratio holds
    assert explicit_shape(cfg, n_head=4, n_kv_head=4) == Shape(4, 4, 4, 96, 64)  # one query head per group
    with pytest.raises(StructuredError, match="only removes"):
        explicit_shape(cfg, d_model=128)
    with pytest.raises(StructuredError, match="target-params"):
        parse_count("half", total)


def test_unsupported_models_are_refused():
    cfg = ModelConfig(vocab_size=V, d_model=32, n_layer=2, n_head=2, n_experts=4, top_k=2, intermediate_size=32)
    with pytest.raises(StructuredError, match="mixture of experts"):
        importance(Transformer(cfg), "magnitude")


@torch.no_grad()
def test_slicegpt_full_rotation_is_exact_and_sliced_model_loads_in_transformers(tmp_path):
    from pocketlm.compress.structured.slicegpt import slicegpt

    m = _model(tie_embeddings=True)
    x, calib = _calib(2), _calib()
    rotated = slicegpt(m, calib, 64)  # all of Q: the same function
    torch.testing.assert_close(rotated(x), m(x), atol=1e-4, rtol=1e-4)
    sliced = slicegpt(m, calib, 40)
    assert sliced.config.d_model == 40 and not sliced.config.tie_embeddings
    assert costs.param_counts(sliced.config)["total"] == sum(p.numel() for p in sliced.parameters())
    hf = transformers.AutoModelForCausalLM.from_pretrained(save_hf(sliced, tmp_path / "sg"), dtype=torch.float32)
    torch.testing.assert_close(hf.eval()(input_ids=x).logits, sliced(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(StructuredError, match="RMSNorm"):
        slicegpt(_model(norm="layernorm"), calib, 32)


@torch.no_grad()
def test_bf16_calibration_forwards_keep_the_fp32_scores():
    from pocketlm.compress.structured.activation import activation_importance

    m = _model()
    fp32 = activation_importance(m, _calib())
    bf16 = activation_importance(m, _calib(), compute_dtype=torch.bfloat16)
    for a, b in ((fp32.heads, bf16.heads), (fp32.ffn, bf16.ffn), (fp32.embed, bf16.embed)):
        assert b.dtype == torch.float32 and not torch.equal(a, b)  # it did run in bf16
        torch.testing.assert_close(b, a, rtol=0.05, atol=1e-3)  # bf16 keeps ~3 significant digits
    keep = Shape(4, 4, 2, 48, 32)
    assert plan_for(m.config, bf16, keep) == plan_for(m.config, fp32, keep)  # the same heads and channels survive


def test_residual_width_stays_a_multiple_of_the_head_count():
    cfg = _model().config  # 8 q / 4 kv heads, d_model 64: 6 heads (3 whole groups) need a width divisible by 6
    shapes = [s for s, _ in candidate_shapes(cfg, costs.param_counts(cfg)["total"] // 2, tolerance=0.05)]
    assert shapes and all(s.d_model % s.n_head == 0 for s in shapes) and any(s.n_head == 6 for s in shapes)
    with pytest.raises(StructuredError, match="not a multiple of the 6 query heads.*48"):
        explicit_shape(cfg, n_head=6)
    assert explicit_shape(cfg, n_head=6, d_model=48) == Shape(4, 6, 3, 96, 48)
