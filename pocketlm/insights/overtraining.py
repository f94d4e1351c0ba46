"""Insight 8: over-training beyond Chinchilla — tokens per parameter of the surveyed SLMs (catalog data)
against the ~20 tokens/parameter compute optimum; and at toy scale, a small model trained far past its
Chinchilla point against a larger model given the same training compute (6 N D)."""

from __future__ import annotations

import statistics
from datetime import date
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pocketlm.insights.analysis import CHINCHILLA_TOKENS_PER_PARAM, tokens_per_param, verdict  # noqa: E402
from pocketlm.insights.record import Record  # noqa: E402
from pocketlm.survey.figures import save_figure, write_csv  # noqa: E402

CLAIM = ("SLMs are trained on far more tokens than the ~20 tokens per parameter that is compute-optimal "
         "(Chinchilla): they spend training compute to get a smaller model that is cheaper to run.")
SMALL, LARGE = "micro", "tiny"  # presets of the toy run
SMALL_TOKENS_PER_PARAM = 25  # the small model's budget: past its Chinchilla point (86 per non-embedding parameter)
LOSS_SLACK = 0.05  # over-training "pays" when the small model's loss is within 5 % of the larger one's


def catalog_rows() -> list[dict]:
    """Tokens per parameter of every surveyed model with a disclosed token count (official parameter count)."""
    from pocketlm.survey.trends import study_entries

    entries = {e.name: e for e in study_entries()}
    rows = tokens_per_param([(e.name, e.params_official, e.training_tokens) for e in entries.values()])
    for r in rows:
        r["release"] = entries[r["model"]].release
    return rows


def toy_run() -> dict:
    """Train SMALL far past its Chinchilla point and LARGE on the same compute; both on the bundled corpus."""
    import json

    from pocketlm.data.shards import MANIFEST
    from pocketlm.insights.bench import total_params
    from pocketlm.train.config import PRESETS, preset
    from pocketlm.train.fixtures import bundled_data_dir, trained_preset

    vocab = json.loads((bundled_data_dir() / MANIFEST).read_text())["tokenizer"]["vocab_size"]
    params = {name: total_params(preset(name, vocab)[0]) for name in (SMALL, LARGE)}
    seq, batch = 128, 16
    small_steps = int(SMALL_TOKENS_PER_PARAM * params[SMALL] / (seq * batch))
    large_steps = max(int(small_steps * params[SMALL] / params[LARGE]), 20)  # 6 N D equal
    out = {}
    for name, steps in ((SMALL, small_steps), (LARGE, large_steps)):
        _, s = trained_preset(name, steps=steps, batch_size=batch, seq_len=seq, lr=PRESETS[name][3]["lr"],
                              warmup_steps=max(steps // 20, 1), eval_every=max(steps // 4, 1), ckpt_every=steps)
        out[name] = {"params": s["params"], "tokens": s["tokens"], "tokens_per_param": s["tokens"] / s["params"],
                     "compute_flops": 6 * s["params"] * s["tokens"], "val_loss": s["val_loss"]}
    return out


def run(out_dir: Path, quick: bool = False) -> Record:
    rows = catalog_rows()
    tpp = [r["tokens_per_param"] for r in rows]
    median = statistics.median(tpp)
    above = sum(t > CHINCHILLA_TOKENS_PER_PARAM for t in tpp)
    by_year = {}
    for r in rows:
        by_year.setdefault(r["release"][:4], []).append(r["tokens_per_param"])
    toy = None if quick else toy_run()
    checks = [median > CHINCHILLA_TOKENS_PER_PARAM]
    summary = (f"{above} of {len(rows)} surveyed SLMs with a disclosed token count trained past 20 tokens/param "
               f"(median {median:.0f}, i.e. {median / CHINCHILLA_TOKENS_PER_PARAM:.0f}x Chinchilla).")
    measured = {"models_with_tokens": len(rows), "median_tokens_per_param": round(median, 1), "above_20": above,
                "median_by_year": {y: round(statistics.median(v), 1) for y, v in sorted(by_year.items())}}
    if toy is None:
        summary += " The toy training run is skipped with --quick."
    else:
        small, large = toy[SMALL], toy[LARGE]
        checks.append(small["val_loss"] <= large["val_loss"] * (1 + LOSS_SLACK))
        summary += (f" Toy run at equal compute ({small['compute_flops']:.2g} FLOPs): {SMALL} "
                    f"({small['params']:,} params, {small['tokens_per_param']:.0f} tokens/param) val loss "
                    f"{small['val_loss']:.3f} vs {LARGE} ({large['params']:,} params, "
                    f"{large['tokens_per_param']:.1f} tokens/param) {large['val_loss']:.3f}; the small model costs "
                    f"{large['params'] / small['params']:.1f}x less per generated token.")
        measured["toy_val_loss"] = {k: round(d["val_loss"], 4) for k, d in toy.items()}
        measured["toy_tokens_per_param"] = {k: round(d["tokens_per_param"], 2) for k, d in toy.items()}
        write_csv([{"model": k, **{f: round(v, 4) if isinstance(v, float) else v for f, v in d.items()}}
                   for k, d in toy.items()], out_dir / "toy_overtraining.csv")
    csv = write_csv([{**r, "tokens_per_param": round(r["tokens_per_param"], 1),
                      "x_chinchilla": round(r["x_chinchilla"], 2)} for r in rows], out_dir / "tokens_per_param.csv")
    fig = _figure(rows, toy, out_dir / "overtraining.png")
    return Record("overtraining", "Over-training beyond Chinchilla", CLAIM,
                  "pocketlm insights overtraining --out insights_out", measured, verdict(checks), summary,
                  str(fig), str(csv))


def _figure(rows: list[dict], toy: dict | None, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2 if toy else 1, figsize=(13 if toy else 9, 4.8), squeeze=False,
                             gridspec_kw={"width_ratios": [2, 1] if toy else [1]})
    ax1 = axes[0][0]
    for r in rows:
        y, m = (int(v) for v in r["release"].split("-")[:2])
        ax1.scatter(date(y, m, 15), r["tokens_per_param"], color="tab:blue", s=20)
        if r["tokens_per_param"] > 2000 or r["tokens_per_param"] < 5:
            ax1.annotate(r["model"], (date(y, m, 15), r["tokens_per_param"]), fontsize=7, xytext=(3, 3),
                         textcoords="offset points")
    ax1.axhline(CHINCHILLA_TOKENS_PER_PARAM, color="tab:red", ls="--", label="Chinchilla ~20 tokens/param")
    ax1.set_yscale("log")
    ax1.set_ylabel("training tokens per parameter")
    ax1.set_xlabel("release")
    ax1.grid(alpha=0.3)
    ax1.legend()
    if toy is None:
        fig.tight_layout()
        return save_figure(fig, path)
    ax2, names = axes[0][1], list(toy)
    ax2.bar(names, [toy[n]["val_loss"] for n in names], color=["tab:orange", "tab:green"])
    for i, n in enumerate(names):
        ax2.annotate(f"{toy[n]['params'] / 1e6:.2f}M params\n{toy[n]['tokens_per_param']:.1f} tok/param",
                     (i, toy[n]["val_loss"]), ha="center", fontsize=8, xytext=(0, 4), textcoords="offset points")
    ax2.set_ylabel("validation loss (nats/token)")
    ax2.set_title(f"equal training compute ({toy[names[0]]['compute_flops']:.2g} FLOPs)")
    fig.tight_layout()
    return save_figure(fig, path)
