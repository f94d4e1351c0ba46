"""pocketlm.model.cpu_gemv: pocketlm's own CPU kernels compute what torch computes.

References: the product of the dequantized weights in fp32 (`F.linear`), on shapes the vector widths do
not divide (K not a multiple of 64, N odd, several groups); the model's decode-step logits on torch's
plain layers, eager, in the flat step and traced by torch.compile (fullgraph: no graph break, the fake
implementation used). Without a compiler the kernels drop out of the choice with one note. The library
is built once (a second or two) and shared by every test; tests skip where it cannot run here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pocketlm.model import cpu_gemv
from pocketlm.model.cpu_gemv import CpuGemvLinear, NativeKernelNote
from pocketlm.model.flat_decode import FlatDecoder
from pocketlm.model.linears import Int4Linear, Int8Linear
from pocketlm.runtime import kernel_choice as kc
from tests.test_flat_decode import CFG, TOKENS, _model, _step_logits
from tests.threads import one_thread  # noqa: F401 (autouse)

# relative to max |reference|: fp32 sums in another order; bf16 outputs rounded; int8 activations rounded
# per block of 32 (Q8_0's rule) for the VNNI kernels
TOL = {"f32": 1e-5, "f32t": 1e-5, "bf16": 1e-2, "bf16t": 1e-2, "i8f": 1e-2, "i8v": 2e-2, "i8t": 2e-2, "i4": 2e-2}
SHAPES = [(1, 100, 37), (3, 77, 50), (6, 160, 33)]  # (M, K, N): M = 6 is past MAX_ROWS (prefill)


@pytest.fixture(scope="module")
def lib():
    reason = cpu_gemv.unavailable()
    if reason:
        pytest.skip(f"pocketlm CPU kernels do not run here: {reason}")
    return cpu_gemv.library()


def _err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("kernel", ["f32", "f32t", "bf16", "bf16t"])
def test_float_kernels_match_torch(lib, kernel, m, k, n) -> None:
    if kernel.startswith("bf16") and "bf16" not in cpu_gemv.kernels_for("bf16"):
        pytest.skip("this CPU has no AVX512-BF16")
    dtype = torch.float32 if kernel.startswith("f32") else torch.bfloat16
    torch.manual_seed(0)
    linear = torch.nn.Linear(k, n).to(dtype)
    x = torch.randn(m, k).to(dtype)
    want = F.linear(x.float(), linear.weight.float(), linear.bias.float())
    with torch.inference_mode():
        got = CpuGemvLinear.from_layer(linear, kernel)(x[:, None])[:, 0]  # [M, 1, K]: leading dims kept
    assert got.dtype == dtype and got.shape == (m, n)
    assert _err(got, want) <= TOL[kernel]


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("kernel", ["i8v", "i8f", "i8t"])
def test_int8_kernels_match_the_dequantized_product(lib, kernel, m, k, n) -> None:
    g = torch.Generator().manual_seed(1)
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    scales = (torch.rand(n, generator=g) / 127).to(torch.bfloat16)
    bias = torch.randn(n, generator=g)
    layer = Int8Linear(q, scales, bias)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    want = F.linear(x.float(), q.float() * scales.float()[:, None], bias)
    with torch.inference_mode():
        got = CpuGemvLinear.from_layer(layer, kernel)(x)
    assert got.dtype == torch.bfloat16
    assert _err(got, want) <= TOL[kernel]


@pytest.mark.parametrize("m,k,n,group", [(1, 96, 37, 32), (3, 256, 50, 64), (6, 256, 33, 128)])
def test_int4_kernel_matches_the_dequantized_product(lib, m, k, n, group) -> None:
    g = torch.Generator().manual_seed(2)
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=g)
    scales = (torch.rand(n, k // group, generator=g) / 8).to(torch.bfloat16)
    zeros = (torch.randn(n, k // group, generator=g) / 8).to(torch.bfloat16)
    weight = (codes - 8).float() * scales.float().repeat_interleave(group, 1) + zeros.float().repeat_interleave(group, 1)
    x = torch.randn(m, k, generator=g)
    packed, s, z = cpu_gemv.pack_int4(codes, scales, zeros)
    with torch.inference_mode():
        got = cpu_gemv.gemv(x, packed, s, z, None, "i4", n, group)
    assert _err(got, F.linear(x, weight)) <= TOL["i4"]


def test_int4_layer_reads_torch_int4_layout(lib) -> None:
    """From an Int4Linear (torch's packed layout, read back through `codes()`), the same outputs as its kernel."""
    g = torch.Generator().manual_seed(3)
    layer = Int4Linear(torch.randint(0, 16, (48, 128), dtype=torch.int32, generator=g),
                       torch.rand(48, 4, generator=g) / 8, torch.randn(48, 4, generator=g) / 8, 32)
    x = torch.randn(2, 128, generator=g).to(torch.bfloat16)
    with torch.inference_mode():
        want, got = layer(x), CpuGemvLinear.from_layer(layer, "i4")(x)
    assert _err(got, want.float()) <= TOL["i4"]


# the plain integer layers run bf16 activations; the VNNI kernels (gemv_vnni, gemv_tiled and int4's gemv)
# also round them to int8 per block of 32, as llama.cpp's Q8_0 activations: that may add this much error
# (relative to the logits' range) beyond the weights' own rounding, measured against the bf16 model
ACTIVATION_ROUNDING = 0.03
GEMV_PLANS = [("fp32", "gemv"), ("fp32", "gemv_tiled"), ("bf16", "gemv"), ("bf16", "gemv_tiled"),
              ("int8", "gemv_vnni"), ("int8", "gemv_fma"), ("int8", "gemv_tiled"), ("int4", "gemv")]


def _on_path(weights: str, path: str, cfg=CFG):
    model = _model(cfg, "linear" if weights == "fp32" else weights).fuse()
    kc.apply_plan(model, dict.fromkeys(kc.kernel_shapes(model), path))
    assert {type(m) for m in model.modules()} >= {CpuGemvLinear} and model.transforms.packed
    return model


@pytest.mark.parametrize("weights,path", GEMV_PLANS)
def test_model_decode_logits_on_the_kernels(lib, weights, path) -> None:
    """Prefill then one token at a time: the eager model and the flat step on the kernels vs the plain model."""
    if weights == "bf16" and not cpu_gemv.kernels_for("bf16"):
        pytest.skip("this CPU has no AVX512-BF16")
    tokens = TOKENS[:, :14]
    plain = _model(CFG, "linear" if weights == "fp32" else weights)
    want = _step_logits(plain, plain, tokens, 8)
    scale = want.abs().max()
    model = _on_path(weights, path)
    for run in (model, FlatDecoder(model)):
        got = _step_logits(run, model, tokens, 8)
        err = (got - want).abs().max() / scale
        if weights in ("fp32", "bf16") or path == "gemv_fma":
            assert err <= (1e-5 if weights == "fp32" else 3e-2)
            continue
        floats = _model(CFG, "bf16")
        exact = _step_logits(floats, floats, tokens, 8)
        weight_err = (want - exact).abs().max() / scale
        assert err <= 0.1 and (got - exact).abs().max() / scale <= 1.1 * weight_err + ACTIVATION_ROUNDING


def test_compiled_flat_step_calls_the_op_without_a_graph_break(lib) -> None:
    """fullgraph=True fails on any graph break; dynamo traces the custom op through its fake implementation."""
    from torch._dynamo.utils import counters

    model = _on_path("int4", "gemv", CFG.replace(n_layer=1))
    want = _step_logits(model, model, TOKENS[:, :12], 8)
    decoder = FlatDecoder(model)
    torch._dynamo.reset()
    counters.clear()
    decoder._step = torch.compile(decoder._step, backend="eager", fullgraph=True, dynamic=False)
    got = _step_logits(decoder, model, TOKENS[:, :12], 8)
    assert torch.allclose(got, want, atol=1e-3, rtol=1e-3)
    assert counters["stats"]["unique_graphs"] == 1


@pytest.fixture()
def broken_compiler(tmp_path, monkeypatch):
    """$CC set to `which` (None: not found; "fails": answers --version, then fails to compile); restored after."""
    def use(which: str) -> None:
        if which == "fails":
            cc = tmp_path / "brokencc"
            cc.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo "brokencc 1.0"; exit 0; fi\n'
                          'echo "brokencc: cannot compile" >&2; exit 1\n')
            cc.chmod(0o755)
            monkeypatch.setenv("CC", str(cc))
        else:
            monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
        monkeypatch.setenv("POCKETLM_CACHE", str(tmp_path / "cache"))
        cpu_gemv.reset()

    yield use
    monkeypatch.undo()
    cpu_gemv.reset()


@pytest.mark.parametrize("which,reason", [("missing", "no C compiler"), ("fails", "could not build")])
def test_without_a_compiler_the_old_choice_and_one_note(tmp_path, broken_compiler, which, reason) -> None:
    broken_compiler(which)
    with pytest.warns(NativeKernelNote, match="CPU kernels not used"):
        assert kc.LinearShape("fp32", 64, 64).paths == kc.FLOAT_PATHS
    assert reason in cpu_gemv.unavailable() and kc.machine_key()["gemv"] == "none"
    assert kc.LinearShape("int8", 64, 64).paths == kc.INT_PATHS
    assert not list((tmp_path / "cache").glob("kernels/*.so"))  # nothing half-built left behind
    model = _model(CFG).fuse()
    plan = kc.choose_kernels(model, kc.KernelCache(tmp_path / "k.json"),
                             timer=lambda calls: {p: (0.5 if p == "transposed" else 1.0) for p in calls})
    assert set(plan.values()) == {"transposed"}


def test_a_changed_kernel_build_re_times_the_shapes(lib, tmp_path, monkeypatch) -> None:
    calls = []

    def timer(candidates):
        calls.append(sorted(candidates))
        return {p: (0.5 if p == "gemv" else 1.0) for p in candidates}

    cache = kc.KernelCache(tmp_path / "k.json")
    for build in ("a", "a", "b"):
        monkeypatch.setattr(cpu_gemv, "build_id", lambda build=build: build)
        plan = kc.choose_kernels(_model(CFG).fuse(), cache, timer=timer)
        assert set(plan.values()) == {"gemv"}
    shapes = len(plan)
    assert len(calls) == 2 * shapes  # build "a" timed once and reused, build "b" timed again
    assert all("gemv" in c for c in calls)


def test_tied_head_keeps_one_matrix(lib) -> None:
    """A tied fp32 head is never offered the tiled copy; oneDNN's copy only for a clear gain, as before."""
    shape = kc.LinearShape("fp32", 64, 384, tied=True)
    assert "gemv" in shape.paths and "gemv_tiled" not in shape.paths
    assert "gemv_tiled" in kc.LinearShape("fp32", 64, 384).paths
    for gain, path in ((0.95, "gemv"), (0.5, "mkldnn")):
        times = {"gemv": 1.0, "mkldnn": gain}
        timer = lambda calls, times=times: {p: times.get(p, 2.0) for p in calls}  # noqa: E731
        assert kc.decide(shape, timer)["path"] == path


def test_tied_bf16_head_may_take_the_tiled_copy_for_a_clear_gain(lib) -> None:
    """bf16 has no peak-RSS target: its tied head may copy into the tiled layout, as into oneDNN's, only
    when that is COPY_MARGIN faster than every path that shares the embedding's matrix."""
    if not lib.has_bf16:
        pytest.skip("this CPU has no AVX512-BF16")
    shape = kc.LinearShape("bf16", 64, 384, tied=True)
    assert {"gemv", "gemv_tiled", "mkldnn"} <= set(shape.paths)
    for tiled, path in ((0.95, "gemv"), (0.5, "gemv_tiled")):
        times = {"gemv": 1.0, "mkldnn": 1.5, "gemv_tiled": tiled}
        timer = lambda calls, times=times: {p: times.get(p, 2.0) for p in calls}  # noqa: E731
        assert kc.decide(shape, timer)["path"] == path
