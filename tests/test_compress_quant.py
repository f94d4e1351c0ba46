"""GPTQ / AWQ / RTN against analytic facts: with an identity Hessian GPTQ has no error to spread and equals
RTN on the same grid; with a correlated Hessian its layer error tr((W-Q) H (W-Q)ᵀ) is below RTN's on every
grid; AWQ's folded scales leave the float model's logits unchanged; AWQ's chosen scales never score worse
than RTN (α = 0); the kernel model computes the dequantized weights; checkpoints reload identically."""

from __future__ import annotations

import copy

import pytest
import torch

from pocketlm.compress.quantize import CalibrationTooShortError, quantize
from pocketlm.compress.quantize import awq as awq_module
from pocketlm.compress.quantize.awq import Recorded, ScaleGroup, clip_search, scale_groups, search_scale
from pocketlm.compress.quantize.gptq import GPTQ
from pocketlm.compress.targets import Target, block_targets
from pocketlm.interop import save_native
from pocketlm.model.config import ModelConfig
from pocketlm.model.linears import Int4Linear, Int8Linear
from pocketlm.model.quantize import GridError, IntGrid, quantize_int4
from pocketlm.model.transformer import Transformer
from pocketlm.runtime import open_model
from tests.test_compress_prune import one_thread  # noqa: F401  (autouse: one thread for tiny matrices)
from tests.llamacpp import llamacpp_logits

CFG = dict(vocab_size=256, d_model=64, n_layer=2, n_head=4, n_kv_head=4, intermediate_size=128, max_seq_len=64,
           tie_embeddings=False)
IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(2))
GRIDS = [IntGrid(b, g, s) for b in (8, 4, 3, 2) for s in (True, False) for g in (None, 32, 128)]


def _model(**changes) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(**{**CFG, **changes})).eval()


def _calib(n: int = 8, length: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(1))


def _layer(rows: int = 48, cols: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(rows, cols, generator=g)
    X = torch.randn(1024, cols, generator=g) @ (torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=g))
    return W, 2 / X.shape[0] * X.T @ X


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: g.name)
def test_gptq_with_identity_hessian_equals_rtn(grid) -> None:
    W, _ = _layer()
    q, scales, offsets = grid.quantize(W)
    for act_order in (False, True):
        r = GPTQ(grid, act_order=act_order).quantize(W, torch.eye(W.shape[1]))
        assert torch.equal(r.codes, q) and torch.equal(r.params[0], scales) and torch.equal(r.params[1], offsets)


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: g.name)
def test_gptq_error_is_below_rtn_error_on_a_known_hessian(grid) -> None:
    W, H = _layer()

    def error(Q: torch.Tensor) -> float:
        D = W - Q
        return float(((D @ H) * D).sum())

    rtn = error(grid.dequantize(*grid.quantize(W)))
    for act_order, static in ((False, False), (True, False), (False, True)):
        r = GPTQ(grid, act_order=act_order, static_groups=static).quantize(W, H)
        assert torch.allclose(r.weight, grid.dequantize(r.codes, *r.params))
        assert error(r.weight) < rtn, (act_order, static)


def test_int_grid_rtn_is_the_int4_kernel_grid() -> None:
    W, _ = _layer(32, 128)
    q, s, o = IntGrid(4, 32, False, None).quantize(W)
    q4, s4, z4 = quantize_int4(W, 32)
    gw = IntGrid(4, 32, False, None).to_grid_weight(q, s, o)
    assert torch.equal(gw.q, q4) and torch.allclose(gw.scales, s4) and torch.allclose(gw.zeros, z4)


@pytest.mark.parametrize("changes", [{}, {"norm": "layernorm", "norm_bias": True, "qkv_bias": True},
                                     {"norm_unit_offset": True, "n_kv_head": 2}, {"activation": "gelu", "ffn_type": "standard"}])
def test_awq_folded_scales_leave_float_logits_unchanged(changes) -> None:
    model = _model(**changes)
    with torch.no_grad():  # give the norms non-trivial gains first
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
        ref = model(IDS)
        folded = 0
        for b in range(len(model.blocks)):
            for group in scale_groups(model, b, block_targets(model, b)):
                group.fold(torch.rand(group.targets[0].shape[1]) * 4 + 0.25)
                folded += 1
        assert folded >= 2 * len(model.blocks)
        assert (model(IDS) - ref).abs().max() <= 1e-5


def test_awq_never_scores_worse_than_rtn_and_lowers_error() -> None:
    calib = _calib()
    rtn = quantize(_model(), "rtn", 3, 32, calib=calib)
    awq = quantize(_model(), "awq", 3, 32, calib=calib)
    assert len(awq.awq) == 4 * CFG["n_layer"]  # norm->qkv, v->o, norm->gate/up, up->down in each block
    assert all(r["loss"] <= r["rtn_loss"] for r in awq.awq)
    mean = lambda r: sum(m.rel_error for m in r.layers) / len(r.layers)  # noqa: E731
    assert mean(awq) < mean(rtn)


def test_awq_search_scales_up_salient_input_channels() -> None:
    # the paper's section 3.1: when a few input channels carry far larger activations than the rest, scaling
    # their weight columns up before rounding (and the input down) protects the products that dominate the
    # output, so the search must leave α = 0 (RTN), give those channels the largest scales, and cut the error
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 128, generator=gen)
    x[:, :4] *= 30
    torch.manual_seed(0)
    layer = torch.nn.Linear(128, 64, bias=False)
    before = layer.weight.detach().clone()
    recorded = Recorded(layer)
    with torch.no_grad():
        layer(x)
    recorded.handle.remove()
    target = Target("l", 0, layer.weight, "x", layer, lambda args: args[0])
    s, alpha, losses = search_scale(ScaleGroup(layer, [target], layer), x.abs().mean(0), recorded, IntGrid(4, 32, False))
    assert alpha > 0 and losses[round(alpha * 20)] < 0.7 * losses[0]
    assert s[:4].min() > s[4:].max() and torch.isclose(s.max() * s.min(), torch.tensor(1.0))  # normalised scales
    assert torch.equal(layer.weight, before)  # the search leaves the weights as they were


def test_awq_clip_search_shrinks_a_weight_whose_input_is_never_active() -> None:
    # a group whose largest weight reads an input channel that is zero on every token: clipping that weight
    # costs no output error and the rest of the group rounds on a finer step, so the search must shrink that
    # group's range far (to about the largest shrink it tries, 1 - 9/20 of max |w|); in every group the
    # chosen range has no more output error on the tokens than the unclipped one
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 64, generator=gen) * 0.3
    w[:, 5] = 3.0  # the first group's (32 columns) largest weight, in every row
    x = torch.randn(256, 64, generator=gen)
    x[:, 5] = 0
    grid = IntGrid(4, 32, True)
    upper = clip_search(w, x, grid)
    assert (upper[:, 0] <= 0.65 * 3.0).all() and (upper <= w.abs().reshape(8, 2, 32).amax(-1)).all()
    clipped = torch.maximum(torch.minimum(w, upper.repeat_interleave(32, 1)), -upper.repeat_interleave(32, 1))
    for g in (slice(0, 32), slice(32, 64)):
        err = lambda q: ((x[:, g] @ (q[:, g] - w[:, g]).T) ** 2).mean(0)  # noqa: E731
        assert (err(awq_module.fake_quantize(grid, clipped)) <= err(awq_module.fake_quantize(grid, w)) + 1e-6).all()


def test_awq_clip_search_runs_only_when_asked(monkeypatch) -> None:
    """AWQ without the clip search by default (llm-compressor's AWQ; docs/compress.md round 8 measures why),
    llm-awq's clip with awq_clip=True: it then changes the codes."""
    calib = _calib()
    calls = []
    real = awq_module.clip_search
    monkeypatch.setattr(awq_module, "clip_search", lambda *a, **k: calls.append(1) or real(*a, **k))
    plain = quantize(_model(), "awq", 4, 32, calib=calib)
    assert not calls and plain.options["awq_clip"] is False
    clipped = quantize(_model(), "awq", 4, 32, calib=calib, awq_clip=True)
    assert len(calls) == 5 * CFG["n_layer"]  # v, o, gate, up, down in each block (q and k are not clipped)
    assert any(not torch.equal(plain.codes[n][0], clipped.codes[n][0]) for n in plain.codes)


@pytest.mark.parametrize("method,bits,group", [("gptq", 4, 32), ("gptq", 3, 64), ("awq", 4, None), ("rtn", 8, None),
                                               ("gptq", 2, 32)])
def test_kernel_model_computes_the_dequantized_weights_and_reloads_identically(tmp_path, method, bits, group) -> None:
    sym = bits == 8
    model = _model()
    report = quantize(model, method, bits, group, sym=sym, calib=_calib())
    float_copy = _model()  # the same architecture holding the dequantized weights
    grid = IntGrid(bits, group, sym)
    with torch.no_grad():
        for name, (q, params) in report.codes.items():
            float_copy.get_parameter(name + ".weight").copy_(grid.dequantize(q, *params))
        if method == "awq":  # folded norm gains / v and up rows live outside the codes
            for name, p in model.named_parameters():
                float_copy.get_parameter(name).copy_(p)
    kernel = Int8Linear if bits == 8 else Int4Linear
    assert isinstance(model.blocks[0].attn.qkv, kernel) and isinstance(model.blocks[1].mlp.down_proj, kernel)
    with torch.inference_mode():
        out, expect = model(IDS), float_copy(IDS)
    assert (out.float() - expect).abs().max() < 0.05 * expect.abs().max()
    save_native(model, tmp_path)
    back = open_model(tmp_path)
    assert back.transforms.quantization.method == method
    with torch.inference_mode():
        assert torch.equal(back(IDS), out)


def test_gptq_with_true_sequential_groups_and_moe_experts() -> None:
    model = _model(n_experts=4, top_k=2, moe_intermediate_size=64)
    report = quantize(model, "gptq", 4, 32, calib=_calib())
    assert any(".experts.3.down_proj" in m.name for m in report.layers)
    experts = model.blocks[0].mlp.experts
    assert isinstance(experts.gate_up[0], Int4Linear) and isinstance(experts.down[3], Int4Linear)
    assert type(model.blocks[0].mlp.router) is torch.nn.Linear  # routers stay float


def test_bad_input_gets_one_clear_error_each() -> None:
    with pytest.raises(GridError, match="5-bit grids are not supported"):
        IntGrid(5, 32)
    with pytest.raises(GridError, match="int8 kernel, which holds one symmetric scale per output channel"):
        quantize(_model(), "rtn", 8, 32)
    with pytest.raises(GridError, match="group_size 48 is not one of the int4 kernel's group sizes"):
        quantize(_model(d_model=96), "rtn", 4, 48)
    with pytest.raises(GridError, match=r"'blocks.0.attn.q_proj'.*width of 64 input columns is not divisible by"):
        quantize(_model(), "rtn", 4, 128)
    with pytest.raises(CalibrationTooShortError, match="fewer than the widest layer input"):
        quantize(_model(), "gptq", 4, 32, calib=_calib(2, 16))
    with pytest.raises(CalibrationTooShortError, match="gptq needs calibration data"):
        quantize(_model(), "gptq", 4, 32)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q4_K", "Q6_K"])
def test_gguf_blocks_dequantize_in_the_gguf_package_bit_for_bit(qtype) -> None:
    """The bytes GPTQ's codes are written as are read back by gguf.quants.dequantize to exactly the
    weights pocketlm computed with; and GPTQ on the GGUF grid beats round-to-nearest on it."""
    import gguf
    import numpy as np

    from pocketlm.compress.quantize.gguf_grids import gguf_grid

    grid = gguf_grid(qtype)
    W, H = _layer(32, 512)
    W = W * torch.rand(1, 512, generator=torch.Generator().manual_seed(5))  # uneven column scales
    W[0, :256] = 0  # an all-zero (super-)block
    rtn = grid.quantize(W)
    gptq = GPTQ(grid, act_order=True).quantize(W, H)
    for q, params, ours in ((rtn[0], rtn[1:], grid.dequantize(*rtn)), (gptq.codes, gptq.params, gptq.weight)):
        raw = grid.to_bytes(q, *params)
        assert raw.dtype == np.uint8 and raw.shape == (32, 512 // grid.block * gguf.GGML_QUANT_SIZES[grid.ggml_type][1])
        theirs = torch.from_numpy(np.asarray(gguf.quants.dequantize(raw, grid.ggml_type), dtype=np.float32))
        assert torch.equal(theirs, ours)
    error = lambda Q: float((((W - Q) @ H) * (W - Q)).sum())  # noqa: E731
    assert error(gptq.weight) < error(grid.dequantize(*rtn))


def test_gguf_grid_bad_input() -> None:
    from pocketlm.compress.quantize.gguf_grids import gguf_grid

    with pytest.raises(GridError, match="Q3_K"):
        gguf_grid("Q3_K")
    with pytest.raises(GridError, match="blocks of 256 values; a width of 64"):
        quantize(_model(), "rtn", grid=gguf_grid("Q4_K"), kernels=False)
    with pytest.raises(GridError, match="written to GGUF, not to pocketlm's int kernels"):
        quantize(_model(), "rtn", grid=gguf_grid("Q4_0"))


@pytest.mark.parametrize("qtype,method", [("Q4_0", "gptq"), ("Q8_0", "awq"), ("Q4_1", "rtn")])
def test_llama_cpp_runs_the_written_codes_as_pocketlm_dequantized_them(tmp_path, qtype, method) -> None:
    """llama.cpp's logits on the GGUF file equal pocketlm's on the dequantized weights (up to llama.cpp's
    8-bit activation rounding inside quantized dot products), and the file holds exactly those weights."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (optional extra) is not installed")
    import numpy as np

    from pocketlm.compress.quantize.gguf_export import export_quantized_gguf
    from pocketlm.export.gguf import load_gguf_weights
    from pocketlm.model.quantize import sqnr_db

    model = _model(n_kv_head=2, vocab_size=256)
    report = export_quantized_gguf(model, tmp_path / "m.gguf", qtype, method, _calib(), rest="F32")
    assert report.disk_bytes and len(report.layers) == 7 * CFG["n_layer"]
    reread = _model(n_kv_head=2, vocab_size=256)
    load_gguf_weights(reread, tmp_path / "m.gguf")
    for name, p in model.named_parameters():
        assert torch.equal(reread.get_parameter(name), p), name
    ids = list(range(1, 60, 3))
    theirs = llamacpp_logits(tmp_path / "m.gguf", ids)
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0]
    assert sqnr_db(ours, theirs) > 30
    assert (theirs.argmax(-1) == ours.argmax(-1)).float().mean() > 0.9


def test_w8a8_linear_is_integer_arithmetic_on_per_token_codes() -> None:
    from pocketlm.model.linears import W8A8Linear

    W, _ = _layer(48, 64)
    q, s, _ = IntGrid(8, None, True, None).quantize(W)
    layer = W8A8Linear(q.to(torch.int8), s[:, 0], compute_dtype=torch.float32)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(3))
    s_x = x.abs().amax(-1, keepdim=True) / 127
    xq = torch.round(x / s_x).clamp(-127, 127)
    expect = (xq.double() @ q.double().T) * s_x.double() * s[:, 0].double()[None]  # exact integer products
    assert torch.allclose(layer(x).double(), expect, rtol=1e-6, atol=1e-6)


def test_smoothquant_migration_keeps_float_function_and_beats_plain_w8a8_on_outliers(tmp_path) -> None:
    from pocketlm.compress.quantize.smoothquant import smoothquant
    from pocketlm.model.linears import W8A8Linear

    base = _model(n_kv_head=2)
    with torch.no_grad():
        for b in base.blocks:  # a few outlier activation channels, as LLM norms produce
            b.attn_norm.weight[:4] *= 30
            b.mlp_norm.weight[:4] *= 30
        ref = base(IDS)

    def kl(model) -> float:
        with torch.no_grad():
            a, b = ref.log_softmax(-1), model(IDS).float().log_softmax(-1)
        return float((a.exp() * (a - b)).sum(-1).mean())

    smoothed, plain = copy.deepcopy(base), copy.deepcopy(base)
    report = smoothquant(smoothed, _calib())
    smoothquant(plain, _calib(), smooth=False)
    assert isinstance(smoothed.blocks[0].attn.qkv, W8A8Linear) and isinstance(smoothed.blocks[1].mlp.down_proj, W8A8Linear)
    assert len(report.awq) == 2 * CFG["n_layer"] and kl(smoothed) < 0.5 * kl(plain)
    save_native(smoothed, tmp_path)
    back = open_model(tmp_path)
    assert isinstance(back.blocks[0].attn.qkv, W8A8Linear)
    with torch.no_grad():
        assert torch.equal(back(IDS), smoothed(IDS))


def test_heldout_comparison_reports_the_window_standard_error_of_the_log_ppl_change() -> None:
    """Analytic: a uniform model over V tokens against one putting logit a_w on the (always) target token 0
    in window w: the per-window NLL change is log(e^a / (e^a + V - 1)) + log V, its s.e. std / sqrt(n)."""
    import math

    from pocketlm.compress.measure import compare_on_tokens

    V, window, shifts = 8, 5, [0.0, 1.0, 2.0, 4.0]
    calls = iter(shifts)

    def dense(chunk):
        return torch.zeros(1, chunk.shape[1], V)

    def shifted(chunk):
        logits = torch.zeros(1, chunk.shape[1], V)
        logits[..., 0] = next(calls)
        return logits

    out = compare_on_tokens(dense, shifted, torch.zeros(window * len(shifts), dtype=torch.long), window)
    diffs = torch.tensor([-(a - math.log(math.exp(a) + V - 1)) - math.log(V) for a in shifts])
    assert out["nll_diff_se"] == pytest.approx(float(diffs.std()) / 2, rel=1e-5)
    assert math.log(out["ppl_after"] / out["ppl_before"]) == pytest.approx(float(diffs.mean()), rel=1e-5)
    one = compare_on_tokens(dense, dense, torch.zeros(window, dtype=torch.long), window)
    assert one["nll_diff_se"] == 0.0 and one["ppl_after"] == one["ppl_before"]  # one window: finite, no NaN

def _gptq_one_matrix_at_a_time(model: Transformer, calib: torch.Tensor, grid: IntGrid) -> dict[str, torch.Tensor]:
    """GPTQ's true-sequential order written out plainly: every group's statistics from whole block forwards,
    each matrix solved alone; the weights it leaves, by name."""
    from pocketlm.compress.layerwise import capture_inputs
    from pocketlm.compress.quantize.driver import SEQUENTIAL_GROUPS
    from pocketlm.compress.stats import Hessian

    batches, out = capture_inputs(model, calib, 8), {}
    for b, block in enumerate(model.blocks):
        for patterns in SEQUENTIAL_GROUPS:
            group = [t for t in block_targets(model, b) if any(t.name.endswith(p[1:]) for p in patterns)]
            stats = {t.name: Hessian(t.shape[1]) for t in group}
            hooks = [t.module.register_forward_hook(lambda m, a, o, t=t: stats[t.name].add_batch(t.extract(a)))
                     for t in group]
            for x, inp in batches:
                block(x, inp, None, None)
            for h in hooks:
                h.remove()
            for t in group:
                r = GPTQ(grid).quantize(t.weight, stats[t.name].H)
                t.weight.copy_(r.weight)
                out[t.name] = r.weight
        batches = [(block(x, inp, None, None), inp) for x, inp in batches]
    return out


@pytest.mark.parametrize("layout", [{}, {"norm_placement": "sandwich"}, {"residual_scale": 0.5}, {"parallel_residual": True}],
                         ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()) or "pre")
def test_gptq_walk_equals_the_plain_true_sequential_order(layout) -> None:
    """The walk's shortcuts (a group's forwards stop once its inputs are seen; the FFN passes start from
    the kept residual stream after attention; matrices sharing an input solved as one stacked matrix)
    leave exactly the weights of the plain order, for every residual layout."""
    grid, calib = IntGrid(4, 32), _calib(16, 32)
    expect = _gptq_one_matrix_at_a_time(_model(n_kv_head=2, **layout), calib, grid)
    model = _model(n_kv_head=2, **layout)
    attention_runs, query_runs = [], []
    for block in model.blocks:
        block.attn.register_forward_hook(lambda *_: attention_runs.append(1))  # a completed attention forward
        block.attn.q_proj.register_forward_hook(lambda *_: query_runs.append(1))
    report = quantize(model, "gptq", 4, 32, calib=calib, kernels=False)
    # 2 batches x 2 blocks: q/k/v's pass stops at their input, so q/k/v run once, in o's pass, which stops
    # at o_proj and keeps its inputs; gate/up's pass runs o_proj alone on them. A parallel-residual block
    # (its FFN reads the block input) runs all of attention again in gate/up's and down's passes and for
    # the outputs
    parallel = layout.get("parallel_residual")
    assert len(attention_runs) == 2 * 2 * (3 if parallel else 0)
    assert len(query_runs) == 2 * 2 * (4 if parallel else 1)
    weights = dict(model.named_parameters())
    assert set(report.codes) == set(expect)
    for name, w in expect.items():
        torch.testing.assert_close(weights[name + ".weight"], w, rtol=0, atol=1e-6)


def test_float_dtype_casts_only_what_stays_float_and_reloads_identically(tmp_path) -> None:
    """float_dtype=bf16: the embedding, norms and LM head in bf16 (as `open_model(..., "int4")` runs them), the
    integer layers holding the very codes and scales of the fp32 run; the checkpoint reloads bit for bit."""
    ref, model = _model(), _model()
    quantize(ref, "rtn", 4, 32)
    quantize(model, "rtn", 4, 32, float_dtype=torch.bfloat16)
    assert model.embed.weight.dtype == model.lm_head.weight.dtype == model.final_norm.weight.dtype == torch.bfloat16
    for a, b in zip(ref.buffers(), model.buffers()):
        if not a.is_floating_point() or a.dtype == torch.bfloat16:  # the kernels' codes and bf16 scales
            assert torch.equal(a, b)
    with torch.inference_mode():
        out, expect = model(IDS), ref(IDS)
    assert out.dtype == torch.bfloat16 and (out.float() - expect).abs().max() < 0.05 * expect.abs().max()
    save_native(model, tmp_path)
    back = open_model(tmp_path)
    assert back.embed.weight.dtype == torch.bfloat16
    with torch.inference_mode():
        assert torch.equal(back(IDS), out)


def test_quantize_head_gives_the_int4_precisions_layout(tmp_path) -> None:
    """quantize_head + float_dtype=bf16: the LM head its own int4 layer holding RTN's codes of the head (as
    `open_model(..., "int4")` rounds it), the tied embedding float; saved and reopened bit for bit."""
    model = _model(tie_embeddings=True)
    head = IntGrid(4, 32).quantize(model.lm_head.weight.detach().clone())
    report = quantize(model, "rtn", 4, 32, quantize_head=True, float_dtype=torch.bfloat16)
    assert isinstance(model.lm_head, Int4Linear) and "lm_head" not in report.left_float
    assert torch.equal(model.lm_head.codes(), head[0]) and model.embed.weight.dtype == torch.bfloat16
    assert "lm_head" not in model.transforms.quantization.float_layers
    save_native(model, tmp_path)
    back = open_model(tmp_path)
    assert isinstance(back.lm_head, Int4Linear)
    with torch.inference_mode():
        assert torch.equal(back(IDS), model(IDS))
    with pytest.raises(ValueError, match="shape the int-kernel model"):
        quantize(_model(), "rtn", 4, 32, quantize_head=True, kernels=False)


@pytest.mark.parametrize("method,bits,head", [("gptq", 4, False), ("gptq", 8, True), ("awq", 4, False)])
def test_blocks_become_kernels_during_the_walk_as_they_would_at_the_end(method, bits, head) -> None:
    """Each finished block is swapped for its kernel layers inside the walk (its float weights freed there,
    not after the last block): the codes and every buffer of the result are those of converting the whole
    model at the end (kernels=False, then fuse and to_kernels on the same codes, the driver's former order)."""
    from pocketlm.compress import layerwise
    from pocketlm.compress.quantize.driver import kernel_parts
    from pocketlm.model.quantize import GridWeight, to_kernels

    sym, group = bits == 8, None if bits == 8 else 32
    kernel = Int8Linear if bits == 8 else Int4Linear
    model, late = _model(tie_embeddings=head), _model(tie_embeddings=head)
    seen = []
    layerwise.phase_hook = lambda label: seen.append((label, type(model.blocks[0].attn.qkv)))
    try:
        report = quantize(model, method, bits, group, sym=sym, calib=_calib(), quantize_head=head)
    finally:
        layerwise.phase_hook = None
    assert ("block 1 group 0 statistics", kernel) in seen  # block 0 was an int layer while block 1 calibrated
    codes = quantize(late, method, bits, group, sym=sym, calib=_calib(), kernels=False).codes
    grid = IntGrid(bits, group, sym)
    if head:  # the head's RTN codes, rounded after the walk as the driver does
        q, *params = grid.quantize(late.lm_head.weight.float())
        codes["lm_head"] = (q, tuple(params))
    assert codes.keys() == report.codes.keys()
    for name, (q, params) in codes.items():
        assert torch.equal(q, report.codes[name][0].to(q.dtype)) and all(map(torch.equal, params, report.codes[name][1]))
    late.fuse()
    parts = kernel_parts(late, codes)
    to_kernels(late, {n: GridWeight.cat([grid.to_grid_weight(codes[p][0].int(), *codes[p][1], kernel_group=group)
                                         for p in ps]) for n, ps in parts.items()}, model.transforms.quantization)
    assert model.transforms == late.transforms and set(model.transforms.quantization.float_layers) == (
        set() if head else {"lm_head"})
    ours, theirs = model.state_dict(), late.state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]), k


def test_walk_keeps_each_batch_in_its_own_buffer() -> None:
    """`_keep` writes a block's output over the batch's input buffer (the activations never move, so the
    heap does not grow through a pass) and falls back to the new tensor where it cannot (shape, dtype)."""
    from pocketlm.compress.layerwise import _keep

    x, new = torch.zeros(2, 3), torch.arange(6.0).view(2, 3)
    kept = _keep(x, new)
    assert kept.data_ptr() == x.data_ptr() and torch.equal(kept, new)
    for other in (new.bfloat16(), torch.ones(3, 2)):
        assert _keep(torch.zeros(2, 3), other) is other
