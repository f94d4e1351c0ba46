"""Insight 3: memory against parameters — a linear fit with its residuals, and the models the fit misses
named (the survey: BLOOM and Gemma, whose 250k-256k vocabularies put a large share of their weights in the
embedding table)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pocketlm.insights.analysis import linear_fit, robust_outliers, verdict  # noqa: E402
from pocketlm.insights.bench import profile_models  # noqa: E402
from pocketlm.insights.record import Record  # noqa: E402
from pocketlm.model import costs  # noqa: E402
from pocketlm.survey.figures import save_figure, write_csv  # noqa: E402

CLAIM = ("Peak memory grows linearly with the parameter count; models with very large vocabularies (BLOOM, "
         "Gemma) sit above the line for their size.")
MEASURED = ("OPT-125M", "SmolLM-135M", "Pythia-160M", "SmolLM-360M", "Qwen2.5-0.5B", "BLOOM-560M", "Pythia-1B",
            "TinyLlama-1.1B", "BLOOM-1B1", "Pythia-1.4B", "Qwen1.5-1.8B", "Gemma-2B")
VOCAB_OUTLIERS = ("bloom", "gemma")
CONTEXT = 1024  # analytic mode: the KV cache of a 1024-token context
LINEAR_R2 = 0.95


def analytic_points(max_params: float = 3e9) -> list[dict]:
    """bf16 weights + a 1024-token bf16 KV cache of every buildable catalog model up to `max_params`."""
    from pocketlm.survey.catalog import entry_to_config, load_catalog

    points = []
    for e in load_catalog():
        if not e.buildable:
            continue
        cfg = entry_to_config(e)
        n = costs.param_counts(cfg)
        if n["total"] > max_params:
            continue
        mem = costs.weight_bytes(cfg, 16) + costs.kv_cache_bytes(cfg, CONTEXT)
        points.append({"model": e.name, "params": n["total"], "non_embedding": n["non_embedding"],
                       "vocab_size": cfg.vocab_size, "memory_mb": mem / 2**20})
    return points


def measured_points(models: tuple[str, ...], threads: int = 1) -> list[dict]:
    """Peak RSS of each catalog model (random bf16 weights, unpacked), prompt 64, 4 tokens at depth 64."""
    from pocketlm.survey.catalog import entry_to_config, get_entry

    results = profile_models({m: m for m in models}, dtype="bf16", threads=threads, prompts=(64,), gen=4,
                             depths=(64,), repeat=1, warmup=0, pack=False)
    points = []
    for m, r in results.items():
        n = costs.param_counts(entry_to_config(get_entry(m)))
        points.append({"model": m, "params": n["total"], "non_embedding": n["non_embedding"],
                       "vocab_size": r["model_info"]["vocab_size"], "memory_mb": r["memory"]["peak_rss_bytes"] / 2**20})
    return points


def landscape_points(csv_path: str | Path) -> list[dict]:
    """Peak RSS from a `pocketlm profile landscape` CSV (e.g. docs/profile_landscape/landscape.csv)."""
    import csv

    from pocketlm.survey.catalog import entry_to_config, get_entry

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    points = []
    for r in rows:
        n = costs.param_counts(entry_to_config(get_entry(r["model"])))
        points.append({"model": r["model"], "params": n["total"], "non_embedding": n["non_embedding"],
                       "vocab_size": int(r["vocab_size"]), "memory_mb": float(r["peak_rss_mb"])})
    return points


def analyse(points: list[dict]) -> dict:
    """Fits of memory against total and against non-embedding parameters, and each fit's outliers."""
    out = {}
    for key in ("params", "non_embedding"):
        fit = linear_fit([p[key] / 1e9 for p in points], [p["memory_mb"] for p in points])
        outliers = [points[i]["model"] for i in robust_outliers(fit.residuals, above_only=True)]
        out[key] = {"fit": fit, "outliers": outliers}
        for p, r in zip(points, fit.residuals):
            p[f"residual_mb_vs_{key}"] = round(r, 1)
    return out


def run(out_dir: Path, quick: bool = False, threads: int = 1, landscape_csv: str | Path | None = None) -> Record:
    """--quick: the analytic model over the catalog; otherwise measured (or read from a landscape CSV)."""
    if landscape_csv is not None:
        points, source = landscape_points(landscape_csv), f"measured peak RSS from {Path(landscape_csv).name}"
    elif quick:
        points = analytic_points()
        source = f"analytic: bf16 weights + {CONTEXT}-token KV cache, every buildable catalog model <= 3B"
    else:
        points = measured_points(MEASURED, threads)
        source = "measured peak RSS (torch runtime, random bf16 weights, 1 fresh process per model)"
    fits = analyse(points)
    total, non_emb = fits["params"], fits["non_embedding"]
    named = {key: [m for m in f["outliers"] if m.lower().startswith(VOCAB_OUTLIERS)] for key, f in fits.items()}
    # the survey's outliers should stand out at their total size; above a non-embedding fit only is "partly"
    checks = [total["fit"].r2 > LINEAR_R2, bool(named["params"]), bool(named["non_embedding"])]
    csv = write_csv([{k: (round(v, 1) if isinstance(v, float) else v) for k, v in p.items()} for p in points],
                    out_dir / "memory_vs_params.csv")
    fig = _figure(points, fits, out_dir / "memory_vs_params.png", source)
    f = total["fit"]
    summary = (f"{source}: memory = {f.intercept:.0f} MB + {f.slope:.0f} MB per billion parameters, R² {f.r2:.4f}; "
               f"outliers against total parameters: {', '.join(total['outliers']) or 'none'}; against "
               f"non-embedding parameters: {', '.join(non_emb['outliers']) or 'none'}.")
    return Record("memory", "Memory vs parameters", CLAIM, "pocketlm insights memory --out insights_out", {
        "models": len(points), "slope_mb_per_b": round(f.slope, 1), "intercept_mb": round(f.intercept, 1),
        "r2_total": round(f.r2, 5), "r2_non_embedding": round(non_emb["fit"].r2, 5),
        "outliers_total": total["outliers"], "outliers_non_embedding": non_emb["outliers"],
        "bloom_gemma_above_total_fit": named["params"],
        "bloom_gemma_above_non_embedding_fit": named["non_embedding"]}, verdict(checks), summary, str(fig), str(csv))


def _figure(points: list[dict], fits: dict, path: Path, source: str) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, (key, label) in zip(axes, (("params", "total parameters (B)"),
                                       ("non_embedding", "non-embedding parameters (B)"))):
        fit, outliers = fits[key]["fit"], set(fits[key]["outliers"])
        xs = [p[key] / 1e9 for p in points]
        ax.scatter(xs, [p["memory_mb"] for p in points], c=["tab:red" if p["model"] in outliers else "tab:blue"
                                                            for p in points], s=22, zorder=3)
        lo, hi = min(xs), max(xs)
        ax.plot([lo, hi], [fit.predict(lo), fit.predict(hi)], color="gray", lw=1,
                label=f"fit: {fit.intercept:.0f} + {fit.slope:.0f}·x MB, R² {fit.r2:.3f}")
        for p in points:
            if p["model"] in outliers or p["vocab_size"] >= 200_000:
                ax.annotate(f"{p['model']} ({p['vocab_size'] // 1000}k vocab)", (p[key] / 1e9, p["memory_mb"]),
                            fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel("memory (MB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Memory vs parameters — {source}; red: above the line (modified z > 3.5)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
