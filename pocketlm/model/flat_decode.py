"""A decode step as one flat function over plain tensors, for torch.compile with low guard cost.

`Transformer.forward` walks a module tree built for every axis of the survey (masks, rings,
padding, MoE ...). For the common decoder (pre- or parallel-residual blocks, RoPE, MHA/GQA/MQA,
dense FFN, batch 1) a decode step is far simpler, and launch and Python overhead dominate it at
small sizes. `make_decode_step(plan)` writes that step as one function

    decode_step(params, k_cache, v_cache, cos, sin, token, pos) -> logits [1, V]

over a flat list of the model's tensors (each linear on the kernel it already runs: nn.Linear,
transposed, oneDNN-packed, int8/int4 weight-only) and the model's own preallocated KV cache. The
position is a 0-d tensor and the cache is static (keys past `pos` are masked), so every step has
the same shapes and one compiled graph serves a whole generation: `torch.compile(step,
dynamic=False, fullgraph=True)` compiles once per cache size (sizes are rounded up to powers of
two), never recompiles inside a generation, and a graph break is an error, not a silent slowdown.
Guards are checked on a list of plain tensors, not on a module tree; `FlatDecoder` also checks the
shapes itself and then skips dynamo's guard evaluation (`skip_guard_eval_unsafe`).

The step computes what `Transformer.forward` computes for one new token, op for op where the eager
path has a choice (RMSNorm in fp32, the same rotary arithmetic and tables, fp32 attention scores),
so uncompiled it matches the eager model to the last bit and compiled to float rounding
(tests/test_flat_decode.py). Configurations it does not cover are named by `flat_unsupported`.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pocketlm.model.cpu_gemv import CpuGemvLinear, gemv_any
from pocketlm.model.linears import Int4Linear, Int8Linear, PackedLinear, TransposedLinear, packed_linear


class FlatDecodeError(ValueError):
    """A model the flat decode step does not cover; the message says which feature and what to use."""


def flat_unsupported(model) -> str | None:
    """None if `model`'s decode step can run as a flat function, else the reason it cannot."""
    cfg = model.config
    checks = [
        (cfg.attention == "standard", "multi-head latent attention"),
        (cfg.positions in ("rope", "none"), f"{cfg.positions} positions"),
        (not (cfg.rope_scaling or {}).get("rope_type") == "longrope", "LongRoPE's two tables"),
        (cfg.norm_placement == "pre", f"{cfg.norm_placement} norm placement"),
        (cfg.n_experts == 0, "mixture of experts"),
        (cfg.sliding_window is None, "sliding-window attention"),
        (cfg.qk_norm == "none" and cfg.clip_qkv is None, "q/k norms or clipping"),
        (cfg.attn_logit_softcap is None, "attention logit soft-capping"),
        (cfg.embed_proj_dim is None and not cfg.embed_norm, "embedding projections or norms"),
    ]
    for ok, what in checks:
        if not ok:
            return what
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.weight.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return f"layer {name} holds {module.weight.dtype}"
        if type(module).__name__ == "W8A8Linear":
            return f"layer {name} is W8A8 (dynamic activation quantization)"
    return None


# ---------------------------------------------------------------------------------------------
# the plan: which tensors each part reads, as indices into one flat list
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearSpec:
    kind: str  # linear | transposed | mkldnn | int8 | int4 | gemv
    index: int  # its first tensor in `params`: the weight (or codes), then scales, then the bias
    has_bias: bool
    out_features: int
    group_size: int = 0  # int4
    compute_dtype: torch.dtype | None = None  # int8 / int4 activations inside the kernel
    gemv: str = ""  # gemv: the cpu_gemv kernel
    extra: tuple[int | None, ...] = ()  # gemv: indices of scales, zeros, bias (None: absent)


@dataclass(frozen=True)
class NormSpec:
    kind: str  # rmsnorm | layernorm
    weight: int | None  # index, or None (no affine)
    bias: int | None
    eps: float
    unit_offset: bool


@dataclass(frozen=True)
class LayerSpec:
    attn_norm: NormSpec
    mlp_norm: NormSpec | None  # None: one norm feeds both branches (parallel, shared)
    qkv: tuple[LinearSpec, ...]  # one fused layer, or q, k, v
    o: LinearSpec
    up: tuple[LinearSpec, ...]  # gated: one fused gate/up, or gate, up; standard: up
    down: LinearSpec
    n_head: int
    n_kv: int


@dataclass(frozen=True)
class Plan:
    layers: tuple[LayerSpec, ...]
    embed: int
    final_norm: NormSpec | None
    head: LinearSpec
    dim_head: int
    rotary_dim: int
    rope: bool
    interleaved: bool
    scale: float
    residual_scale: float
    parallel: bool
    gated: bool
    activation: str
    embed_scale: float
    embed_scale_round: bool
    logit_scale: float
    final_softcap: float | None
    dtype: torch.dtype


class _Params:
    def __init__(self):
        self.tensors: list[Tensor] = []

    def add(self, t: Tensor | None) -> int | None:
        if t is None:
            return None
        self.tensors.append(t.detach())
        return len(self.tensors) - 1


def _linear_spec(layer: nn.Module, params: _Params) -> LinearSpec:
    if isinstance(layer, CpuGemvLinear):
        i = params.add(layer.weight)
        extra = tuple(params.add(t) for t in (layer.scales, layer.zeros, layer.bias))
        return LinearSpec("gemv", i, layer.bias is not None, layer.out_features, layer.group_size,
                          gemv=layer.kernel, extra=extra)
    if isinstance(layer, Int8Linear):
        i = params.add(layer.qweight)
        params.add(layer.scales)
        kind, group = "int8", 0
    elif isinstance(layer, Int4Linear):
        i = params.add(layer.qweight)
        params.add(layer.scales_and_zeros)
        kind, group = "int4", layer.group_size
    elif isinstance(layer, PackedLinear):
        i, kind, group = params.add(layer.packed), "mkldnn", 0
    elif isinstance(layer, TransposedLinear):
        i, kind, group = params.add(layer.weight_t), "transposed", 0
    elif isinstance(layer, nn.Linear):
        i, kind, group = params.add(layer.weight), "linear", 0
    else:
        raise FlatDecodeError(f"a {type(layer).__name__} layer has no flat form; decode this model eagerly")
    bias = getattr(layer, "bias", None)
    params.add(bias)
    return LinearSpec(kind, i, bias is not None, layer.out_features, group, getattr(layer, "compute_dtype", None))


def _norm_spec(norm, params: _Params) -> NormSpec:
    return NormSpec(norm.kind, params.add(norm.weight), params.add(norm.bias), norm.eps, norm.unit_offset)


def flatten(model) -> tuple[Plan, list[Tensor]]:
    """The plan of `model`'s decode step and the flat list of tensors it reads (shared, not copied)."""
    reason = flat_unsupported(model)
    if reason:
        raise FlatDecodeError(f"the flat decode step does not cover {reason}; decode this model eagerly "
                              "(without compile), or compile the module (pocketlm.profile.timing.compile_model)")
    cfg, params = model.config, _Params()
    embed = params.add(model.embed.weight)
    layers = []
    for app, b in enumerate(model.layer_schedule()):
        block = model.blocks[b]
        attn, mlp = block.attn, (model.shared_mlp if model.shared_mlp is not None else block.mlp)
        qkv = (attn.qkv,) if attn.qkv is not None else (attn.q_proj, attn.k_proj, attn.v_proj)
        up = (mlp.gate_up,) if mlp.gate_up is not None else ((mlp.gate_proj, mlp.up_proj) if mlp.gated else (mlp.up_proj,))
        shared_norm = cfg.parallel_residual and cfg.parallel_shared_norm
        layers.append(LayerSpec(
            attn_norm=_norm_spec(block.attn_norm, params),
            mlp_norm=None if shared_norm else _norm_spec(block.mlp_norm, params),
            qkv=tuple(_linear_spec(m, params) for m in qkv), o=_linear_spec(attn.o_proj, params),
            up=tuple(_linear_spec(m, params) for m in up), down=_linear_spec(mlp.down_proj, params),
            n_head=attn.n_head, n_kv=attn.n_kv))
    final = _norm_spec(model.final_norm, params) if model.final_norm is not None else None
    head = _linear_spec(model.lm_head, params)
    scale = model.blocks[0].attn.scale
    plan = Plan(tuple(layers), embed, final, head, cfg.dim_head, cfg.rotary_dim, cfg.positions == "rope",
                cfg.rope_interleaved, scale, cfg.residual_scale, cfg.parallel_residual, cfg.ffn_type == "gated",
                cfg.activation, cfg.embed_scale, cfg.embed_scale_round, cfg.logit_scale, cfg.final_logit_softcap,
                model.embed.weight.dtype)
    return plan, params.tensors


# ---------------------------------------------------------------------------------------------
# the step
# ---------------------------------------------------------------------------------------------


def _linear(spec: LinearSpec, x: Tensor, p: list[Tensor]) -> Tensor:
    """x [1, in] -> [1, out] exactly as the layer's own forward computes it."""
    w = p[spec.index]
    if spec.kind == "gemv":
        s, z, b = (None if i is None else p[i] for i in spec.extra)
        return gemv_any(x, w, s, z, b, spec.gemv, spec.out_features, spec.group_size)
    if spec.kind in ("int8", "int4"):
        xc = x.to(spec.compute_dtype).contiguous()
        if spec.kind == "int8":
            y = torch._weight_int8pack_mm(xc, w, p[spec.index + 1]).to(x.dtype)
        else:
            y = torch._weight_int4pack_mm_for_cpu(xc, w, spec.group_size, p[spec.index + 1]).to(x.dtype)
        return y + p[spec.index + 2].to(x.dtype) if spec.has_bias else y
    bias = p[spec.index + 1] if spec.has_bias else None
    if spec.kind == "linear":
        return F.linear(x, w, bias)
    if spec.kind == "mkldnn":
        return packed_linear(x, w, bias, spec.out_features)
    y = torch.matmul(x, w)  # transposed
    return y if bias is None else y + bias


def _linears(specs: tuple[LinearSpec, ...], x: Tensor, p: list[Tensor]) -> Tensor:
    if len(specs) == 1:
        return _linear(specs[0], x, p)
    return torch.cat([_linear(s, x, p) for s in specs], dim=-1)


def _norm(spec: NormSpec, x: Tensor, p: list[Tensor]) -> Tensor:
    """`transformer.Norm.forward`, op for op."""
    w = None if spec.weight is None else p[spec.weight]
    if spec.kind == "layernorm":
        return F.layer_norm(x, x.shape[-1:], w, None if spec.bias is None else p[spec.bias], spec.eps)
    dtype = x.dtype
    if dtype == torch.float32 and w is not None and not spec.unit_offset:
        return F.rms_norm(x, x.shape[-1:], w, spec.eps)
    y = F.rms_norm(x.float(), x.shape[-1:], None, spec.eps)
    if w is None:
        return y.to(dtype)
    if spec.unit_offset:
        return (y * (1.0 + w.float())).to(dtype)
    return w * y.to(dtype)


def make_decode_step(plan: Plan):
    """decode_step(params, k_cache, v_cache, cos, sin, token [1], pos 0-d long) -> logits [1, V].

    k_cache / v_cache: one [K, L, D] tensor per layer application (the model's KVCache tensors,
    batch row 0), written at `pos`; keys after `pos` are masked. cos / sin: [L, rotary dims]."""
    from pocketlm.model.transformer import ACTIVATION_FNS, apply_rotary

    act = ACTIVATION_FNS[plan.activation]
    D, s = plan.dim_head, plan.residual_scale

    def attention(spec: LayerSpec, h: Tensor, i: int, p, k_cache, v_cache, cos, sin, at, masked) -> Tensor:
        H, K = spec.n_head, spec.n_kv
        qkv = _linears(spec.qkv, h, p)[0]  # [(H + 2K) D]
        qk = qkv[:(H + K) * D].view(H + K, D)
        if plan.rope:
            qk = apply_rotary(qk, cos, sin, plan.interleaved)  # [H + K, D] by [rd]: the same elementwise ops
        q, k = qk.split([H, K], dim=0)
        v = qkv[(H + K) * D:].view(K, D)
        k_cache[i].index_copy_(1, at, k.unsqueeze(1))
        v_cache[i].index_copy_(1, at, v.unsqueeze(1))
        keys, values = k_cache[i], v_cache[i]
        scores = torch.matmul(q.reshape(K, H // K, D).float(), keys.float().transpose(-1, -2)) * plan.scale
        scores = scores.masked_fill(masked, float("-inf"))  # [K, G, L]
        y = torch.matmul(torch.softmax(scores, dim=-1), values.float())  # [K, G, D]
        return _linear(spec.o, y.reshape(1, H * D).to(h.dtype), p)

    def mlp(spec: LayerSpec, h: Tensor, p) -> Tensor:
        u = _linears(spec.up, h, p)
        if plan.gated:
            gate, up = u.chunk(2, dim=-1)
            u = act(gate) * up
        else:
            u = act(u)
        return _linear(spec.down, u, p)

    def decode_step(p: list[Tensor], k_cache: list[Tensor], v_cache: list[Tensor], cos: Tensor, sin: Tensor,
                    token: Tensor, pos: Tensor) -> Tensor:
        x = F.embedding(token, p[plan.embed])  # [1, C]
        if plan.embed_scale != 1.0:
            x = x * (torch.tensor(plan.embed_scale, dtype=x.dtype) if plan.embed_scale_round else plan.embed_scale)
        at = pos.view(1)
        cos_p, sin_p = cos.index_select(0, at)[0], sin.index_select(0, at)[0]
        masked = torch.arange(k_cache[0].shape[1], device=x.device) > pos  # [L]
        for i, spec in enumerate(plan.layers):
            if plan.parallel:
                h = _norm(spec.attn_norm, x, p)
                m_in = h if spec.mlp_norm is None else _norm(spec.mlp_norm, x, p)
                x = x + attention(spec, h, i, p, k_cache, v_cache, cos_p, sin_p, at, masked) + mlp(spec, m_in, p)
                continue
            a = attention(spec, _norm(spec.attn_norm, x, p), i, p, k_cache, v_cache, cos_p, sin_p, at, masked)
            x = x + (a if s == 1.0 else s * a)
            m = mlp(spec, _norm(spec.mlp_norm, x, p), p)
            x = x + (m if s == 1.0 else s * m)
        if plan.final_norm is not None:
            x = _norm(plan.final_norm, x, p)
        if plan.logit_scale != 1.0:
            x = x * plan.logit_scale
        logits = _linear(plan.head, x, p)
        if plan.final_softcap is not None:
            logits = torch.tanh(logits / plan.final_softcap) * plan.final_softcap
        return logits

    return decode_step


# ---------------------------------------------------------------------------------------------
# the decoder: the step on the model's own KV cache, compiled once per cache size
# ---------------------------------------------------------------------------------------------


def cache_size(n: int) -> int:
    """Cache slots for `n` tokens: a power of two (at least 256), so compiled steps are reused across lengths."""
    return max(256, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


class FlatDecoder:
    """Runs `model` like the model itself (`decoder(ids, cache=..., last_only=True)`), with every batch-1,
    one-token step with a cache going through the flat step (compiled if `compile`); other calls
    (prefill, padding, batches) run the eager model. `compile_s` sums the seconds of first calls.

    The decoder holds the model's tensors, never the model: it reaches the model through a weak
    reference, so a decoder kept beside its model (`flat_decoder`'s cache) never keeps it alive."""

    def __init__(self, model, compile: bool = False, mode: str | None = None):
        self._model_ref, self.config, self.compiled = weakref.ref(model), model.config, compile
        self.plan, self.params = flatten(model)
        self.transforms = model.transforms
        step = make_decode_step(self.plan)
        self._step = torch.compile(step, dynamic=False, fullgraph=True, mode=mode) if compile else step
        self._tables: dict[int, tuple[Tensor, Tensor]] = {}
        self._seen: set[int] = set()  # cache sizes whose graph exists
        self.compile_s = 0.0

    @property
    def model(self):
        """The model this decoder runs; ReferenceError once it has been freed."""
        model = self._model_ref()
        if model is None:
            raise ReferenceError("the model this decoder runs has been freed; keep a reference to the model "
                                 "while decoding with it")
        return model

    def new_cache(self, batch_size: int, max_len: int, dtype: torch.dtype | None = None):
        """The model's KVCache, batch 1 rounded up to `cache_size`; made in inference mode, as every step runs."""
        with torch.inference_mode():
            return self.model.new_cache(batch_size, cache_size(max_len) if batch_size == 1 else max_len, dtype)

    def _rope(self, size: int, device: torch.device) -> tuple[Tensor, Tensor]:
        if size not in self._tables:
            if self.plan.rope:
                rotary = self.model.rotary[str(self.plan.rotary_dim)]
                cos, sin = rotary._table(size, False, self.plan.dtype, device)
                self._tables[size] = (cos[:size], sin[:size])
            else:
                empty = torch.empty(size, 0, dtype=self.plan.dtype, device=device)
                self._tables[size] = (empty, empty)
        return self._tables[size]

    def step(self, token: Tensor, cache) -> Tensor:
        """Logits [1, V] of one token ([1] or [1, 1] long) at slot `cache.length`; advances the cache."""
        pos = cache.length
        if pos >= cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} tokens; it is full")
        size = cache.layers[0].k.shape[2]
        cos, sin = self._rope(size, token.device)
        ks = [layer.k[0] for layer in cache.layers]
        vs = [layer.v[0] for layer in cache.layers]
        first = size not in self._seen
        t0 = time.perf_counter()
        with torch.inference_mode():  # fresh inference tensors: what the graph's guards were built on
            args = (self.params, ks, vs, cos, sin, token.reshape(1).clone(), torch.tensor(pos))
            logits = None
            if self.compiled and not first:  # same tensors, same shapes as the graph was built for
                try:
                    with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                        logits = self._step(*args)
                except RuntimeError as e:  # dynamo saw a guard fail (e.g. a cache made outside inference mode)
                    if "Recompilation triggered" not in str(e):
                        raise
                    first = True
                    t0 = time.perf_counter()
            if logits is None:
                logits = self._step(*args)
        if first:
            self._seen.add(size)
            if self.compiled:
                self.compile_s += time.perf_counter() - t0
        cache.length = pos + 1
        cache.flat_steps = True
        return logits

    def __call__(self, input_ids: Tensor, attention_mask: Tensor | None = None, cache=None,
                 position_ids: Tensor | None = None, last_only: bool = False) -> Tensor:
        flat_ok = (cache is not None and input_ids.shape == (1, 1) and position_ids is None
                   and (attention_mask is None or bool(attention_mask.all())) and not cache.layers[0].ring)
        if flat_ok:
            return self.step(input_ids, cache)[:, None]
        with torch.inference_mode():
            if cache is not None and getattr(cache, "flat_steps", False):
                _sync_slots(cache)
            return self.model(input_ids, attention_mask, cache=cache, position_ids=position_ids, last_only=last_only)


def _sync_slots(cache) -> None:
    """The eager path reads `slot_pos` (the flat step leaves it alone: its cache holds slots 0..length in order)."""
    for layer in cache.layers:
        layer.slot_pos[:cache.length] = torch.arange(cache.length)
    cache.flat_steps = False


_DECODERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {kind: (layout, decoder)}


def cached_decoder(model, kind: Hashable, layout: Hashable, build: Callable[[], FlatDecoder]) -> FlatDecoder:
    """`model`'s decoder of `kind`, made by `build()` once and kept while the model lives and its `layout`
    stays the same. The entry dies with the model: decoders reach their model only through a weak reference."""
    decoders = _DECODERS.setdefault(model, {})
    found = decoders.get(kind)
    if found is None or found[0] != layout:
        found = decoders[kind] = (layout, build())
    return found[1]


def flat_decoder(model, compile: bool = True) -> FlatDecoder:
    """The model's FlatDecoder, built once and kept while the model's layout stays the same."""
    return cached_decoder(model, ("flat", compile), (model.transforms, id(model.embed.weight)),
                          lambda: FlatDecoder(model, compile=compile))
