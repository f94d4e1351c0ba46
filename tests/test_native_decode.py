"""pocketlm's native decode step (`pocketlm.model.native_decode`) computes what the eager model computes.

Reference: the eager `Transformer.forward`, one token at a time on its own KV cache (itself checked
against transformers' logits in test_hf_parity.py): a prompt, then 8 successive positions, so every
step also reads the keys and values the native step wrote into the cache. fp32 within 1e-5 of the
logits' size; bf16 / int8 / int4 on the same kernels within rounding. The library is built once per
session (shared with test_cpu_gemv.py); tests skip where it cannot run here."""

from __future__ import annotations

import re

import pytest
import torch

from pocketlm.model.cpu_gemv import CpuGemvLinear, NativeKernelNote
from pocketlm.model.native_decode import NativeDecodeError, NativeDecoder, native_decoder, native_unsupported
from pocketlm.runtime import kernel_choice as kc
from tests.test_cpu_gemv import broken_compiler, lib  # noqa: F401 (fixtures)
from tests.test_kernel_choice import tied_dir  # noqa: F401 (fixture)
from tests.test_flat_decode import CFG, TOKENS, _model, _step_logits
from tests.threads import one_thread  # noqa: F401 (autouse)

CONFIGS = {
    "GQA, fused": {},
    "MHA, q/k/v/o and FFN biases, untied head with bias": dict(n_kv_head=4, qkv_bias=True, attn_out_bias=True,
                                                               mlp_bias=True, tie_embeddings=False, lm_head_bias=True),
    "MQA, YaRN rope scaling, partial rotary": dict(n_kv_head=1, rotary_fraction=0.5,
                                                   rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                                 "original_max_position_embeddings": 128}),
    "llama3 rope, Gemma norms, residual scale, gelu": dict(rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                                          "low_freq_factor": 1.0,
                                                                          "high_freq_factor": 4.0,
                                                                          "original_max_position_embeddings": 64},
                                                           norm_unit_offset=True, residual_scale=0.7,
                                                           activation="gelu_tanh"),
    "interleaved rotary, separate projections, repeated blocks": dict(rope_interleaved=True, block_repeat=2,
                                                                      n_layer=4),
}


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("axes", CONFIGS, ids=list(CONFIGS))
def test_fp32_logits_match_eager(lib, axes) -> None:
    separate = axes.startswith("interleaved")
    model = _model(CFG.replace(**CONFIGS[axes]), "none" if separate else "linear")
    assert native_unsupported(model) is None
    tokens = TOKENS[:, :14]
    want = _step_logits(model, model, tokens, 6)
    got = _step_logits(NativeDecoder(model), model, tokens, 6)
    assert want.abs().max() > 1 and _rel(got, want) <= 1e-5, _rel(got, want)


# (weights, the per-device path of every linear, tolerance relative to the logits' size): the same kernels
# on both sides (plain integer layers run as gemv_fma's i8f, the eager layer's fp32 math)
LOW_PRECISION = [("transposed", "transposed", 1e-5), ("bf16", None, 1e-2), ("bf16", "transposed", 1e-2), ("bf16", "gemv", 1e-2), ("int8", None, 1e-2), ("int8", "gemv_vnni", 1e-2),
                 ("int4", "gemv", 1e-2)]


@pytest.mark.parametrize("weights,path,tol", LOW_PRECISION)
def test_other_layouts_match_eager(lib, weights, path, tol) -> None:
    if weights == "bf16" and not lib.has_bf16:
        pytest.skip("this CPU has no AVX512-BF16")
    tied = weights == "transposed"  # a tied head on `transposed` leaves the embedding a strided view
    model = _model(CFG.replace(**CONFIGS["GQA, fused" if tied else "MHA, q/k/v/o and FFN biases, untied head with bias"]),
                   "linear" if weights == "transposed" else weights)
    if path:
        kc.apply_plan(model.fuse(), dict.fromkeys(kc.kernel_shapes(model), path))
    tokens = TOKENS[:, :14]
    want = _step_logits(model, model, tokens, 6)
    got = _step_logits(NativeDecoder(model), model, tokens, 6)
    assert _rel(got, want) <= tol, _rel(got, want)


@pytest.mark.parametrize("weights", ["fp32", "int4"])
def test_greedy_tokens_equal_eager(lib, weights) -> None:
    model = _model(CFG, "linear" if weights == "fp32" else weights)
    if weights == "int4":
        kc.apply_plan(model.fuse(), dict.fromkeys(kc.kernel_shapes(model), "gemv"))
    want = model.generate(TOKENS[:, :5], max_new_tokens=12)
    assert torch.equal(model.generate(TOKENS[:, :5], max_new_tokens=12, native=True), want)
    assert native_decoder(model) is native_decoder(model)  # built once per model layout
    with pytest.raises(IndexError, match="outside the vocabulary"):
        native_decoder(model)(torch.tensor([[CFG.vocab_size]]), cache=model.new_cache(1, 4))


def test_uncovered_configs_are_named(lib) -> None:
    cases = {"parallel attention/FFN residuals": dict(parallel_residual=True),
             "layernorm (the native step runs RMSNorm)": dict(norm="layernorm"),
             "embedding or logit scaling": dict(logit_scale=0.5),
             "final logit soft-capping": dict(final_logit_softcap=5.0),
             "mixture of experts": dict(n_experts=4, top_k=2, intermediate_size=64)}
    for reason, axes in cases.items():
        model = _model(CFG.replace(**axes), "none")
        assert native_unsupported(model) == reason
        with pytest.raises(NativeDecodeError, match=re.escape(f"does not cover {reason}")):
            model.generate(TOKENS[:, :4], max_new_tokens=2, native=True)
    packed = _model(CFG, "mkldnn")
    assert "blocks.0.qkv is a PackedLinear (a layout the native step cannot read)" in native_unsupported(packed)


def test_a_packed_tied_head_is_read_from_the_embedding(lib) -> None:
    """The per-device choice may pack a tied head (a copy); the native step reads the embedding it copies."""
    model = _model(CFG)
    kc.apply_plan(model, {"lm_head": "mkldnn"})
    assert isinstance(model.lm_head, kc.PackedLinear) and native_unsupported(model) is None
    tokens = TOKENS[:, :14]
    want = _step_logits(model, model, tokens, 6)
    assert _rel(_step_logits(NativeDecoder(model), model, tokens, 6), want) <= 1e-5


def test_a_tiled_tied_bf16_head_is_read_as_tiled(lib) -> None:
    """A tied bf16 head the choice copied into the tiled layout runs on that copy; the embedding stays plain."""
    if not lib.has_bf16:
        pytest.skip("this CPU has no AVX512-BF16")
    model = _model(CFG, "bf16")
    kc.apply_plan(model, {"lm_head": "gemv_tiled"})
    assert model.lm_head.kernel == "bf16t" and model.embed.weight.is_contiguous()
    assert native_unsupported(model) is None
    tokens = TOKENS[:, :14]
    want = _step_logits(model, model, tokens, 6)
    assert _rel(_step_logits(NativeDecoder(model), model, tokens, 6), want) <= 1e-2


def test_without_a_compiler_generate_falls_back_with_one_note(broken_compiler) -> None:  # noqa: F811
    broken_compiler("missing")
    model = _model(CFG)
    with pytest.warns(NativeKernelNote, match="CPU kernels not used") as notes:
        got = model.generate(TOKENS[:, :5], max_new_tokens=6, native=True)
        model.generate(TOKENS[:, :5], max_new_tokens=6, native=True)
    assert len([n for n in notes if issubclass(n.category, NativeKernelNote)]) == 1
    assert torch.equal(got, model.generate(TOKENS[:, :5], max_new_tokens=6))
    assert "do not run here" in native_unsupported(model)
    assert kc.choose_decode(model, kc.KernelCache(), timer=_never)["step"] == "eager"


def _never(calls):
    raise AssertionError("timed a decode step that cannot run")


def test_decode_step_choice_is_timed_once_and_cached(lib, tmp_path) -> None:
    timed = []

    def timer(calls):
        timed.append(sorted(calls))
        return {"eager": 2.0, "native": 1.0}

    cache = kc.KernelCache(tmp_path / "k.json")
    for _ in range(2):
        model = _model(CFG)
        entry = kc.choose_decode(model, cache, timer=timer)
        assert entry["step"] == "native" and model.transforms.decode == "native"
    assert timed == [["eager", "native"]]  # the second model of the same shape reads the decision
    slower = lambda calls: {"eager": 1.0, "native": 1.5}  # noqa: E731
    model = _model(CFG.replace(n_layer=3))  # another shape: timed on its own
    assert kc.choose_decode(model, cache, timer=slower)["step"] == "eager" and model.transforms.decode == "eager"
    assert kc.choose_decode(model, cache, force="native")["step"] == "native"
    assert isinstance(native_decoder(model), NativeDecoder)
    unsupported = _model(CFG.replace(parallel_residual=True))
    entry = kc.choose_decode(unsupported, cache, timer=_never)
    assert entry == {"step": "eager", "reason": "parallel attention/FFN residuals"}
    with pytest.raises(NativeDecodeError, match="parallel"):
        kc.choose_decode(unsupported, cache, force="native")


def test_plain_layers_are_read_in_place(lib) -> None:
    """Float and int8 layers the per-device choice left alone are read where they are (no copy)."""
    model = _model(CFG)
    decoder = NativeDecoder(model)
    layers = decoder._keep[0]
    assert all(isinstance(layer, CpuGemvLinear) for layer in layers.values())
    assert layers["lm_head"].weight.data_ptr() == model.embed.weight.data_ptr()  # the tied head: one matrix
    assert layers["blocks.0.qkv"].weight.data_ptr() == model.blocks[0].attn.qkv.weight.data_ptr()


def test_open_model_records_the_decode_step(lib, tied_dir, tmp_path, monkeypatch) -> None:  # noqa: F811
    """A Qwen2 checkpoint saved by transformers (tied head, q/k/v biases): the runtime's choice, timed by a
    fixed timer, is recorded and run by generate; decode_step= overrides it."""
    from pocketlm.runtime import open_model

    monkeypatch.setenv("POCKETLM_CACHE", str(tmp_path))
    monkeypatch.setattr(kc, "time_calls", lambda calls: {"eager": 1.0, "native": 0.5} if "native" in calls
                        else dict.fromkeys(calls, 1.0))
    model = open_model(tied_dir, "fp32", pack=None)
    assert model.transforms.decode == "native"
    ids = torch.randint(0, model.config.vocab_size, (1, 5), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.generate(ids, max_new_tokens=6), model.generate(ids, max_new_tokens=6, native=False))
    assert open_model(tied_dir, "fp32", pack=None, decode_step="eager").transforms.decode == "eager"
    assert open_model(tied_dir, "fp32", decode_step="native").transforms.decode == "native"
    assert open_model(tied_dir, "fp32").transforms.decode == "eager"  # pack=False: no choice made


def test_profile_names_a_bad_decode_step() -> None:
    from pocketlm.profile.setting import ProfileError, Setting

    Setting("SmolLM-135M", decode_step="native").check_request()
    with pytest.raises(ProfileError, match="--decode-step 'fast': choose native or eager"):
        Setting("SmolLM-135M", decode_step="fast").check_request()


@pytest.mark.parametrize("weights,path", [("fp32", None), ("fp32", "transposed"), ("int4", "gemv")])
def test_a_cached_native_decoder_does_not_keep_its_model_alive(lib, weights, path) -> None:
    """After native_decoder and generate(native=True) the model is freed with its last reference (the
    tied head, the int4 kernel copies and the KV cache included); the step keeps reading what it points at."""
    import gc
    import weakref

    model = _model(CFG, "linear" if weights == "fp32" else weights)
    if path:
        kc.apply_plan(model.fuse(), dict.fromkeys(kc.kernel_shapes(model), path))
    model.generate(TOKENS[:, :5], max_new_tokens=4, native=True)
    decoder = native_decoder(model)
    assert native_decoder(model) is decoder  # a live model still gets its one decoder
    tokens = TOKENS[:, :10]
    want = _step_logits(model, model, tokens, 6)
    cache = decoder.new_cache(1, tokens.shape[1])
    decoder(tokens[:, :6], cache=cache, last_only=True)
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None
    got = torch.cat([decoder(tokens[:, i:i + 1], cache=cache)[:, -1] for i in range(6, 9)]).float()
    assert _rel(got, want[1:]) <= 1e-2, _rel(got, want[1:])
    with pytest.raises(ReferenceError, match="has been freed"):
        decoder.new_cache(1, 4)


def test_open_model_does_not_keep_the_model_alive(lib, tied_dir, tmp_path, monkeypatch) -> None:  # noqa: F811
    """open_model(pack=None) builds the native decoder to time it; the model still dies with its last reference."""
    import gc
    import weakref

    from pocketlm.runtime import open_model

    monkeypatch.setenv("POCKETLM_CACHE", str(tmp_path))
    monkeypatch.setattr(kc, "time_calls", lambda calls: {"eager": 1.0, "native": 0.5} if "native" in calls
                        else dict.fromkeys(calls, 1.0))
    model = open_model(tied_dir, "fp32", pack=None)
    assert model.transforms.decode == "native"
    model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3)
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None
