"""`pocketlm demo` section: fit the demo model to a small device budget (torch runtime), with its front."""

from __future__ import annotations

from pathlib import Path

from pocketlm.fit.budget import Budget
from pocketlm.fit.config import FitConfig

# a budget that binds on the demo model: fp32 (4.3 MB), bf16 and int8 (1.6 MB) miss the disk limit
DEMO_BUDGET = {"max_disk": "1.5MB", "min_decode_tok_s": "50"}
DEMO_RUN = dict(runtime="torch", candidates="precision=fp32,bf16,int8,int4;prune_nm=none;prune_structured=none",
                tokens=1024,
                window=128, prompt=32, context=128, gen=8, repeat=2, threads=1)


def demo_section(model_dir: Path, out_dir: Path) -> dict:
    """Run `pocketlm fit MODEL --max-disk 1.5MB --min-decode-tok-s 50` into `out_dir` (report.html there too)."""
    from pocketlm.fit.search import fit

    cfg = FitConfig(model=str(model_dir), budget=Budget.parse(**DEMO_BUDGET), **DEMO_RUN)
    report = fit(cfg, out_dir, progress=False)
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in DEMO_BUDGET.items())
    md = [f"`pocketlm fit {Path(model_dir).name} {flags} --candidates '{DEMO_RUN['candidates']}'` "
          f"(torch runtime, one thread; full page: [report.html](report.html)).", ""]
    for s in report["sections"][:4]:
        md += [f"### {s['title']}", "", s["markdown"], ""]
    chosen = report["chosen_record"]
    metrics = {"chosen": report["chosen"], "front": report["front"], "counts": report["counts"],
               "prediction_error": report["prediction_error"],
               "verify": report["verify"], "kl": chosen["quality"]["kl_mean"] if chosen else None}
    return {"title": "Fit: the best model for a device budget", "markdown": "\n".join(md), "metrics": metrics}
