"""The pocketlm model: one decoder-only transformer that covers every axis of the SLM survey.

Read top to bottom: activations and norms, rotary/ALiBi positions, attention (MHA/MQA/GQA and
MLA), feed-forward (standard, gated, mixture of experts), the block (pre-, post-, sandwich- and
parallel residuals), the KV cache, then the Transformer with forward and generate, and last the
layouts inference transforms give it (fused projections, other linear kernels; `model.transforms`
records them, and says what a checkpoint format can hold).

Shape letters: B batch, T new tokens, S keys (cache + new), H query heads, K kv heads,
D head dim, C d_model.

Two notions of position are kept apart:
- the *slot*: index of a token in the stream fed to the model, padding included; it orders
  causality and addresses the KV cache;
- the *position*: what rotary / learned / ALiBi encodings see; with left padding it is counted
  over real tokens only (cumsum of the attention mask), as transformers' generate does.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pocketlm.model.config import ModelConfig
from pocketlm.model.linears import (Int4Linear, Int8Linear, QuantRecipe, W8A8Linear, fused_linear, replace_linears,
                                    split_linear)

# ---------------------------------------------------------------------------------------------
# activations and norms
# ---------------------------------------------------------------------------------------------

ACTIVATION_FNS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}


class Norm(nn.Module):
    """LayerNorm or RMSNorm; optional bias, optional affine gain, Gemma's (1 + w) form."""

    def __init__(self, cfg: ModelConfig, dim: int):
        super().__init__()
        self.kind, self.eps, self.unit_offset = cfg.norm, cfg.norm_eps, cfg.norm_unit_offset
        init = 0.0 if cfg.norm_unit_offset else 1.0
        self.weight = nn.Parameter(torch.full((dim,), init)) if cfg.norm_affine else None
        use_bias = cfg.norm_bias and cfg.norm == "layernorm" and cfg.norm_affine
        self.bias = nn.Parameter(torch.zeros(dim)) if use_bias else None

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "layernorm":
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        dtype = x.dtype
        if dtype == torch.float32 and self.weight is not None and not self.unit_offset:
            return F.rms_norm(x, x.shape[-1:], self.weight, self.eps)  # the same x * rstd * w, one op
        y = F.rms_norm(x.float(), x.shape[-1:], None, self.eps)  # one kernel: x * rsqrt(mean(x^2) + eps)
        if self.weight is None:
            return y.to(dtype)
        if self.unit_offset:  # Gemma: scale in fp32, then cast
            return (y * (1.0 + self.weight.float())).to(dtype)
        return self.weight * y.to(dtype)


# ---------------------------------------------------------------------------------------------
# positions: rotary frequencies (with the scaling types transformers uses), ALiBi slopes
# ---------------------------------------------------------------------------------------------


def rope_frequencies(cfg: ModelConfig, dim: int) -> tuple[Tensor, Tensor | None, float]:
    """Inverse frequencies for `dim` rotary dims: (short/default, long or None, attention factor)."""
    base = cfg.rope_theta
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    inv_freq = 1.0 / (base**exponents)
    scaling = cfg.rope_scaling or {}
    kind = scaling.get("rope_type", "default")
    if kind in ("default", "dynamic"):  # dynamic NTK equals default inside the trained context
        return inv_freq, None, 1.0
    if kind == "linear":
        return inv_freq / scaling["factor"], None, 1.0
    if kind == "llama3":
        factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_ctx = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_ctx / lo, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_ctx / hi) & (wavelen <= old_ctx / lo)
        return torch.where(medium, smoothed, scaled), None, 1.0
    if kind == "longrope":
        orig = scaling.get("original_max_position_embeddings") or cfg.extra.get("original_max_position_embeddings")
        factor = cfg.max_seq_len / orig
        attn_factor = scaling.get("attention_factor")
        if attn_factor is None:
            attn_factor = math.sqrt(1 + math.log(factor) / math.log(orig)) if factor > 1 else 1.0
        short = 1.0 / (torch.tensor(scaling["short_factor"], dtype=torch.float32) * base**exponents)
        long = 1.0 / (torch.tensor(scaling["long_factor"], dtype=torch.float32) * base**exponents)
        return short, long, attn_factor
    if kind == "yarn":
        factor = scaling["factor"]
        orig = scaling.get("original_max_position_embeddings") or cfg.max_seq_len
        beta_fast, beta_slow = scaling.get("beta_fast", 32), scaling.get("beta_slow", 1)

        def mscale(scale: float, m: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        attn_factor = scaling.get("attention_factor")
        if attn_factor is None:
            if scaling.get("mscale") and scaling.get("mscale_all_dim"):
                attn_factor = mscale(factor, scaling["mscale"]) / mscale(factor, scaling["mscale_all_dim"])
            else:
                attn_factor = mscale(factor)

        def correction_dim(rotations: float) -> float:
            return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(base))

        low, high = correction_dim(beta_fast), correction_dim(beta_slow)
        if scaling.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
        extrapolate = 1 - ramp
        inv = (inv_freq / factor) * (1 - extrapolate) + inv_freq * extrapolate
        return inv, None, attn_factor
    raise ValueError(f"unsupported rope_type {kind!r}")


class Rotary(nn.Module):
    """Cos/sin tables indexed by position, built lazily in float32 and grown on demand.

    The tables are caches, not buffers: `.to(bfloat16)` must not round the frequencies, and a model
    built on the meta device gets them on first use.
    """

    def __init__(self, cfg: ModelConfig, dim: int):
        super().__init__()
        self.cfg, self.dim, self.interleaved = cfg, dim, cfg.rope_interleaved
        self.has_long = (cfg.rope_scaling or {}).get("rope_type") == "longrope"
        self.long_after = (cfg.rope_scaling or {}).get("original_max_position_embeddings") or cfg.extra.get(
            "original_max_position_embeddings")
        self._tables: dict[tuple[bool, torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}

    def _table(self, n: int, long: bool, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        key = (long, dtype, device)
        cos, _ = self._tables.get(key, (None, None))
        if cos is None or cos.shape[0] < n:
            size = max(n, 2 * (0 if cos is None else cos.shape[0]), 256)
            short, long_freq, attn_factor = rope_frequencies(self.cfg, self.dim)
            inv = (long_freq if long else short).to(device)
            freqs = torch.outer(torch.arange(size, device=device, dtype=torch.float32), inv)
            if self.interleaved:
                freqs = freqs.repeat_interleave(2, dim=-1)
            else:
                freqs = torch.cat([freqs, freqs], dim=-1)
            cos = (freqs.cos() * attn_factor).to(dtype)
            sin = (freqs.sin() * attn_factor).to(dtype)
            self._tables[key] = (cos, sin)
        return self._tables[key]

    def forward(self, positions: Tensor, dtype: torch.dtype, max_position: int) -> tuple[Tensor, Tensor]:
        """cos, sin of shape [B, 1, T, dim] for integer positions [B, T]."""
        long = self.has_long and self.long_after is not None and max_position + 1 > self.long_after
        cos, sin = self._table(max_position + 1, long, dtype, positions.device)
        return cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> Tensor:
    """Rotate the first cos.shape[-1] dims of x [B, H, T, D]; the rest pass through."""
    rd = cos.shape[-1]
    rot, rest = x[..., :rd], x[..., rd:]
    if interleaved:
        pairs = rot.unflatten(-1, (-1, 2))
        rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    else:
        half = rd // 2
        rotated = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
    out = rot * cos + rotated * sin
    return out if rest.shape[-1] == 0 else torch.cat([out, rest], dim=-1)


def alibi_slopes(n_head: int) -> Tensor:
    """ALiBi head slopes (Press et al. 2022), BLOOM's recipe for head counts not a power of 2."""
    closest = 2 ** math.floor(math.log2(n_head))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = [base ** (i + 1) for i in range(closest)]
    if closest != n_head:
        extra_base = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra_base ** (2 * i + 1) for i in range(min(closest, n_head - closest))]
    return torch.tensor(slopes, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# the KV cache: per layer application, preallocated; a ring of `window` slots for sliding layers
# ---------------------------------------------------------------------------------------------


class LayerCache:
    """Keys/values (or the MLA latent) of one layer application.

    `slot_pos[s]` is the stream slot held in cache slot s (-1: empty). Full layers hold every
    slot; sliding-window layers hold the last `window` slots in a ring.
    """

    def __init__(self, k_shape: tuple[int, ...], v_shape: tuple[int, ...], size: int, ring: bool,
                 dtype: torch.dtype, device: torch.device):
        self.k = torch.zeros(k_shape, dtype=dtype, device=device)  # keys, or the MLA latent
        self.v = torch.zeros(v_shape, dtype=dtype, device=device)  # values, or MLA's rotary key
        self.size, self.ring = size, ring
        self.slot_pos = torch.full((size,), -1, dtype=torch.long, device=device)

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


class KVCache:
    """Preallocated cache for a whole model; `length` counts stream slots already consumed."""

    def __init__(self, model: "Transformer", batch_size: int, max_len: int,
                 dtype: torch.dtype | None = None, device: torch.device | None = None):
        cfg = model.config
        p = next(model.parameters())
        dtype, device = dtype or p.dtype, device or p.device
        self.max_len, self.length, self.layers = max_len, 0, []
        for layer in model.layer_schedule():
            ring = cfg.is_sliding(layer) and cfg.sliding_window < max_len
            size = cfg.sliding_window if ring else max_len
            if cfg.attention == "mla":  # the compressed latent and the shared rotary key
                k_shape = (batch_size, size, cfg.kv_lora_rank)
                v_shape = (batch_size, size, cfg.qk_rope_head_dim)
            else:
                k_shape = (batch_size, cfg.kv_heads(layer), size, cfg.dim_head)
                v_shape = k_shape
            self.layers.append(LayerCache(k_shape, v_shape, size, ring, dtype, device))

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    def select_rows(self, index: Tensor) -> "KVCache":
        """A new cache holding batch rows `index` of this one (e.g. one copy per answer choice)."""
        new = copy.copy(self)
        new.layers = []
        for layer in self.layers:
            row = copy.copy(layer)
            row.k = layer.k.index_select(0, index)
            row.v = layer.v.index_select(0, index)
            row.slot_pos = layer.slot_pos.clone()
            new.layers.append(row)
        return new


def _store(cache: LayerCache, k: Tensor, v: Tensor, slots: Tensor, end: int,
           seq_dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """Write new k/v at stream `slots` [T] (ending before `end`); return (keys, values, key slots)."""
    T = slots.shape[0]
    if not cache.ring:
        cache.k.narrow(seq_dim, end - T, T).copy_(k)
        cache.v.narrow(seq_dim, end - T, T).copy_(v)
        cache.slot_pos[end - T:end] = slots
        return cache.k.narrow(seq_dim, 0, end), cache.v.narrow(seq_dim, 0, end), cache.slot_pos[:end]
    # ring: attend over (old ring contents, new tokens), then keep the last `size` slots
    keys = torch.cat([cache.k, k], dim=seq_dim)
    values = torch.cat([cache.v, v], dim=seq_dim)
    key_slots = torch.cat([cache.slot_pos, slots])
    keep = min(T, cache.size)
    idx = slots[-keep:] % cache.size
    cache.k.index_copy_(seq_dim, idx, k.narrow(seq_dim, T - keep, keep))
    cache.v.index_copy_(seq_dim, idx, v.narrow(seq_dim, T - keep, keep))
    cache.slot_pos[idx] = slots[-keep:]
    return keys, values, key_slots


# ---------------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------------


@dataclass
class AttentionInputs:
    """What every layer needs to attend, computed once per forward."""

    positions: Tensor  # [B, T] rotary / ALiBi positions of the new tokens
    slots: Tensor  # [T] stream slots of the new tokens
    end: int  # one past the last new slot (python int: no tensor reads inside layers)
    key_mask: Tensor | None  # [B, S_total] 1 = real token, over all stream slots; None = no padding
    rope: dict[int, tuple[Tensor, Tensor]]  # rotary dim -> (cos, sin) for the new tokens
    key_positions: Tensor | None  # [B, S_total] positions of every slot (ALiBi)
    biases: dict[tuple, Tensor] = field(default_factory=dict)  # masks shared by layers of one forward


def _attention_bias(cfg: ModelConfig, layer: int, inp: AttentionInputs, key_slots: Tensor,
                    alibi: Tensor | None, T: int) -> Tensor:
    """Float bias [B|1, H|1, T, S] (0 or -inf, plus ALiBi), built once per forward and layer kind.

    Every layer of one forward with the same window and head count sees the same key slots (full
    layers: the cache prefix; sliding layers: identical rings), so the bias is shared."""
    window = cfg.sliding_window if cfg.is_sliding(layer) else None
    key = (window, None if alibi is None else alibi.shape[0], key_slots.shape[0])
    if key not in inp.biases:
        inp.biases[key] = _build_bias(inp, key_slots, window, alibi)
    return inp.biases[key]


def _build_bias(inp: AttentionInputs, key_slots: Tensor, window: int | None, alibi: Tensor | None) -> Tensor:
    q_slots = inp.slots  # [T]
    valid = key_slots >= 0
    allowed = (key_slots[None, :] <= q_slots[:, None]) & valid[None, :]  # [T, S]
    if window is not None:
        allowed &= (q_slots[:, None] - key_slots[None, :]) < window
    allowed = allowed[None, None]  # [1, 1, T, S]
    if inp.key_mask is not None:
        km = inp.key_mask[:, key_slots.clamp(min=0)].bool()  # [B, S]
        allowed = allowed & km[:, None, None, :]
        # a padding query sees nothing; let it see itself so softmax stays finite
        allowed = allowed | (key_slots[None, None, None, :] == q_slots[None, None, :, None])
    bias = torch.zeros(allowed.shape, dtype=torch.float32, device=key_slots.device)
    bias = bias.masked_fill(~allowed, float("-inf"))
    if alibi is not None:
        kpos = inp.key_positions[:, key_slots.clamp(min=0)].float()  # [B, S]
        bias = bias + alibi[None, :, None, None] * kpos[:, None, None, :]
    return bias


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float,
           softcap: float | None, causal: bool) -> Tensor:
    """Scaled dot-product attention over q [B,H,T,D], k/v [B,K,S,D]; GQA by repeating kv heads.

    Repeating kv heads costs a copy, but on a quiet machine it matches SDPA's `enable_gqa` at
    prefill (benchmarks/bench_kernels.py: 329 vs 320 us, 128 tokens), and once, with the two cores
    shared, `enable_gqa` took 8-15 ms where repeat + SDPA took 13 us. One query on the CPU (a decode
    step) takes `_attend_one_query`.
    """
    H, K = q.shape[1], k.shape[1]
    if q.shape[2] == 1 and q.device.type == "cpu":
        return _attend_one_query(q, k, v, bias, scale, softcap)
    if H != K:
        k, v = k.repeat_interleave(H // K, dim=1), v.repeat_interleave(H // K, dim=1)
    if softcap is None:
        mask = None if bias is None else bias.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=scale)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # eager path: Gemma-2 logit soft-capping
    scores = torch.tanh(scores / softcap) * softcap
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    elif causal:
        T, S = q.shape[-2], k.shape[-2]
        scores = scores.masked_fill(torch.ones(T, S, dtype=torch.bool, device=q.device).triu(S - T + 1), float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return torch.matmul(probs, v)


def _attend_one_query(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float,
                      softcap: float | None) -> Tensor:
    """Decode step on CPU: query heads grouped by their kv head (the cache is never repeated),
    scores in fp32. benchmarks/bench_kernels.py, one bf16 query, 9 q / 3 kv heads: 30 vs 75 us
    (128 keys), 51 vs 251 us (512), 88 vs 1071 us (1024) against repeat + SDPA."""
    B, H, _, D = q.shape
    K, S = k.shape[1], k.shape[2]
    scores = torch.matmul(q.reshape(B, K, H // K, D).float(), k.float().transpose(-1, -2)) * scale  # [B,K,G,S]
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if bias is not None:  # [B|1, 1|H, 1, S]: the singleton query dim broadcasts over the group
        scores = scores + (bias if bias.shape[1] == 1 else bias.reshape(bias.shape[0], K, H // K, S)).float()
    out = torch.matmul(torch.softmax(scores, dim=-1), v.float())  # [B, K, G, Dv]
    return out.reshape(B, H, 1, v.shape[-1]).to(q.dtype)


class Attention(nn.Module):
    """Multi-head attention with any number of kv heads (MHA / GQA / MQA)."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.n_head, self.n_kv, self.hd = cfg.heads(layer), cfg.kv_heads(layer), cfg.dim_head
        C = cfg.d_model
        self.q_proj = nn.Linear(C, self.n_head * self.hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(C, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(C, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_head * self.hd, C, bias=cfg.attn_out_bias)
        self.qkv: nn.Module | None = None  # q/k/v as one matmul once fused (`fuse`)
        if cfg.qk_norm == "head":
            self.q_norm, self.k_norm = Norm(cfg, self.hd), Norm(cfg, self.hd)
        elif cfg.qk_norm == "full":
            self.q_norm, self.k_norm = Norm(cfg, self.n_head * self.hd), Norm(cfg, self.n_kv * self.hd)
        self.scale = cfg.attn_scale if cfg.attn_scale is not None else self.hd**-0.5
        self.use_alibi = cfg.positions == "alibi"
        self._alibi: Tensor | None = None

    def fuse(self) -> None:
        """Compute q, k and v in one matmul (`qkv`, outputs side by side): the same function, one wider matmul."""
        if self.qkv is None:
            self.qkv = fused_linear([self.q_proj, self.k_proj, self.v_proj])
            self.q_proj = self.k_proj = self.v_proj = None

    def unfuse(self) -> None:
        """Back to separate float q/k/v projections (the saved and Hugging Face layout)."""
        if self.qkv is not None:
            self.q_proj, self.k_proj, self.v_proj = split_linear(self.qkv, [self.cfg.qkv_bias] * 3)
            self.qkv = None

    def alibi(self, device: torch.device) -> Tensor | None:
        if not self.use_alibi:
            return None
        if self._alibi is None or self._alibi.device != device:
            self._alibi = alibi_slopes(self.n_head).to(device)
        return self._alibi

    def forward(self, x: Tensor, inp: AttentionInputs, cache: LayerCache | None) -> Tensor:
        B, T, _ = x.shape
        cfg = self.cfg
        if self.qkv is not None:
            qkv = self.qkv(x)
            if cfg.positions == "rope" and cfg.clip_qkv is None and cfg.qk_norm == "none":
                return self._forward_rope_fused(qkv, inp, cache)
            q, k, v = qkv.split(self.qkv.splits, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if cfg.clip_qkv is not None:
            q, k, v = (t.clamp(-cfg.clip_qkv, cfg.clip_qkv) for t in (q, k, v))
        if cfg.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, self.n_head, self.hd).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_kv, self.hd).transpose(1, 2)  # (B, K, T, D)
        v = v.view(B, T, self.n_kv, self.hd).transpose(1, 2)
        if cfg.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        if cfg.positions == "rope":
            cos, sin = inp.rope[cfg.rotary_dim]
            q = apply_rotary(q, cos, sin, cfg.rope_interleaved)
            k = apply_rotary(k, cos, sin, cfg.rope_interleaved)
        return self._cache_attend_project(q, k, v, inp, cache)

    def _forward_rope_fused(self, qkv: Tensor, inp: AttentionInputs, cache: LayerCache | None) -> Tensor:
        """`forward` after a fused q/k/v matmul with plain RoPE: q and k heads rotated in one pass (the same
        elementwise ops on the same values, half the op launches of a decode step's rotary)."""
        B, T, _ = qkv.shape
        H, K, D = self.n_head, self.n_kv, self.hd
        qk = qkv[..., :(H + K) * D].view(B, T, H + K, D).transpose(1, 2)  # (B, H + K, T, D)
        cos, sin = inp.rope[self.cfg.rotary_dim]
        q, k = apply_rotary(qk, cos, sin, self.cfg.rope_interleaved).split([H, K], dim=1)
        v = qkv[..., (H + K) * D:].view(B, T, K, D).transpose(1, 2)
        return self._cache_attend_project(q, k, v, inp, cache)

    def _cache_attend_project(self, q: Tensor, k: Tensor, v: Tensor, inp: AttentionInputs,
                              cache: LayerCache | None) -> Tensor:
        """Store the new k/v, attend over the cached and new keys, project the heads back to the model width."""
        B, _, T, _ = q.shape
        if cache is not None:
            k, v, key_slots = _store(cache, k, v, inp.slots, inp.end, seq_dim=2)
        else:
            key_slots = inp.slots
        y = self._attend(q, k, v, inp, key_slots)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.hd))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, inp: AttentionInputs, key_slots: Tensor) -> Tensor:
        cfg, T = self.cfg, q.shape[2]
        plain = inp.key_mask is None and not self.use_alibi and not (
            cfg.is_sliding(self.layer) and inp.end > cfg.sliding_window)
        contiguous = key_slots.shape[0] == inp.end  # keys are slots 0..end, in order
        if plain and contiguous:
            # causal over a full prefix: no mask needed for one new token, is_causal otherwise
            causal = T > 1
            if causal and key_slots.shape[0] != T:  # chunk after a cached prefix
                bias = _attention_bias(cfg, self.layer, inp, key_slots, None, T)
                return attend(q, k, v, bias, self.scale, cfg.attn_logit_softcap, False)
            return attend(q, k, v, None, self.scale, cfg.attn_logit_softcap, causal)
        bias = _attention_bias(cfg, self.layer, inp, key_slots, self.alibi(q.device), T)
        return attend(q, k, v, bias, self.scale, cfg.attn_logit_softcap, False)


class MLAttention(Attention):
    """Multi-head latent attention (DeepSeek-V2, MiniCPM3): the cache holds a compressed latent."""

    def __init__(self, cfg: ModelConfig, layer: int):
        nn.Module.__init__(self)
        self.cfg, self.layer = cfg, layer
        self.n_head = cfg.heads(layer)
        C, H = cfg.d_model, self.n_head
        self.nope, self.rope_dim, self.vd = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        qk_dim = self.nope + self.rope_dim
        if cfg.q_lora_rank:
            self.q_a_proj = nn.Linear(C, cfg.q_lora_rank, bias=cfg.qkv_bias)
            self.q_a_norm = Norm(cfg, cfg.q_lora_rank)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, H * qk_dim, bias=False)
        else:
            self.q_proj = nn.Linear(C, H * qk_dim, bias=False)
        self.kv_a_proj = nn.Linear(C, cfg.kv_lora_rank + self.rope_dim, bias=cfg.qkv_bias)
        self.kv_a_norm = Norm(cfg, cfg.kv_lora_rank)
        self.kv_b_proj = nn.Linear(cfg.kv_lora_rank, H * (self.nope + self.vd), bias=False)
        self.o_proj = nn.Linear(H * self.vd, C, bias=cfg.attn_out_bias)
        self.scale = cfg.attn_scale if cfg.attn_scale is not None else qk_dim**-0.5
        self.use_alibi, self._alibi = False, None

    def fuse(self) -> None:
        """Nothing to fuse: MLA's projections read different inputs (x, the latent, the low-rank query)."""

    def unfuse(self) -> None:
        pass

    def forward(self, x: Tensor, inp: AttentionInputs, cache: LayerCache | None) -> Tensor:
        B, T, _ = x.shape
        H, cfg = self.n_head, self.cfg
        q = self.q_b_proj(self.q_a_norm(self.q_a_proj(x))) if cfg.q_lora_rank else self.q_proj(x)
        q = q.view(B, T, H, self.nope + self.rope_dim).transpose(1, 2)
        q_nope, q_pe = q.split([self.nope, self.rope_dim], dim=-1)
        latent, k_pe = self.kv_a_proj(x).split([cfg.kv_lora_rank, self.rope_dim], dim=-1)
        latent = self.kv_a_norm(latent)  # (B, T, R)
        cos, sin = inp.rope[self.rope_dim]
        q_pe = apply_rotary(q_pe, cos, sin, cfg.rope_interleaved)
        k_pe = apply_rotary(k_pe.unsqueeze(1), cos, sin, cfg.rope_interleaved).squeeze(1)  # (B, T, R_pe)
        if cache is not None:
            latent, k_pe, key_slots = _store(cache, latent, k_pe, inp.slots, inp.end, seq_dim=1)
        else:
            key_slots = inp.slots
        S = latent.shape[1]
        kv = self.kv_b_proj(latent).view(B, S, H, self.nope + self.vd).transpose(1, 2)
        k_nope, v = kv.split([self.nope, self.vd], dim=-1)
        k = torch.cat([k_nope, k_pe.unsqueeze(1).expand(B, H, S, self.rope_dim)], dim=-1)
        q = torch.cat([q_nope, q_pe], dim=-1)
        y = self._attend(q, k, v, inp, key_slots)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * self.vd))


# ---------------------------------------------------------------------------------------------
# feed-forward: standard, gated, mixture of experts
# ---------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """standard: down(act(up(x))); gated: down(act(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, width: int):
        super().__init__()
        C, bias = cfg.d_model, cfg.mlp_bias
        self.gated, self.has_bias = cfg.ffn_type == "gated", bias
        if self.gated:
            self.gate_proj = nn.Linear(C, width, bias=bias)
        self.up_proj = nn.Linear(C, width, bias=bias)
        self.down_proj = nn.Linear(width, C, bias=bias)
        self.act = ACTIVATION_FNS[cfg.activation]
        self.gate_up: nn.Module | None = None  # gate/up as one matmul once fused (`fuse`)

    def fuse(self) -> None:
        """A gated FFN computes gate and up in one matmul (`gate_up`); a standard FFN has nothing to fuse."""
        if self.gated and self.gate_up is None:
            self.gate_up = fused_linear([self.gate_proj, self.up_proj])
            self.gate_proj = self.up_proj = None

    def unfuse(self) -> None:
        if self.gate_up is not None:
            self.gate_proj, self.up_proj = split_linear(self.gate_up, [self.has_bias] * 2)
            self.gate_up = None

    def forward(self, x: Tensor) -> Tensor:
        if self.gate_up is not None:
            gate, up = self.gate_up(x).split(self.gate_up.splits, dim=-1)
            return self.down_proj(self._times(self.act(gate), up))
        if not self.gated:
            return self.down_proj(self.act(self.up_proj(x)))
        h = self.act(self.gate_proj(x))  # gate's own output is freed before up's exists
        return self.down_proj(self._times(h, self.up_proj(x)))

    @staticmethod
    def _times(h: Tensor, up: Tensor) -> Tensor:
        """act(gate) * up; without autograd in place (the same values, one [tokens, width] buffer less)."""
        return h * up if torch.is_grad_enabled() or h.dtype != up.dtype else h.mul_(up)


def _normal_(t: Tensor, std: float = 1.0) -> None:
    """nn.init.normal_, skipped on the meta device, where loaders build placeholders to be replaced
    (torch's meta normal_ is a Python reference that imports its compiler: ~70 MB of RSS for nothing)."""
    if t.device.type != "meta":
        nn.init.normal_(t, std=std)


def _embedding(num: int, dim: int) -> nn.Embedding:
    """nn.Embedding(num, dim) drawing the same random numbers as torch's (its reset_parameters is one
    normal_), except on the meta device (`_normal_`)."""
    emb = nn.Embedding(num, dim, _weight=torch.empty(num, dim))
    _normal_(emb.weight)
    return emb


def _tied_head(weight: nn.Parameter, bias: bool) -> nn.Linear:
    """An LM head sharing the embedding matrix `weight`, without a matrix of its own even for a moment.

    It draws the same random numbers as `nn.Linear(dim, vocab)` followed by tying (its initialisation
    runs on the shared matrix, which `_init_weights` draws anew), so seeded models do not change."""
    vocab, dim = weight.shape
    head = nn.Linear(dim, vocab, bias=False, device="meta")
    head.weight = weight
    if bias:
        head.bias = nn.Parameter(torch.empty(vocab, dtype=weight.dtype, device=weight.device))
    head.reset_parameters()
    return head


class Experts(nn.Module):
    """Routed experts stored as stacked tensors: gate_up [E, 2I, C], down [E, C, I].

    For other kernels (weight-only integers) the experts hold one layer per expert and matrix
    instead (`gate_up[e]`, `down[e]`; see `as_linears` and `use_layers`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        E, I, C = cfg.n_experts, cfg.expert_dim, cfg.d_model
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * I, C))
        self.down_proj = nn.Parameter(torch.empty(E, C, I))
        _normal_(self.gate_up_proj, std=0.02)
        _normal_(self.down_proj, std=0.02)
        self.act = ACTIVATION_FNS[cfg.activation]
        self.gate_up: nn.ModuleList | None = None  # per-expert layers, once `use_layers` swapped them in
        self.down: nn.ModuleList | None = None

    def as_linears(self) -> dict[str, nn.Linear]:
        """Each expert's two matrices as nn.Linear sharing the stacked storage: {'gate_up.3': ..., 'down.3': ...}."""
        out = {}
        for name, stacked in (("gate_up", self.gate_up_proj), ("down", self.down_proj)):
            for e in range(stacked.shape[0]):
                lin = nn.Linear(stacked.shape[2], stacked.shape[1], bias=False, device="meta")
                lin.weight = nn.Parameter(stacked[e].detach(), requires_grad=False)
                out[f"{name}.{e}"] = lin
        return out

    def use_layers(self, layers: dict[str, nn.Module]) -> None:
        """Hold `layers` (keys as `as_linears` names them) instead of the stacked tensors."""
        E = self.gate_up_proj.shape[0]
        self.gate_up = nn.ModuleList(layers[f"gate_up.{e}"] for e in range(E))
        self.down = nn.ModuleList(layers[f"down.{e}"] for e in range(E))
        self.gate_up_proj = self.down_proj = None

    def forward(self, x: Tensor, top_idx: Tensor, top_w: Tensor) -> Tensor:
        """x [N, C]; top_idx / top_w [N, k] -> weighted sum of the chosen experts' outputs."""
        out = torch.zeros_like(x)
        for e in top_idx.unique().tolist():
            token, slot = torch.where(top_idx == e)
            if self.gate_up is None:
                gate, up = F.linear(x[token], self.gate_up_proj[e]).chunk(2, dim=-1)
                y = F.linear(self.act(gate) * up, self.down_proj[e])
            else:
                gate, up = self.gate_up[e](x[token]).chunk(2, dim=-1)
                y = self.down[e](self.act(gate) * up)
            out.index_add_(0, token, (y * top_w[token, slot, None]).to(out.dtype))
        return out


class MoE(nn.Module):
    """Top-k routed experts plus optional always-on shared experts (Qwen2-MoE, DeepSeek-V2)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.router = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)
        self.experts = Experts(cfg)
        if cfg.n_shared_experts:
            width = cfg.shared_expert_intermediate_size or cfg.n_shared_experts * cfg.expert_dim
            self.shared = MLP(cfg.replace(ffn_type="gated", mlp_bias=False), width)
            self.shared_gate = nn.Linear(cfg.d_model, 1, bias=False) if cfg.shared_expert_gate else None

    def forward(self, x: Tensor) -> Tensor:
        shape, cfg = x.shape, self.cfg
        x = x.reshape(-1, shape[-1])
        probs = torch.softmax(self.router(x).float(), dim=-1)
        top_w, top_idx = probs.topk(cfg.top_k, dim=-1)
        if cfg.router_norm_topk:
            top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        top_w = (top_w * cfg.routed_scaling).to(x.dtype)
        y = self.experts(x, top_idx, top_w)
        if cfg.n_shared_experts:
            s = self.shared(x)
            if self.shared_gate is not None:
                s = torch.sigmoid(self.shared_gate(x)) * s
            y = y + s
        return y.reshape(shape)


# ---------------------------------------------------------------------------------------------
# the block
# ---------------------------------------------------------------------------------------------


class Block(nn.Module):
    """Attention + FFN with the residual layout the config names."""

    def __init__(self, cfg: ModelConfig, layer: int, has_mlp: bool = True):
        super().__init__()
        self.cfg = cfg
        self.attn = (MLAttention if cfg.attention == "mla" else Attention)(cfg, layer)
        self.attn_norm = Norm(cfg, cfg.d_model)
        if not (cfg.parallel_residual and cfg.parallel_shared_norm):
            self.mlp_norm = Norm(cfg, cfg.d_model)
        if cfg.norm_placement == "sandwich":
            self.post_attn_norm, self.post_mlp_norm = Norm(cfg, cfg.d_model), Norm(cfg, cfg.d_model)
        if has_mlp:
            self.mlp = MoE(cfg) if cfg.is_moe(layer) else MLP(cfg, cfg.ffn_dim(layer))

    def forward(self, x: Tensor, inp: AttentionInputs, cache: LayerCache | None,
                shared_mlp: nn.Module | None = None) -> Tensor:
        if self.cfg.parallel_residual:
            mlp = shared_mlp if shared_mlp is not None else self.mlp
            h = self.attn_norm(x)
            m_in = h if self.cfg.parallel_shared_norm else self.mlp_norm(x)
            return x + self.attn(h, inp, cache) + mlp(m_in)
        return self.feed_forward(self.attend(x, inp, cache), shared_mlp)

    def attend(self, x: Tensor, inp: AttentionInputs, cache: LayerCache | None, heads: Tensor | None = None) -> Tensor:
        """The attention half of a sequential-residual block: the residual stream entering the FFN half.
        `heads`: o_proj's input, when the caller already has it (the layer walk): only o_proj runs."""
        s, place = self.cfg.residual_scale, self.cfg.norm_placement
        attn = self.attn if heads is None else lambda *_: self.attn.o_proj(heads)  # attn ends in o_proj
        if place == "pre":
            if s == 1.0:  # the common case: one op less per branch, the same values
                return x + attn(self.attn_norm(x), inp, cache)
            return x + s * attn(self.attn_norm(x), inp, cache)
        if place == "post":
            return self.attn_norm(x + attn(x, inp, cache))
        if place == "sandwich":
            return x + self.post_attn_norm(attn(self.attn_norm(x), inp, cache))
        return x + self.attn_norm(attn(x, inp, cache))  # post_sublayer (OLMo-2): norm the branch output

    def feed_forward(self, x: Tensor, shared_mlp: nn.Module | None = None) -> Tensor:
        """The FFN half of a sequential-residual block, on `attend`'s output: the block's output."""
        mlp = shared_mlp if shared_mlp is not None else self.mlp
        s, place = self.cfg.residual_scale, self.cfg.norm_placement
        if place == "pre":
            if s == 1.0:
                return x + mlp(self.mlp_norm(x))
            return x + s * mlp(self.mlp_norm(x))
        if place == "post":
            return self.mlp_norm(x + mlp(x))
        if place == "sandwich":
            return x + self.post_mlp_norm(mlp(self.mlp_norm(x)))
        return x + self.mlp_norm(mlp(x))


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transforms:
    """The inference transforms a model carries, declared by the model itself.

    fused: q/k/v and gate/up computed as one matmul each (exact; saves in pocketlm's format);
    packed: oneDNN-prepacked or otherwise machine-specific float weights (never saved);
    quantization: the recipe of its weight-only integer layers (saves in pocketlm's format);
    kernels: the per-device kernel choice, (shape key, path) pairs (runtime.kernel_choice; never saved);
    decode: the batch-1 decode step chosen for this device, eager | native (model/native_decode.py)."""

    fused: bool = False
    packed: bool = False
    quantization: QuantRecipe | None = None
    kernels: tuple[tuple[str, str], ...] = ()
    decode: str = "eager"

    @property
    def float_layers(self) -> tuple[str, ...]:
        return self.quantization.float_layers if self.quantization else ()

    def to_dict(self) -> dict:
        return {"fused": self.fused, "quantization": self.quantization and self.quantization.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "Transforms":
        q = d.get("quantization")
        return cls(fused=bool(d.get("fused")), quantization=QuantRecipe.from_dict(q) if q else None)


class UnsavableModelError(ValueError):
    """A model whose layout a checkpoint format cannot hold; the message says what to save instead."""


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.transforms = Transforms()  # what fuse / pack_for_cpu / quantization applied
        C = cfg.d_model
        emb_dim = cfg.embed_proj_dim or C
        self.embed = _embedding(cfg.vocab_size, emb_dim)
        self.project_in = nn.Linear(emb_dim, C, bias=False) if cfg.embed_proj_dim else None
        self.pos_embed = (_embedding(cfg.max_seq_len + cfg.learned_pos_offset, C)
                          if cfg.positions == "learned" else None)
        self.embed_norm = Norm(cfg, C) if cfg.embed_norm else None
        self.shared_mlp = MLP(cfg, cfg.ffn_dim(0)) if cfg.shared_ffn else None
        self.blocks = nn.ModuleList(Block(cfg, i, has_mlp=not cfg.shared_ffn) for i in range(cfg.n_stored_layers))
        self.final_norm = Norm(cfg, C) if cfg.final_norm else None
        self.project_out = nn.Linear(C, emb_dim, bias=False) if cfg.embed_proj_dim else None
        self.lm_head = (_tied_head(self.embed.weight, cfg.lm_head_bias) if cfg.tie_embeddings
                        else nn.Linear(emb_dim, cfg.vocab_size, bias=cfg.lm_head_bias))
        self.rotary = nn.ModuleDict()
        if cfg.positions == "rope":
            dim = cfg.rotary_dim
            self.rotary[str(dim)] = Rotary(cfg, dim)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            _normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def layer_schedule(self) -> list[int]:
        """Stored-block index of each application (block-wise sharing repeats a block in a row)."""
        r = self.config.block_repeat
        return [i // r for i in range(self.config.n_layer)]

    def new_cache(self, batch_size: int, max_len: int, dtype: torch.dtype | None = None) -> KVCache:
        return KVCache(self, batch_size, max_len, dtype=dtype)

    # -----------------------------------------------------------------------------------------
    def _attention_inputs(self, input_ids: Tensor, attention_mask: Tensor | None, cache: KVCache | None,
                          position_ids: Tensor | None, dtype: torch.dtype) -> AttentionInputs:
        B, T = input_ids.shape
        start = cache.length if cache is not None else 0
        device = input_ids.device
        if cache is not None and start + T > cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} tokens; {start} cached + {T} new do not fit")
        slots = torch.arange(start, start + T, device=device)
        key_mask = None
        if attention_mask is not None:
            if attention_mask.shape[-1] != start + T:
                raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} tokens; expected "
                                 f"{start + T} (cached + new)")
            if not bool(attention_mask.all()):
                key_mask = attention_mask
        key_positions = None
        if position_ids is None:
            if key_mask is not None:
                all_pos = (key_mask.long().cumsum(-1) - 1).clamp(min=0)
                position_ids, key_positions = all_pos[:, start:], all_pos
            else:
                position_ids = slots[None].expand(B, T)
        if self.config.positions == "alibi" and key_positions is None:
            key_positions = torch.arange(start + T, device=device)[None].expand(B, -1)
        rope = {}
        # positions never exceed slots, so start + T bounds the table size without reading tensors
        # (no graph break under torch.compile); LongRoPE alone needs the true maximum
        max_pos = start + T - 1
        for dim, rotary in self.rotary.items():
            if rotary.has_long:
                max_pos = int(position_ids.max())
            rope[int(dim)] = rotary(position_ids, dtype, max_pos)
        return AttentionInputs(position_ids, slots, start + T, key_mask, rope, key_positions)

    def embed_tokens(self, input_ids: Tensor, positions: Tensor) -> Tensor:
        cfg = self.config
        if not torch.compiler.is_compiling() and input_ids.numel() and int(input_ids.max()) >= cfg.vocab_size:
            raise ValueError(f"token id {int(input_ids.max())} is past the model's vocabulary ({cfg.vocab_size} "
                             "tokens): the tokenizer or token shards do not belong to this model")
        x = self.embed(input_ids)
        if cfg.embed_scale != 1.0:
            scale = torch.tensor(cfg.embed_scale, dtype=x.dtype) if cfg.embed_scale_round else cfg.embed_scale
            x = x * scale
        if self.project_in is not None:
            x = self.project_in(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions + cfg.learned_pos_offset)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return x

    def forward_hidden(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                       cache: KVCache | None = None, position_ids: Tensor | None = None,
                       collect_layers: bool = False) -> tuple[Tensor, list[Tensor]]:
        """Final hidden states [B, T, C] (after the final norm) and, if asked, each block's output."""
        p = self.embed.weight
        inp = self._attention_inputs(input_ids, attention_mask, cache, position_ids, p.dtype)
        x = self.embed_tokens(input_ids, inp.positions)
        layers: list[Tensor] = []
        for app, layer in enumerate(self.layer_schedule()):
            layer_cache = cache.layers[app] if cache is not None else None
            x = self.blocks[layer](x, inp, layer_cache, self.shared_mlp)
            if collect_layers:
                layers.append(x)
        if cache is not None:
            cache.length += input_ids.shape[1]
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, layers

    def logits(self, h: Tensor) -> Tensor:
        cfg = self.config
        if cfg.logit_scale != 1.0:
            h = h * cfg.logit_scale
        if self.project_out is not None:
            h = self.project_out(h)
        logits = self.lm_head(h)
        if cfg.final_logit_softcap is not None:
            logits = torch.tanh(logits / cfg.final_logit_softcap) * cfg.final_logit_softcap
        return logits

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, cache: KVCache | None = None,
                position_ids: Tensor | None = None, last_only: bool = False) -> Tensor:
        """Logits [B, T, V] (or [B, 1, V] with last_only). attention_mask covers cache + new tokens."""
        h, _ = self.forward_hidden(input_ids, attention_mask, cache, position_ids)
        return self.logits(h[:, -1:] if last_only else h)

    # -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None, max_new_tokens: int = 32,
                 temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                 stop_tokens: tuple[int, ...] | list[int] = (), pad_token_id: int = 0,
                 seed: int | None = None, use_cache: bool = True, draft: "Transformer | None" = None,
                 k: int = 4, compile: bool = False, native: bool | None = None) -> Tensor:
        """Greedy (temperature 0) or sampled continuation of (left-padded) prompts [B, T].

        Returns prompt + new tokens [B, T + n]; a row that emitted a stop token is padded after it.
        draft: a small model of the same vocabulary proposing `k` tokens per target forward
        (speculative decoding, `model/speculative.py`: the same greedy output, the same sampling
        distribution; one unpadded prompt).
        compile: batch-1 decode steps run one torch.compile'd flat step (`model/flat_decode.py`; the
        first call compiles, 30-140 s for 30 layers; later calls and lengths up to the same power of
        two reuse it). The prompt still runs eagerly.
        native: batch-1 decode steps run pocketlm's native step, one C call per token
        (`model/native_decode.py`); None: the step `transforms.decode` records (the per-device choice).
        """
        if draft is not None:
            from pocketlm.model.speculative import SpeculativeError, speculative_generate

            if attention_mask is not None and not bool(attention_mask.all()):
                raise SpeculativeError("speculative decoding takes one unpadded prompt; drop the padding")
            return speculative_generate(self, draft, input_ids, max_new_tokens, k, temperature, top_k, top_p,
                                        stop_tokens, seed)[0]
        B, T = input_ids.shape
        if T + max_new_tokens > self.config.max_seq_len and self.config.positions == "learned":
            raise ValueError(f"prompt ({T}) + new tokens ({max_new_tokens}) exceed the model's "
                             f"{self.config.max_seq_len} learned positions")
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=input_ids.device).manual_seed(seed)
        run = self
        if compile and use_cache:
            from pocketlm.model.flat_decode import flat_decoder

            run = flat_decoder(self, compile=True)
        elif use_cache and B == 1 and (native or (native is None and self.transforms.decode == "native")):
            from pocketlm.model.native_decode import native_decoder

            run = native_decoder(self)
        cache = run.new_cache(B, T + max_new_tokens) if use_cache else None
        tokens = input_ids
        logits = run(input_ids, mask, cache=cache, last_only=True)[:, -1]
        done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        stops = torch.tensor(list(stop_tokens), dtype=torch.long, device=input_ids.device)
        for step in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, top_p, generator)
            nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            mask = torch.cat([mask, (~done).long()[:, None].to(mask.dtype)], dim=1)
            if stops.numel():
                done = done | torch.isin(nxt, stops)
            if step == max_new_tokens - 1 or bool(done.all()):
                break
            if cache is not None:  # finished rows feed a valid id; their outputs are never used
                feed = nxt.clamp(0, self.config.vocab_size - 1)[:, None]
                logits = run(feed, mask, cache=cache, last_only=True)[:, -1]
            else:
                logits = self(tokens.clamp(0, self.config.vocab_size - 1), mask, last_only=True)[:, -1]
        return tokens


    # -----------------------------------------------------------------------------------------
    # layouts: fused projections, other linear kernels, what a checkpoint format can hold
    @property
    def packed(self) -> bool:
        return self.transforms.packed

    def fuse(self) -> "Transformer":
        """q/k/v of standard attention and gate/up of gated FFNs as one matmul each (in place, exact)."""
        for module in [m for m in self.modules() if isinstance(m, (Attention, MLP))]:  # not the linears: each
            module.fuse()  # unfused matrix is freed as soon as its fused one exists
        self.transforms = dataclasses.replace(self.transforms, fused=True)
        return self

    def unfuse(self) -> "Transformer":
        """Undo `fuse` (float layers only): separate q/k/v and gate/up again."""
        if self.transforms.packed or self.transforms.quantization:
            raise UnsavableModelError("only a float model unfuses; its kernels hold the fused matrices")
        for module in [m for m in self.modules() if isinstance(m, (Attention, MLP))]:
            module.unfuse()
        self.transforms = dataclasses.replace(self.transforms, fused=False)
        return self

    def named_linears(self, experts: bool = False) -> dict[str, nn.Module]:
        """Every nn.Linear by name; with `experts`, each routed expert's matrices too (as `swap_linears` names them)."""
        out = {name: m for name, m in self.named_modules() if isinstance(m, nn.Linear)}
        if experts:
            for name, module in self.named_modules():
                if isinstance(module, Experts) and module.gate_up is None:
                    out.update({f"{name}.{k}": lin for k, lin in module.as_linears().items()})
        return out

    def swap_linears(self, convert: Callable[[str, nn.Module], nn.Module], experts: bool = False) -> None:
        """Set each nn.Linear to `convert(name, linear)` (in place); with `experts`, also each routed
        expert's matrices (named `<moe>.experts.gate_up.<e>` / `.down.<e>`, as `Experts.as_linears`)."""
        replace_linears(self, convert)
        if experts:
            for name, module in [(n, m) for n, m in self.named_modules() if isinstance(m, Experts)]:
                if module.gate_up is None:
                    module.use_layers({k: convert(f"{name}.{k}", lin) for k, lin in module.as_linears().items()})

    def adopt_layout(self, transforms: Transforms) -> "Transformer":
        """Give this freshly built model the structure `transforms` describe, with placeholder weights,
        so that a checkpoint saved from such a model loads into it (in place; meta device welcome)."""
        if transforms.packed:
            raise UnsavableModelError("a packed layout is never saved; save the model before packing")
        if transforms.fused:
            self.fuse()
        q = transforms.quantization
        if q is not None:
            def placeholder(name: str, linear: nn.Module) -> nn.Module:
                if name in q.float_layers:
                    return linear
                if q.scheme in ("int8", "w8a8"):
                    return (W8A8Linear if q.scheme == "w8a8" else Int8Linear).placeholder(linear, q.torch_compute_dtype)
                return Int4Linear.placeholder(linear, q.group_size, q.torch_compute_dtype)

            self.swap_linears(placeholder, experts=True)
        self.transforms = transforms
        return self

    def check_savable(self, fmt: str) -> None:
        """Raise UnsavableModelError if checkpoint format `fmt` (native | hf | gguf) cannot hold this model."""
        t = self.transforms
        if t.packed:
            raise UnsavableModelError(
                "this model is packed for CPU inference (pack_for_cpu): oneDNN's layout is specific to this "
                "machine and is never saved; save the model before packing (and pack after loading).")
        if fmt == "native":
            return
        if t.quantization:
            raise UnsavableModelError(
                f"this model holds {t.quantization.scheme} weight-only layers, which the {fmt} format does not "
                "hold here: save it with save_native() (pocketlm's format keeps the integers), or export the "
                "float model" + (" (GGUF quantizes on export, e.g. qtype='Q4_0')." if fmt == "gguf" else "."))
        if t.fused:
            raise UnsavableModelError(f"this model's q/k/v and gate/up are fused; call model.unfuse() before "
                                      f"saving it as {fmt} (fusing is exact, unfusing restores the projections).")


def sample_next(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None) -> Tensor:
    """One token per row: argmax at temperature 0, else top-k / nucleus sampling."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = next_token_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def next_token_probs(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None) -> Tensor:
    """The distribution `sample_next` draws from (temperature > 0): softmax(logits / T), top-k, then nucleus."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits.softmax(-1)
