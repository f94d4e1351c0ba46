"""Insight 2: architecture at equal size — depth, FFN width, vocabulary and parameter sharing each varied
at a constant parameter count; the effect on prefill against decode."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pocketlm.insights.analysis import verdict  # noqa: E402
from pocketlm.insights.bench import (by_depth, by_prompt, match_int, match_params, profile_models,  # noqa: E402
                                     total_params, write_configs)
from pocketlm.insights.record import Record  # noqa: E402
from pocketlm.model.config import ModelConfig  # noqa: E402
from pocketlm.survey.figures import save_figure, write_csv  # noqa: E402

CLAIM = ("At the same parameter count, architecture (depth vs width, FFN ratio, vocabulary size, parameter "
         "sharing) changes on-device latency, and it moves prefill more than decode.")
MATTERS = 0.10  # an axis "matters" when its slowest variant is > 10 % slower than its fastest
BASE = ModelConfig(vocab_size=32000, d_model=512, n_layer=8, n_head=8, intermediate_size=1376, max_seq_len=1024,
                   tie_embeddings=True)


def _layers_then_ffn(cfg: ModelConfig, target: int) -> ModelConfig:
    """Fewest-change match: the layer count nearest the budget, then the FFN width that hits it exactly."""
    cfg = match_int(lambda n: cfg.replace(n_layer=n), target, 1, 64)
    return match_params(cfg, target)


def variants(base: ModelConfig = BASE) -> dict[str, dict[str, ModelConfig]]:
    """{axis: {label: config}}, every config within a fraction of a percent of base's parameters."""
    target = total_params(base)

    def width(d: int, n_layer: int) -> ModelConfig:
        return base.replace(d_model=d, n_head=d // 64, n_layer=n_layer, intermediate_size=int(8 * d / 3 // 32 * 32))

    depth = {}
    for n_layer in (4, 8, 16):
        cfg = match_int(lambda d: width(d, n_layer), target, 128, 2048, multiple=64)
        depth[f"{n_layer}L x {cfg.d_model}"] = match_params(cfg, target)
    ffn = {f"FFN {r}x": _layers_then_ffn(base.replace(intermediate_size=int(r * base.d_model)), target)
           for r in (1.5, 2.7, 5.3)}
    vocab = {f"vocab {v // 1000}k": _layers_then_ffn(base.replace(vocab_size=v), target) for v in (8000, 32000, 64000)}
    sharing = {"8 blocks": base, "8 blocks x2 (shared)": base.replace(n_layer=16, block_repeat=2)}
    return {"depth": depth, "ffn_width": ffn, "vocabulary": vocab, "sharing": sharing}


def spread(values: list[float]) -> float:
    """max / min - 1: how much slower the slowest variant is than the fastest."""
    return max(values) / min(values) - 1.0


def run(out_dir: Path, quick: bool = False, threads: int = 1) -> Record:
    groups = variants()
    flat = {f"{axis}: {label}": cfg for axis, g in groups.items() for label, cfg in g.items()}
    unique: dict[str, ModelConfig] = {}  # the base model appears on every axis: measure it once
    key_of: dict[str, str] = {}
    for k, cfg in flat.items():
        key_of[k] = json.dumps(cfg.to_dict(), sort_keys=True)
        unique.setdefault(key_of[k], cfg)
    labels = {key: f"variant{i}" for i, key in enumerate(unique)}
    paths = write_configs({labels[key]: c for key, c in unique.items()}, out_dir)
    prompt, depth = (64, 32) if quick else (256, 128)
    measured = profile_models({labels[key]: paths[labels[key]] for key in unique}, rounds=2, dtype="fp32",
                              threads=threads, prompts=(prompt,), gen=4 if quick else 8, depths=(depth,),
                              repeat=1 if quick else 2, warmup=1, pack=True)
    results = {k: measured[labels[key_of[k]]] for k in flat}
    rows, effects = [], {}
    for axis, g in groups.items():
        pre, dec = [], []
        for label, cfg in g.items():
            r = results[f"{axis}: {label}"]
            pre.append(by_prompt(r)[prompt])
            dec.append(by_depth(r)[depth])
            rows.append({"axis": axis, "variant": label, "params": total_params(cfg), "n_layer": cfg.n_layer,
                         "d_model": cfg.d_model, "intermediate_size": cfg.intermediate_size,
                         "vocab_size": cfg.vocab_size, "block_repeat": cfg.block_repeat,
                         f"prefill{prompt}_ms": round(pre[-1], 3), f"decode_d{depth}_ms": round(dec[-1], 3)})
        effects[axis] = {"prefill_spread": round(spread(pre), 3), "decode_spread": round(spread(dec), 3)}
    mean_pre = sum(e["prefill_spread"] for e in effects.values()) / len(effects)
    mean_dec = sum(e["decode_spread"] for e in effects.values()) / len(effects)
    checks = [any(max(e.values()) > MATTERS for e in effects.values()), mean_pre > mean_dec]
    csv = write_csv(rows, out_dir / "architecture.csv")
    fig = _figure(rows, prompt, depth, out_dir / "architecture.png", threads)
    larger = sorted(a for a, e in effects.items() if e["prefill_spread"] > e["decode_spread"])
    summary = (f"mean spread across variants: prefill {mean_pre:.0%}, decode {mean_dec:.0%} "
               f"(prefill moved more on: {', '.join(larger) or 'none'}).")
    return Record("architecture", "Architecture at equal size: prefill vs decode", CLAIM,
                  "pocketlm insights architecture --out insights_out",
                  {"params": total_params(BASE), "spread_by_axis": {a: f"prefill {e['prefill_spread']:+.0%} / decode "
                                                                      f"{e['decode_spread']:+.0%}"
                                                                   for a, e in effects.items()},
                   "mean_prefill_spread": round(mean_pre, 3), "mean_decode_spread": round(mean_dec, 3)},
                  verdict(checks), summary, str(fig), str(csv))


def _figure(rows: list[dict], prompt: int, depth: int, path: Path, threads: int) -> Path:
    axes_names = list(dict.fromkeys(r["axis"] for r in rows))
    fig, axes = plt.subplots(1, len(axes_names), figsize=(4.4 * len(axes_names), 4.2))
    for ax, axis in zip(axes, axes_names):
        g = [r for r in rows if r["axis"] == axis]
        base_p, base_d = min(r[f"prefill{prompt}_ms"] for r in g), min(r[f"decode_d{depth}_ms"] for r in g)
        xs = range(len(g))
        ax.bar([x - 0.2 for x in xs], [r[f"prefill{prompt}_ms"] / base_p for r in g], 0.4, label=f"prefill {prompt}")
        ax.bar([x + 0.2 for x in xs], [r[f"decode_d{depth}_ms"] / base_d for r in g], 0.4, label=f"decode @{depth}")
        ax.set_xticks(list(xs), [r["variant"] for r in g], rotation=20, fontsize=8)
        ax.axhline(1, color="black", lw=0.8)
        ax.set_title(axis)
        ax.set_ylabel("latency / fastest variant")
        ax.legend(fontsize=8)
    fig.suptitle(f"Equal parameters ({rows[0]['params'] / 1e6:.1f}M), fp32, {threads} thread, random weights")
    fig.tight_layout()
    return save_figure(fig, path)
