"""pocketlm's native decode step: one C call per batch-1 token (`native_decode.c`).

At int4 on one core, one SmolLM-135M token's matmuls take 5.8 ms on pocketlm's own kernels and the
whole compiled token 12.7 ms: the rest is per-op dispatch, norms, rotary, attention and cache
writes (issue 18). `NativeDecoder` runs all of it in C: every pointer (weights, norm gains, the
model's own RoPE tables and KV cache tensors, a preallocated logits tensor) is gathered once into
an array of C structs, and a step is one ctypes call taking the token and the position as ints.
Every linear runs on a `cpu_gemv` kernel: the layer's own one where the per-device choice picked
`gemv*`, else the one that reads its weights as they are (nn.Linear fp32 -> f32, bf16 -> bf16,
Int8Linear -> i8f, Int4Linear -> i4 on its interleaved copy; a TransposedLinear on the step's own
column-block kernel). oneDNN-packed and W8A8 layers are refused with the reason. The C code follows
`Transformer.forward` op for op (RMSNorm and attention scores in fp32, bf16 rounded where the eager
model rounds), so fp32 logits match the eager model to float rounding (tests/test_native_decode.py).

The library is built with `cpu_gemv.c` (same builder, same cache, one .so). `native_unsupported`
names what the step does not cover; `runtime.kernel_choice.choose_decode` times it against the
eager model once per model shape and keeps the faster.
"""

from __future__ import annotations

import ctypes
import dataclasses
import weakref

import torch
from torch import Tensor, nn

from pocketlm.model import cpu_gemv
from pocketlm.model.cpu_gemv import CpuGemvLinear
from pocketlm.model.flat_decode import FlatDecoder, cached_decoder, flat_unsupported
from pocketlm.model.linears import Int4Linear, Int8Linear, PackedLinear, TransposedLinear

ACTIVATIONS = {"silu": 0, "gelu": 1, "gelu_tanh": 2, "relu": 3}  # native_decode.c's `activate`
MAX_HEAD_DIM = 1024  # the step's per-head buffers
FLOAT_KERNELS = {torch.float32: ("f32", "f32t"), torch.bfloat16: ("bf16", "bf16t")}
TRANSPOSED = 100  # native_decode.c's own kernel for TransposedLinear's [in, out] weights


class NativeDecodeError(ValueError):
    """A model the native decode step does not cover; the message names the feature."""


class _Linear(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64) for name in ("kernel", "w", "s", "z", "bias", "n", "k", "group")]


class _Layer(ctypes.Structure):
    _fields_ = [("attn_norm", ctypes.c_int64), ("mlp_norm", ctypes.c_int64), ("n_qkv", ctypes.c_int64),
                ("n_up", ctypes.c_int64), ("qkv", _Linear * 3), ("o", _Linear), ("up", _Linear * 2),
                ("down", _Linear), ("k_cache", ctypes.c_int64), ("v_cache", ctypes.c_int64),
                ("n_head", ctypes.c_int64), ("n_kv", ctypes.c_int64)]


_INTS = ("n_layers", "dim", "dim_head", "rotary_dim", "ffn", "cache_len", "bf16", "rope", "interleaved",
         "unit_offset", "gated", "activation")


class _Model(ctypes.Structure):
    _fields_ = [*((name, ctypes.c_int64) for name in _INTS), ("eps", ctypes.c_double), ("scale", ctypes.c_double),
                ("residual_scale", ctypes.c_double), *((name, ctypes.c_int64) for name in
                                                       ("embed", "final_norm", "cos", "sin", "logits")),
                ("head", _Linear), ("layers", ctypes.c_int64), ("has_final_norm", ctypes.c_int64),
                ("embed_rs", ctypes.c_int64), ("embed_cs", ctypes.c_int64)]


def _linears(model) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every linear the decode step runs, in the model's order."""
    out = []
    for app, b in enumerate(model.layer_schedule()):
        attn, mlp = model.blocks[b].attn, (model.shared_mlp if model.shared_mlp is not None else model.blocks[b].mlp)
        for owner, names in ((attn, ("qkv", "q_proj", "k_proj", "v_proj", "o_proj")),
                             (mlp, ("gate_up", "gate_proj", "up_proj", "down_proj"))):
            out += [(f"blocks.{b}.{n}", getattr(owner, n)) for n in names if getattr(owner, n, None) is not None]
    return out + [("lm_head", model.lm_head)]


def _gemv_layer(layer: nn.Module, dtype: torch.dtype, tied: Tensor | None = None) -> CpuGemvLinear | TransposedLinear | str:
    """`layer` on a cpu_gemv kernel for activations of `dtype` (a TransposedLinear as it is: the step's own
    kernel reads it), or why it has none. `tied`: the embedding matrix a tied LM head shares, which a
    oneDNN-packed head (a copy of it) is read from instead."""
    if isinstance(layer, PackedLinear) and tied is not None and tied.is_contiguous() and tied.dtype == dtype \
            and tuple(tied.shape) == (layer.out_features, layer.in_features):
        return CpuGemvLinear(FLOAT_KERNELS[dtype][0], layer.in_features, layer.out_features, tied, bias=layer.bias)
    if isinstance(layer, TransposedLinear):
        return layer if layer.weight_t.dtype == dtype else f"holds {layer.weight_t.dtype} weights in a {dtype} model"
    if isinstance(layer, CpuGemvLinear):
        floats = {k for ks in FLOAT_KERNELS.values() for k in ks}
        if layer.kernel in floats and layer.kernel not in FLOAT_KERNELS[dtype]:
            return f"its {layer.kernel} kernel takes other activations than the model's {dtype}"
        return layer
    if type(layer).__name__ == "W8A8Linear":
        return "is W8A8 (dynamic activation quantization); quantize weight-only (int8/int4) for the native step"
    if isinstance(layer, Int8Linear):
        return CpuGemvLinear.from_layer(layer, "i8f")  # fp32 FMA on the stored codes: the eager layer's math
    if isinstance(layer, Int4Linear):
        if layer.in_features % 32 or layer.group_size % 32:
            return f"int4 groups of {layer.group_size} over {layer.in_features} inputs (the i4 kernel needs multiples of 32)"
        return CpuGemvLinear.from_layer(layer, "i4")
    if type(layer) is nn.Linear:
        if layer.weight.dtype != dtype:
            return f"holds {layer.weight.dtype} weights in a {dtype} model"
        if dtype == torch.bfloat16 and not cpu_gemv.library().has_bf16:
            return "holds bf16 weights and this CPU has no AVX512-BF16"
        return CpuGemvLinear.from_layer(layer, FLOAT_KERNELS[dtype][0])
    return (f"is a {type(layer).__name__} (a layout the native step cannot read); open the model with "
            "pack=False or the automatic choice (pack=None)")


def _tied(model, name: str) -> Tensor | None:
    return model.embed.weight.detach() if name == "lm_head" and model.config.tie_embeddings else None


def native_unsupported(model) -> str | None:
    """None if `model`'s batch-1 decode step can run natively, else the reason it cannot."""
    found = _native_layers(model)
    return found if isinstance(found, str) else None


def _native_layers(model) -> "dict[str, CpuGemvLinear | TransposedLinear] | str":
    """Every linear of the step on the kernel it runs (name -> layer), or the reason the model has no native step."""
    reason = cpu_gemv.unavailable()
    if reason:
        return f"pocketlm's CPU kernels do not run here ({reason})"
    reason = flat_unsupported(model)
    if reason:
        return reason
    cfg = model.config
    dtype = model.embed.weight.dtype
    checks = [
        (model.embed.weight.device.type == "cpu", "a model off the CPU"),
        (dtype in FLOAT_KERNELS, f"{dtype} activations (fp32 and bf16 run natively)"),
        (not cfg.parallel_residual, "parallel attention/FFN residuals"),
        (cfg.norm == "rmsnorm", f"{cfg.norm} (the native step runs RMSNorm)"),
        (cfg.activation in ACTIVATIONS, f"the {cfg.activation} activation"),
        (cfg.embed_scale == 1.0 and cfg.logit_scale == 1.0, "embedding or logit scaling"),
        (cfg.final_logit_softcap is None, "final logit soft-capping"),
        (cfg.dim_head <= MAX_HEAD_DIM, f"heads wider than {MAX_HEAD_DIM}"),
    ]
    for ok, what in checks:
        if not ok:
            return what
    for name, norm in [(n, m) for n, m in model.named_modules() if type(m).__name__ == "Norm"]:
        if norm.weight is not None and norm.weight.dtype != dtype:
            return f"norm {name} holds {norm.weight.dtype} in a {dtype} model"
    layers = {}
    for name, layer in _linears(model):
        found = _gemv_layer(layer, dtype, _tied(model, name))
        if isinstance(found, str):
            return f"layer {name} {found}"
        layers[name] = found
    return layers


def _address(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


class NativeDecoder(FlatDecoder):
    """Runs `model` like the model itself; every batch-1 one-token step with a cache is one C call
    (`pl_decode_step`), other calls (prefill, padding, batches) run the eager model."""

    def __init__(self, model):
        layers = _native_layers(model)  # each int layer's kernel view is built once, here
        if isinstance(layers, str):
            raise NativeDecodeError(f"the native decode step does not cover {layers}; decode this model eagerly")
        super().__init__(model, compile=False)
        self.params = []  # the flat step's list; the native step keeps every tensor its structs point at in `_keep`
        cfg, dtype = model.config, model.embed.weight.dtype
        self.lib, self.dtype = cpu_gemv.library(), dtype
        self._keep: list = []
        self._layers = (_Layer * len(model.layer_schedule()))()
        self._keep.append(layers)
        widest = 0
        for i, b in enumerate(model.layer_schedule()):
            block, spec = model.blocks[b], self._layers[i]
            attn = block.attn
            spec.attn_norm, spec.mlp_norm = self._pin(block.attn_norm.weight), self._pin(block.mlp_norm.weight)
            qkv = [layers[f"blocks.{b}.{n}"] for n in ("qkv", "q_proj", "k_proj", "v_proj") if f"blocks.{b}.{n}" in layers]
            up = [layers[f"blocks.{b}.{n}"] for n in ("gate_up", "gate_proj", "up_proj") if f"blocks.{b}.{n}" in layers]
            spec.n_qkv, spec.n_up = len(qkv), len(up)
            for j, layer in enumerate(qkv):
                self._fill(spec.qkv[j], layer)
            for j, layer in enumerate(up):
                self._fill(spec.up[j], layer)
            self._fill(spec.o, layers[f"blocks.{b}.o_proj"])
            self._fill(spec.down, layers[f"blocks.{b}.down_proj"])
            spec.n_head, spec.n_kv = attn.n_head, attn.n_kv
            widest = max(widest, spec.down.k)
        m = self._model = _Model()
        m.n_layers, m.dim, m.dim_head, m.rotary_dim, m.ffn = len(self._layers), cfg.d_model, cfg.dim_head, \
            cfg.rotary_dim if self.plan.rope else 0, widest
        m.bf16, m.rope, m.interleaved = int(dtype == torch.bfloat16), int(self.plan.rope), int(cfg.rope_interleaved)
        m.unit_offset, m.gated, m.activation = int(cfg.norm_unit_offset), int(cfg.ffn_type == "gated"), \
            ACTIVATIONS[cfg.activation]
        m.eps, m.scale, m.residual_scale = cfg.norm_eps, self.plan.scale, cfg.residual_scale
        m.embed = self._pin(model.embed.weight)
        m.embed_rs, m.embed_cs = model.embed.weight.stride()
        m.has_final_norm = int(model.final_norm is not None)
        m.final_norm = self._pin(model.final_norm.weight) if model.final_norm is not None else 0
        self._fill(m.head, layers["lm_head"])
        m.layers = ctypes.addressof(self._layers)
        self.logits = torch.empty(1, cfg.vocab_size, dtype=dtype)
        m.logits = self.logits.data_ptr()
        self._cache = None  # weak reference to the KV cache whose tensors the structs point at

    def _pin(self, t: Tensor | None) -> int:
        """`t`'s address, `t` kept alive with the decoder (which holds the model only weakly)."""
        if t is not None:
            self._keep.append(t)
        return _address(t)

    def _fill(self, spec: _Linear, layer: CpuGemvLinear | TransposedLinear) -> None:
        if isinstance(layer, TransposedLinear):
            spec.kernel, spec.w, spec.s, spec.z = TRANSPOSED, layer.weight_t.data_ptr(), 0, 0
            spec.bias, spec.n, spec.k, spec.group = _address(layer.bias), layer.out_features, layer.in_features, 0
            return
        spec.kernel, spec.w = cpu_gemv.KERNELS.index(layer.kernel), layer.weight.data_ptr()
        spec.s, spec.z, spec.bias = _address(layer.scales), _address(layer.zeros), _address(layer.bias)
        spec.n, spec.k, spec.group = layer.out_features, layer.in_features, layer.group_size

    def _bind(self, cache) -> None:
        """Point the structs at `cache`'s tensors (once per cache) and the RoPE tables of its size."""
        for layer, spec in zip(cache.layers, self._layers):
            for t in (layer.k, layer.v):
                if t.dtype != self.dtype or t.shape[0] < 1 or not t.is_contiguous() or t.device.type != "cpu":
                    raise NativeDecodeError(f"the native step writes a contiguous {self.dtype} CPU KV cache; this "
                                            f"one holds {t.dtype} {tuple(t.shape)} (make it with decoder.new_cache)")
            spec.k_cache, spec.v_cache = layer.k.data_ptr(), layer.v.data_ptr()  # batch row 0
        size = cache.layers[0].k.shape[2]
        cos, sin = self._rope(size, torch.device("cpu"))
        self._model.cos, self._model.sin, self._model.cache_len = _address(cos), _address(sin), size
        self._cache = weakref.ref(cache)

    def step(self, token: Tensor, cache) -> Tensor:
        """Logits [1, V] of one token at slot `cache.length`, written into `self.logits` (valid until the
        next step); advances the cache."""
        pos = cache.length
        if pos >= cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} tokens; it is full")
        tok = int(token)
        if not 0 <= tok < self.logits.shape[1]:  # the C step reads the embedding row unchecked
            raise IndexError(f"token id {tok} is outside the vocabulary (0..{self.logits.shape[1] - 1})")
        if self._cache is None or self._cache() is not cache:
            self._bind(cache)
        rc = self.lib.pl_decode_step(ctypes.addressof(self._model), tok, pos, torch.get_num_threads())
        if rc != 0:
            raise RuntimeError(f"native decode step failed (code {rc}: {'out of memory' if rc == -1 else 'bad shape'})")
        cache.length = pos + 1
        cache.flat_steps = True
        return self.logits

    def __call__(self, input_ids: Tensor, attention_mask: Tensor | None = None, cache=None,
                 position_ids: Tensor | None = None, last_only: bool = False) -> Tensor:
        out = super().__call__(input_ids, attention_mask, cache, position_ids, last_only)
        return out.clone() if out.data_ptr() == self.logits.data_ptr() else out  # callers may keep logits


def native_decoder(model):
    """The model's NativeDecoder, built once and kept while the model's layout stays the same.

    Where pocketlm's kernels do not build here (no compiler, CPU flags) it warns once
    (`cpu_gemv.NativeKernelNote`) and returns the model itself: decoding stays eager. Any other
    configuration the step does not cover raises NativeDecodeError naming it."""
    if cpu_gemv.library() is None:
        return model
    layout = (dataclasses.replace(model.transforms, decode="eager"), id(model.embed.weight))  # not the choice
    return cached_decoder(model, "native", layout, lambda: NativeDecoder(model))


__all__ = ["NativeDecodeError", "NativeDecoder", "native_decoder", "native_unsupported"]
