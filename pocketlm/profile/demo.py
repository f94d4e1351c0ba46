"""`pocketlm demo` section: profile the demo model in fp32, int8 and int4 (prefill, decode, memory)."""

from __future__ import annotations

import time
from pathlib import Path

from pocketlm.profile.runner import profile
from pocketlm.profile.setting import Setting, grid


def demo_section(model_dir: Path, out_dir: Path) -> dict:
    """Profile `model_dir` (each precision in a fresh process); returns {"title", "markdown", "metrics"}."""
    started = time.time()
    base = Setting(model=str(model_dir), prompts=(16, 64), gen=16, depths=(64,), repeat=3, skip_unsupported=True)
    done = profile(grid(base, dtypes=("fp32", "int8", "int4")), out_dir, progress=False)
    results, table = done["results"], done["rows"]

    def pick(dtype: str, test: str) -> dict:
        return next(r for r in table if r["dtype"] == dtype and r["test"] == test)

    pp, tg = "pp64", "tg16@d64"
    lines = ["| dtype | prefill 64 tok (ms) | decode at depth 64 (ms/token) | tok/s | weights (MB) | peak RSS (MB) |",
             "|---|---:|---:|---:|---:|---:|"]
    metrics: dict = {}
    for r in results:
        d = r["setting"]["dtype"]
        p, t = pick(d, pp), pick(d, tg)
        lines.append(f"| {d} | {p['median_ms']:.2f} | {t['median_ms']:.2f} | {t['tok_s']:.1f} | "
                     f"{p['weights_mb']:.2f} | {p['peak_rss_mb']:.1f} |")
        metrics[f"{d}_prefill64_ms"] = p["median_ms"]
        metrics[f"{d}_decode_ms"] = t["median_ms"]
        metrics[f"{d}_weights_mb"] = p["weights_mb"]
        if r.get("float_layers"):
            metrics[f"{d}_float_layers"] = len(r["float_layers"])
    for d in ("int8", "int4"):
        metrics[f"{d}_prefill_speedup"] = pick("fp32", pp)["median_ms"] / pick(d, pp)["median_ms"]
        metrics[f"{d}_decode_speedup"] = pick("fp32", tg)["median_ms"] / pick(d, tg)["median_ms"]
    mem = results[0]["memory"]
    mb = 2**20
    notes = []
    for r in results:
        if r.get("float_layers"):
            notes.append(f"{r['setting']['dtype']}: {len(r['float_layers'])} layer(s) kept in float "
                         f"(shapes the kernel cannot take), e.g. `{r['float_layers'][0]}`.")
    md = "\n".join([
        f"Model `{model_dir}` measured in a fresh process per precision, {results[0]['setting']['threads']} thread(s), "
        "median of 3 repeats (weight-only int8 / group-wise int4 run torch's packed-integer CPU kernels).",
        "",
        *lines,
        "",
        f"Speed-up over fp32 — int8: prefill {metrics['int8_prefill_speedup']:.2f}x, decode "
        f"{metrics['int8_decode_speedup']:.2f}x; int4: prefill {metrics['int4_prefill_speedup']:.2f}x, decode "
        f"{metrics['int4_decode_speedup']:.2f}x. On tiny models per-call overhead dominates, so these ratios "
        "say little about large models (see docs/benchmarks.md).",
        "",
        f"fp32 memory at a {mem['kv_len']}-token cache: weights {mem['weights_bytes'] / mb:.2f} MB, KV cache "
        f"{mem['kv_cache_bytes'] / mb:.2f} MB, activations {mem['activation_bytes'] / mb:.2f} MB, other "
        f"{mem['other_bytes'] / mb:.2f} MB of {mem['rss_growth_bytes'] / mb:.2f} MB RSS growth.",
        *([""] + notes if notes else []),
        "",
        f"Files: `{done['csv']}`, `{done['json']}` ({time.time() - started:.0f} s).",
    ])
    metrics["seconds"] = time.time() - started
    return {"title": "Profile: latency and memory", "markdown": md, "metrics": metrics}
