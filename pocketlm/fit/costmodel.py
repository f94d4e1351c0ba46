"""Predict a candidate's cost from its config (`model/costs.py`) and a few measurements on this device.

Features, from the architecture and the stored bits per weight alone:
- weight bytes: non-embedding parameters x bits / 8, plus the vocabulary matrices (the torch runtime keeps
  the embedding in bf16/fp32 and gives a tied LM head its own quantized copy; GGUF quantizes both);
- KV-cache bytes for the measured context (fp32 cache for an fp32 torch model, else 16-bit);
- FLOPs of the prompt (`costs.flops_per_token`).

Calibration on the anchor measurements: decode ms = t0 + (weights + KV read) / BW (a decode step streams
every weight once; least squares over the anchors); prefill ms = prompt FLOPs / F + weights / BW; memory =
weights + KV + R (R the runtime's own buffers, the median residual); disk = weight bytes. Each format
runs its own kernels, so a format that has an anchor is predicted from that anchor, scaled by the
ratio of bytes read (decode) and of FLOPs (prefill), its memory moved by the change in weight and KV
bytes; the line serves the formats without one.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from pocketlm.model import costs

FEATURES = ("weight_bytes", "kv_bytes", "kv_read_bytes", "prefill_flops")


def features(cfg, bits: float, runtime: str, fmt_value: str, context: int, depth: int, n_prompt: int) -> dict:
    counts = costs.param_counts(cfg)
    kv_dtype = 2
    if runtime == "torch" and fmt_value in ("int8", "int4"):  # linears (and the LM head) in integers
        token_matrix = cfg.vocab_size * (cfg.embed_proj_dim or cfg.d_model)
        heads = 1 if cfg.tie_embeddings else 2
        rest = counts["embedding"] - heads * token_matrix  # learned positions, kept in bf16
        weight = (counts["non_embedding"] + token_matrix) * bits / 8 + (token_matrix + rest) * 2
    else:
        weight = counts["total"] * bits / 8
        kv_dtype = 4 if (runtime, fmt_value) == ("torch", "fp32") else 2
    return {"weight_bytes": weight,
            "kv_bytes": costs.kv_cache_bytes(cfg, context, dtype_bytes=kv_dtype),
            "kv_read_bytes": costs.kv_cache_bytes(cfg, depth + 1, dtype_bytes=kv_dtype),
            "prefill_flops": costs.flops_per_token(cfg, n_prompt)["prefill"] * n_prompt}


def _line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares intercept and slope (slope only through the mean when all xs are equal)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0, my / mx if mx else 0.0
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - slope * mx, slope


@dataclass
class CostModel:
    """Fitted constants; `fit` them from (features, measured cost) pairs, then `predict`."""

    decode_t0_ms: float = 0.0
    decode_ms_per_byte: float = 0.0
    prefill_ms_per_flop: float = 0.0
    runtime_bytes: float = 0.0
    anchors: list[str] = field(default_factory=list)
    by_format: dict = field(default_factory=dict)  # format -> (features, measured cost) of its anchor

    @classmethod
    def fit(cls, points: list[tuple[str, dict, dict]], formats: list[str] | None = None) -> "CostModel":
        """`points`: (candidate key, features, measured cost) for each anchor (at least one); `formats`:
        each anchor's format value."""
        if not points:
            raise ValueError("the cost model needs at least one measured anchor")
        read = [f["weight_bytes"] + f["kv_read_bytes"] for _, f, _ in points]
        t0, per_byte = _line(read, [c["decode_ms"] for _, _, c in points])
        if per_byte <= 0:  # noise on a busy machine: fall back to a line through the origin
            t0, per_byte = 0.0, statistics.fmean(c["decode_ms"] / r for (_, _, c), r in zip(points, read))
        # prefill: FLOPs with the weight streaming it also pays (same bandwidth as decode)
        rest = [c["prefill_ms"] - per_byte * f["weight_bytes"] for _, f, c in points]
        flops = [f["prefill_flops"] for _, f, _ in points]
        per_flop = max(statistics.fmean(r / x for r, x in zip(rest, flops)), 0.0)
        runtime = statistics.median(c["memory_bytes"] - f["weight_bytes"] - f["kv_bytes"] for _, f, c in points)
        by_format = {fmt: (f, c) for fmt, (_, f, c) in zip(formats or [], points)}
        return cls(max(t0, 0.0), per_byte, per_flop, max(runtime, 0.0), [k for k, _, _ in points], by_format)

    def predict(self, f: dict, fmt: str | None = None) -> dict:
        if fmt in self.by_format:  # this format's own kernels, measured: scale the anchor
            af, ac = self.by_format[fmt]
            decode_ms = ac["decode_ms"] * (f["weight_bytes"] + f["kv_read_bytes"]) / (af["weight_bytes"] + af["kv_read_bytes"])
            prefill_ms = ac["prefill_ms"] * f["prefill_flops"] / af["prefill_flops"]
        else:
            decode_ms = self.decode_t0_ms + self.decode_ms_per_byte * (f["weight_bytes"] + f["kv_read_bytes"])
            prefill_ms = self.prefill_ms_per_flop * f["prefill_flops"] + self.decode_ms_per_byte * f["weight_bytes"]
        memory = f["weight_bytes"] + f["kv_bytes"] + self.runtime_bytes
        if fmt in self.by_format:  # the anchor's measured memory, moved by what changed
            af, ac = self.by_format[fmt]
            memory = ac["memory_bytes"] + (f["weight_bytes"] - af["weight_bytes"]) + (f["kv_bytes"] - af["kv_bytes"])
        return {"decode_ms": decode_ms, "decode_tok_s": 1e3 / decode_ms if decode_ms > 0 else float("inf"),
                "prefill_ms": prefill_ms, "memory_bytes": memory, "disk_bytes": f["weight_bytes"]}

    def describe(self) -> dict:
        per_byte = self.decode_ms_per_byte
        return {"effective_bandwidth_GBps": (1e-6 / per_byte) if per_byte else None,
                "decode_overhead_ms": self.decode_t0_ms,
                "effective_prefill_GFLOPs": (1e-6 / self.prefill_ms_per_flop) if self.prefill_ms_per_flop else None,
                "runtime_buffers_MB": self.runtime_bytes / 1e6, "anchors": self.anchors}


def relative_error(predicted: dict, measured: dict) -> dict:
    """(predicted - measured) / measured for each cost both have."""
    return {k: (predicted[k] - measured[k]) / measured[k] for k in ("decode_ms", "prefill_ms", "memory_bytes",
                                                                    "disk_bytes")
            if k in predicted and measured.get(k)}
