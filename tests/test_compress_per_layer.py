"""Per-layer (heterogeneous) structured pruning: keeping everything changes nothing; a head removed in
one layer removes exactly its slices there; the global allocation is the best split a brute force finds;
parameter counts equal model.costs; the output saves in pocketlm's format and runs in llama.cpp (deci)
with pocketlm's logits."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from pocketlm.compress.structured.driver import importance, plan_for, prune_structured
from pocketlm.compress.structured.importance import StructuredError
from pocketlm.compress.structured.per_layer import allocate
from pocketlm.compress.structured.shapes import Shape
from pocketlm.compress.structured.slicing import SlicePlan, slice_model
from pocketlm.interop import UnsupportedModelError, load_model, save_hf, save_native
from pocketlm.model import costs
from tests.test_compress_structured import _calib, _model
from tests.llamacpp import llamacpp_logits


def test_per_layer_keeping_everything_gives_identical_logits():
    m = _model()
    imp = importance(m, "activation", _calib())
    plan = plan_for(m.config, imp, Shape.of(m.config), per_layer=True)
    pruned = slice_model(m, plan)
    assert pruned.config == m.config
    x = _calib(2)
    assert torch.equal(pruned(x), m(x))


@torch.no_grad()
def test_removing_a_head_in_one_layer_removes_exactly_its_slices():
    m = _model(n_kv_head=None, qkv_bias=False)  # MHA: a head is one q/k/v/o slice
    D, h, layer = m.config.dim_head, 5, 1
    plan = SlicePlan.keep_all(m.config)
    plan.per_layer = True
    plan.q_heads[layer] = plan.kv_heads[layer] = [g for g in range(8) if g != h]
    plan.ffn[2] = [c for c in plan.ffn[2] if c not in (3, 40)]
    pruned = slice_model(m, plan)
    cfg = pruned.config
    assert (cfg.n_head, cfg.n_kv_head, cfg.intermediate_size) == ([8, 7, 8, 8], None, [96, 96, 94, 96])
    assert costs.param_counts(cfg)["total"] == sum(p.numel() for p in pruned.parameters())
    keep = torch.cat([torch.arange(0, h * D), torch.arange((h + 1) * D, 8 * D)])
    a, b = m.blocks[layer].attn, pruned.blocks[layer].attn
    for name in ("q_proj", "k_proj", "v_proj"):
        assert torch.equal(getattr(b, name).weight, getattr(a, name).weight[keep])
    assert torch.equal(b.o_proj.weight, a.o_proj.weight[:, keep])
    for i in (0, 2, 3):  # the other layers' attention is untouched
        assert torch.equal(pruned.blocks[i].attn.o_proj.weight, m.blocks[i].attn.o_proj.weight)
    ref = _model(n_kv_head=None, qkv_bias=False)  # head h zeroed in that layer only, two FFN channels in layer 2
    ref.blocks[layer].attn.o_proj.weight[:, h * D:(h + 1) * D] = 0
    ref.blocks[2].mlp.down_proj.weight[:, [3, 40]] = 0
    x = _calib(2)
    torch.testing.assert_close(pruned(x), ref(x), atol=1e-5, rtol=1e-5)


def test_allocation_is_the_best_split_and_keeps_every_layer():
    g = torch.Generator().manual_seed(1)
    scores = [torch.rand(n, generator=g) * s for n, s in ((6, 1.0), (6, 4.0), (4, 0.1))]
    for total in range(3, 17):
        counts = allocate(scores, total)
        assert sum(counts) == total and min(counts) >= 1
        best = max((c for c in itertools.product(*(range(1, len(s) + 1) for s in scores)) if sum(c) == total),
                   key=lambda c: sum(s.sort(descending=True).values[:k].sum() for s, k in zip(scores, c)))
        assert tuple(counts) == best
    ffn = [torch.rand(32, generator=g) * s for s in (1.0, 3.0, 0.01)]
    counts = allocate(ffn, 48, minimum=8, step=8)
    assert sum(counts) == 48 and all(c % 8 == 0 and c >= 8 for c in counts) and counts[1] >= counts[0] >= counts[2]
    with pytest.raises(StructuredError, match="at least 8"):
        allocate(ffn, 16, minimum=8, step=8)


def _uneven_model():
    """Layer 2's weights scaled up (more magnitude there), layer 0's down: magnitude importance must
    move heads and FFN channels from layer 0 to layer 2."""
    m = _model()
    with torch.no_grad():
        for i, s in ((0, 0.3), (2, 3.0)):
            for p in m.blocks[i].parameters():
                if p.dim() == 2:
                    p.mul_(s)
    return m


def test_per_layer_prune_has_the_budget_shapes_parameter_count():
    m = _uneven_model()
    shape = Shape(4, 4, 2, 48, 48)
    res = prune_structured(m, None, shape, method="magnitude", per_layer=True)
    cfg = res.model.config
    heads, ffn = [cfg.heads(i) for i in range(4)], [cfg.ffn_dim(i) for i in range(4)]
    assert sum(heads) == 4 * 4 and sum(ffn) == 4 * 48 and min(heads) >= 2 and all(f % 8 == 0 for f in ffn)
    assert heads[2] > heads[0] and ffn[2] > ffn[0], (heads, ffn)
    assert all(cfg.heads(i) == 2 * cfg.kv_heads(i) for i in range(4))  # whole GQA groups (8q/4kv -> 2:1)
    assert res.params_after == shape.params(m.config) == costs.param_counts(cfg)["total"] == sum(
        p.numel() for p in res.model.parameters())
    assert res.summary()["per_layer"]["n_head"] == heads


@torch.no_grad()
def test_per_layer_model_saves_natively_and_runs_in_llama_cpp_as_deci(tmp_path):
    from pocketlm.export.gguf import export_gguf
    from pocketlm.interop.families import gguf_arch

    pytest.importorskip("llama_cpp", reason="llama-cpp-python (optional extra) is not installed")
    m = _uneven_model()
    pruned = slice_model(m, plan_for(m.config, importance(m, "magnitude"), Shape(4, 4, 2, 48, 48), per_layer=True))
    assert isinstance(pruned.config.n_head, list) and gguf_arch(pruned.config).arch == "deci"
    with pytest.raises(UnsupportedModelError, match="save_native"):
        save_hf(pruned, tmp_path / "hf")
    x = _calib(2)
    assert torch.equal(load_model(save_native(pruned, tmp_path / "native")).eval()(x), pruned(x))
    assert json.loads((tmp_path / "native" / "pocketlm.json").read_text())["n_head"] == pruned.config.n_head
    path = export_gguf(pruned, tmp_path / "m.gguf", "F32")
    ids = [5, 17, 90, 42, 9, 77, 13, 8, 60, 1]
    got = llamacpp_logits(path, ids)
    ref = pruned(torch.tensor([ids]))[0]
    assert (got - ref).abs().max() / ref.abs().max() <= 1e-3


def test_prune_structured_cli_per_layer_writes_a_pocketlm_model(tmp_path):
    from typer.testing import CliRunner

    from pocketlm.cli import app
    from pocketlm.train.fixtures import trained_preset

    teacher, _ = trained_preset("micro")
    cfg = load_model(teacher).config
    res = CliRunner().invoke(app, ["prune-structured", str(teacher), "--out", str(tmp_path / "p"), "--intermediate",
                                   str(cfg.ffn_dim(0) // 2), "--method", "magnitude", "--per-layer", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["format"] == "pocketlm" and "per_layer" in report
    student = load_model(tmp_path / "p")
    assert [student.config.ffn_dim(i) for i in range(cfg.n_layer)] == report["per_layer"]["intermediate"]
    assert sum(report["per_layer"]["intermediate"]) == cfg.n_layer * (cfg.ffn_dim(0) // 2)
    assert report["params_after"] == sum(p.numel() for p in student.parameters())


def test_a_shape_transformers_refuses_is_refused_as_unsupported_so_it_saves_natively(tmp_path):
    m = _model(n_kv_head=None, qkv_bias=False)
    pruned = prune_structured(m, None, Shape(4, 3, 3, 96, 64), method="magnitude").model  # 64 % 3 != 0
    with pytest.raises(UnsupportedModelError, match="transformers refuses .*not a multiple"):
        save_hf(pruned, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
