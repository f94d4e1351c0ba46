"""Weight-only int8 / int4 layers: kernel outputs against float matmul and quantization theory."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pocketlm.model.quantize import (
    Int4Linear, Int8Linear, QuantizationError, dequantize_int4, quantize_int4, quantize_int8,
    quantize_model, rtn_linear, sqnr_db,
)


def _linear(n_out: int, n_in: int, bias: bool = False, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(n_in, n_out, bias=bias)
    nn.init.normal_(lin.weight, std=0.02)
    if bias:
        nn.init.normal_(lin.bias, std=0.02)
    return lin


@pytest.mark.parametrize("m", [1, 7, 64])
def test_int8_kernel_matches_dequantized_matmul(m: int) -> None:
    lin = _linear(192, 576, bias=True)
    q, s = quantize_int8(lin.weight)
    x = torch.randn(m, 576).bfloat16().float()  # the layer computes with bf16 activations
    ref = x @ (q.float() * s[:, None]).t() + lin.bias
    out = rtn_linear(lin, "int8")(x)
    assert out.dtype == torch.float32 and out.shape == (m, 192)
    # only bf16 rounding of the scales / output separates the kernel from exact dequantized math
    assert sqnr_db(ref, out) > 40


@pytest.mark.parametrize("group_size", [32, 64])
def test_int4_kernel_matches_dequantized_matmul(group_size: int) -> None:
    lin = _linear(192, 576)
    q, sc, z = quantize_int4(lin.weight, group_size)
    x = torch.randn(5, 576).bfloat16().float()
    w_hat = dequantize_int4(q, sc.bfloat16().float(), z.bfloat16().float(), group_size)
    ref = x @ w_hat.t()
    out = rtn_linear(lin, "int4", group_size)(x)
    assert sqnr_db(ref, out) > 40


@pytest.mark.parametrize("scheme,group_size", [("int8", 0), ("int4", 32), ("int4", 128)])
def test_output_error_matches_uniform_quantization_theory(scheme: str, group_size: int) -> None:
    """Output SQNR ~= weight SQNR (iid inputs), and weight noise ~= step^2/12 per element."""
    lin = _linear(512, 1024, seed=1)
    w = lin.weight.detach()
    if scheme == "int8":
        q, s = quantize_int8(w)
        w_hat = q.float() * s[:, None]
        step2 = (s[:, None] ** 2).expand_as(w)
        layer = rtn_linear(lin, "int8")
    else:
        q, sc, z = quantize_int4(w, group_size)
        w_hat = dequantize_int4(q, sc, z, group_size)
        step2 = (sc ** 2).repeat_interleave(group_size, dim=1)
        layer = rtn_linear(lin, "int4", group_size)
    noise = (w - w_hat).pow(2).sum()
    predicted_noise = step2.sum() / 12.0
    assert noise / predicted_noise == pytest.approx(1.0, rel=0.12)
    weight_sqnr = 10 * math.log10(float(w.pow(2).sum() / noise))
    x = torch.randn(256, 1024).bfloat16().float()
    out_sqnr = sqnr_db(x @ w.t(), layer(x))
    assert out_sqnr == pytest.approx(weight_sqnr, abs=1.5)
    expected = {"int8": 38, "int4": 15}[scheme]
    assert out_sqnr > expected


def test_quantize_model_swaps_every_linear_and_keeps_outputs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.SiLU(), nn.Linear(128, 64))
    for p in model.parameters():
        nn.init.normal_(p, std=0.05)
    x = torch.randn(3, 10, 64)
    ref = model(x)
    quantize_model(model, "int4", group_size=32)
    assert isinstance(model[0], Int4Linear) and isinstance(model[2], Int4Linear)
    out = model(x)
    assert out.shape == ref.shape and sqnr_db(ref, out) > 12
    weight_bytes = sum(m.weight_bytes() for m in model.modules() if isinstance(m, Int4Linear))
    float_bytes = (64 * 128 * 2) * 4
    assert weight_bytes < float_bytes / 5  # 4 bits + bf16 (scale, zero) per 32 weights


def test_quantize_model_skip_keeps_float_layers() -> None:
    model = nn.ModuleDict({"body": nn.Linear(64, 64), "lm_head": nn.Linear(64, 32)})
    quantize_model(model, "int8", skip=["lm_head"])
    assert isinstance(model["body"], Int8Linear) and type(model["lm_head"]) is nn.Linear


def test_bad_quantization_requests_raise_clear_errors_and_leave_model_untouched() -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(48, 64))
    with pytest.raises(QuantizationError, match=r"'1'.*in_features=48.*group_size=32.*use int8"):
        quantize_model(model, "int4", group_size=32)
    assert all(type(m) is nn.Linear for m in model)  # nothing swapped
    with pytest.raises(QuantizationError, match="out_features=40.*multiple of 16"):
        quantize_model(nn.Sequential(nn.Linear(64, 40)), "int4", group_size=32)
    with pytest.raises(QuantizationError, match="in_features=40.*multiple of 16"):
        quantize_model(nn.Sequential(nn.Linear(40, 64)), "int8")
    with pytest.raises(QuantizationError, match="choose one of"):
        quantize_model(model, "int3")
    with pytest.raises(QuantizationError, match="group_size 48"):
        quantize_model(model, "int4", group_size=48)


def test_skip_unsupported_keeps_incompatible_layers_float_and_names_them() -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(48, 64))
    quantize_model(model, "int4", group_size=32, skip_unsupported=True)
    assert isinstance(model[0], Int4Linear) and type(model[1]) is nn.Linear


def _largest_float_temporary(fn) -> int:
    """Bytes of the largest floating-point tensor any op allocates while `fn()` runs (views, which share an
    input's memory, are not allocations)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    largest = 0

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal largest
            out = func(*args, **(kwargs or {}))
            inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.is_floating_point() \
                        and t.untyped_storage().data_ptr() not in inputs:
                    largest = max(largest, t.numel() * t.element_size())
            return out

    with Record():
        fn()
    return largest


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_rtn_of_a_large_matrix_keeps_its_float_temporaries_small(scheme: str) -> None:
    """A 49152-row tied head's RTN used to hold several float copies of it (+250 MiB at SmolLM-135M's
    int4 open); it now works a few MiB of rows at a time, with the values of the whole-matrix formula."""
    torch.manual_seed(0)
    w = torch.randn(8192, 576)  # 18 MiB in fp32
    if scheme == "int8":
        got = quantize_int8(w)
        scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        want = (torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8), scales)
    else:
        got = quantize_int4(w, 32)
        g = w.reshape(8192, 18, 32)
        lo, hi = g.amin(dim=-1), g.amax(dim=-1)
        scales = ((hi - lo) / 15.0).clamp(min=1e-12)
        q = torch.round((g - lo[..., None]) / scales[..., None]).clamp(0, 15).to(torch.int32).reshape(8192, 576)
        want = (q, scales, lo + 8.0 * scales)
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(got, want))
    run = (lambda: quantize_int8(w)) if scheme == "int8" else (lambda: quantize_int4(w, 32))
    assert _largest_float_temporary(run) <= 5 << 20  # main: the matrix's 18 MiB, several times over
