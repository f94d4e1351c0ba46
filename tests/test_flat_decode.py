"""The flat decode step (`pocketlm.model.flat_decode`) computes what the eager model computes.

Reference: the eager `Transformer.forward` one token at a time on its own KV cache (itself checked
against transformers' logits in test_hf_parity.py), on every kernel path a linear can run on and on
the config axes the flat step covers."""

from __future__ import annotations

import pytest
import torch

from pocketlm.model.config import ModelConfig
from pocketlm.model.flat_decode import FlatDecodeError, FlatDecoder, cache_size, flat_decoder, flat_unsupported
from pocketlm.model.quantize import quantize_model
from pocketlm.model.transformer import Transformer
from pocketlm.runtime.kernel_choice import apply_plan, kernel_shapes

CFG = ModelConfig(vocab_size=384, d_model=64, n_layer=2, n_head=4, n_kv_head=2, intermediate_size=128,
                  max_seq_len=512, name="tiny-llama")


def _model(cfg: ModelConfig, weights: str = "linear") -> Transformer:
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    with torch.no_grad():  # weights large enough that logits are far from zero
        for p in model.parameters():
            p.normal_(0, 0.15 if p.ndim > 1 else 1.0)
    if weights in ("linear", "transposed", "mkldnn"):
        model.fuse()
        apply_plan(model, dict.fromkeys(kernel_shapes(model), weights))
    elif weights == "bf16":
        model = model.to(torch.bfloat16)
    elif weights in ("int8", "int4"):
        model = quantize_model(model.to(torch.bfloat16), weights, 32)
    return model


def _step_logits(run, model, tokens: torch.Tensor, prompt: int) -> torch.Tensor:
    """Prefill `prompt` tokens, then one token at a time: the logits of every step, [n, V] fp32."""
    cache = run.new_cache(1, tokens.shape[1])
    with torch.inference_mode():
        out = [run(tokens[:, :prompt], cache=cache, last_only=True)[:, -1]]
        for i in range(prompt, tokens.shape[1] - 1):
            out.append(run(tokens[:, i:i + 1], cache=cache, last_only=True)[:, -1])
    return torch.cat(out).float()


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    err = (got - want).abs().max().item()
    if dtype == torch.float32:
        assert err <= 1e-5 and want.abs().max() > 1, (err, want.abs().max().item())
    else:  # bf16 activations: a rounding of the last few bits, relative to the logits' size
        assert err <= 1e-2 * want.abs().max().item(), (err, want.abs().max().item())


TOKENS = torch.randint(0, CFG.vocab_size, (1, 24), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("weights", ["linear", "transposed", "mkldnn", "bf16", "int8", "int4"])
def test_flat_step_matches_eager_on_every_kernel(weights) -> None:
    model = _model(CFG, weights)
    want = _step_logits(model, model, TOKENS, 8)
    got = _step_logits(FlatDecoder(model), model, TOKENS, 8)
    _close(got, want, model.embed.weight.dtype)


AXES = {
    "parallel, shared norm, layernorm, gelu FFN": dict(parallel_residual=True, parallel_shared_norm=True,
                                                       norm="layernorm", norm_bias=True, ffn_type="standard",
                                                       activation="gelu", mlp_bias=True, qkv_bias=True),
    "partial rotary, residual / logit / embed scales": dict(rotary_fraction=0.5, residual_scale=0.7, logit_scale=0.3,
                                                            embed_scale=8.0, embed_scale_round=True),
    "untied head with bias, soft-capped logits, Gemma norms": dict(tie_embeddings=False, lm_head_bias=True,
                                                                   final_logit_softcap=5.0, norm_unit_offset=True),
    "repeated blocks, one shared FFN, MQA": dict(block_repeat=2, n_layer=4, shared_ffn=True, n_kv_head=1),
    "interleaved rotary, separate projections": dict(rope_interleaved=True),
}


@pytest.mark.parametrize("axes", AXES, ids=list(AXES))
def test_flat_step_matches_eager_on_config_axes(axes) -> None:
    model = _model(CFG.replace(**AXES[axes]), "linear" if axes != "interleaved rotary, separate projections" else "none")
    want = _step_logits(model, model, TOKENS, 8)
    _close(_step_logits(FlatDecoder(model), model, TOKENS, 8), want, torch.float32)


@pytest.mark.parametrize("step", ["flat", "native"])
def test_eager_after_flat_steps_sees_the_cache(step) -> None:
    """A prefill chunk after flat (or native: `model/native_decode.py`) steps, on the eager path, which reads
    slot positions, continues the same sequence."""
    from pocketlm.model import cpu_gemv
    from pocketlm.model.native_decode import NativeDecoder

    if step == "native" and cpu_gemv.unavailable():
        pytest.skip(f"pocketlm CPU kernels do not run here: {cpu_gemv.unavailable()}")
    model = _model(CFG)
    flat = FlatDecoder(model) if step == "flat" else NativeDecoder(model)
    with torch.inference_mode():
        want = model(TOKENS[:, :16], last_only=True)[:, -1]
        cache = flat.new_cache(1, 16)
        flat(TOKENS[:, :4], cache=cache)
        for i in range(4, 12):
            flat(TOKENS[:, i:i + 1], cache=cache)
        got = flat(TOKENS[:, 12:16], cache=cache, last_only=True)[:, -1]
    _close(got, want, torch.float32)


def test_uncovered_configs_are_named() -> None:
    assert flat_unsupported(_model(CFG)) is None
    moe = Transformer(CFG.replace(n_experts=4, top_k=2, intermediate_size=64))
    assert flat_unsupported(moe) == "mixture of experts"
    assert flat_unsupported(Transformer(CFG.replace(sliding_window=8))) == "sliding-window attention"
    with pytest.raises(FlatDecodeError, match="does not cover mixture of experts; decode this model eagerly"):
        moe.generate(TOKENS[:, :4], max_new_tokens=2, compile=True)


def test_cache_sizes_are_powers_of_two() -> None:
    assert [cache_size(n) for n in (1, 256, 257, 1000, 1025)] == [256, 256, 512, 1024, 2048]


def test_compiled_step_matches_eager_and_compiles_once() -> None:
    """The compiled step: logits within 1e-5 of the eager model (fp32), and generate(compile=True) gives the
    eager greedy tokens; generations of other lengths in the same cache size reuse the one graph."""
    from torch._dynamo.utils import counters

    model = _model(CFG.replace(n_layer=1))
    counters.clear()
    decoder = flat_decoder(model, compile=True)
    _close(_step_logits(decoder, model, TOKENS, 8), _step_logits(model, model, TOKENS, 8), torch.float32)
    assert decoder.compile_s > 0
    for prompt, new in ((6, 10), (3, 20)):
        assert torch.equal(model.generate(TOKENS[:, :prompt], max_new_tokens=new, compile=True),
                           model.generate(TOKENS[:, :prompt], max_new_tokens=new))
    assert flat_decoder(model, compile=True) is decoder
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


@pytest.mark.parametrize("weights", ["linear", "mkldnn", "int8", "int4"])
def test_a_cached_flat_decoder_does_not_keep_its_model_alive(weights) -> None:
    """The decoder cache keeps one decoder per live model and layout, and the entry dies with the model."""
    import gc
    import weakref

    model = _model(CFG, weights)
    decoder = flat_decoder(model, compile=False)
    assert flat_decoder(model, compile=False) is decoder and flat_decoder(model) is flat_decoder(model)
    cache = decoder.new_cache(1, 8)
    decoder(TOKENS[:, :5], cache=cache, last_only=True)
    want = decoder(TOKENS[:, 5:6], cache=cache)
    cache.length -= 1
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None  # the decoder (and its compiled twin, built above) held the model only weakly
    assert torch.equal(decoder(TOKENS[:, 5:6], cache=cache), want)  # the flat step reads its own tensors
    with pytest.raises(ReferenceError, match="has been freed; keep a reference to the model"):
        decoder(TOKENS[:, :5], cache=decoder.new_cache(1, 8))
