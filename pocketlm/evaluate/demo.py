"""`pocketlm demo` section: the demo model on the bundled benchmark subsets."""

from __future__ import annotations

import math
from pathlib import Path

from .runner import GROUP_TITLES, evaluate, primary_metric

DEMO_ZERO_SHOT = ("hellaswag", "piqa", "winogrande", "boolq", "openbookqa", "truthfulqa_mc2", "arc_easy",
                  "arc_challenge", "mmlu", "lambada_openai", "perplexity_tinystories")
DEMO_FEW_SHOT = ("arc_easy", "hellaswag")
CHANCE = {"hellaswag": 0.25, "piqa": 0.5, "winogrande": 0.5, "boolq": 0.5, "openbookqa": 0.25, "arc_easy": 0.25,
          "arc_challenge": 0.25, "mmlu": 0.25}


def _figure(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pocketlm.utils import atomic_path
    names, vals, errs, chance = [], [], [], []
    for task, by_shot in res["results"].items():
        r = by_shot.get("0")
        metric = primary_metric(r["metrics"]) if r else None
        if metric is None or r["output_type"] != "multiple_choice":
            continue
        names.append(f"{task}\n({metric})")
        vals.append(r["metrics"][metric])
        se = r["metrics"].get(f"{metric}_stderr", 0.0)
        errs.append(0.0 if math.isnan(se) else 1.96 * se)
        chance.append(CHANCE.get(task))
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.bar(range(len(vals)), vals, yerr=errs, capsize=3, color="#4c72b0", label="demo model (95% CI)")
    for i, c in enumerate(chance):
        if c is not None:
            ax.hlines(c, i - 0.4, i + 0.4, colors="red", linestyles="--", label="chance" if i == 0 else None)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("zero-shot score")
    ax.set_title("Zero-shot scores on the bundled subsets (up to 40 documents per task)")
    ax.legend(loc="upper right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def demo_section(model_dir: Path, out_dir: Path) -> dict:
    """Evaluate the demo model on the bundled subsets; returns {"title", "markdown", "metrics"}."""
    from .loading import load_for_eval
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tok = load_for_eval(model_dir)
    zero = evaluate(model, tok, DEMO_ZERO_SHOT, shots=[0], model_name=str(model_dir), show_progress=False)
    few = evaluate(model, tok, DEMO_FEW_SHOT, shots=[5], model_name=str(model_dir), show_progress=False)
    for task, by_shot in few["results"].items():
        zero["results"][task].update(by_shot)
    from .runner import group_scores, summary_table, write_results
    zero["groups"] = group_scores(zero["results"])
    zero["config"]["shots"] = [0, 5]
    write_results(zero, out_dir / "eval_results.json")
    _figure(zero, out_dir / "eval_scores.png")
    metrics: dict[str, float] = {}
    for task, by_shot in zero["results"].items():
        for k, r in by_shot.items():
            for m, v in r["metrics"].items():
                if not m.endswith("_stderr"):
                    metrics[f"{task}/{k}shot/{m}"] = v
    for g, by_shot in zero["groups"].items():
        for k, entry in by_shot.items():
            metrics[f"group/{g}/{k}shot"] = entry["score"]
    speed = [r["examples_per_s"] for by in zero["results"].values() for r in by.values() if r["examples_per_s"]]
    groups_md = "\n".join(f"- {GROUP_TITLES.get(g, g)} ({k}-shot): {e['score']:.3f} "
                          f"(mean of {', '.join(e['tasks'])})" for g, by in zero["groups"].items()
                          for k, e in by.items())
    md = (f"Scored with lm-eval's prompts and metrics on the bundled subsets (first 40 documents of each "
          f"benchmark; see `pocketlm/evaluate/data/ATTRIBUTION.md`), so numbers carry wide error bars: the "
          f"± column is the standard error. Per-example records: `eval_results.json`.\n\n"
          f"{summary_table(zero)}\n\n{groups_md}\n\n![zero-shot scores](eval_scores.png)\n\n"
          f"`perplexity_tinystories` reads the first 24 KB of TinyStories' validation split, which the bundled "
          f"corpus (the demo model's training text) contains, so for this model it is a training-text "
          f"perplexity; the shrink sections score on the corpus's held-out documents instead.\n\n"
          f"Median throughput: {sorted(speed)[len(speed) // 2]:.1f} examples/s on this machine.")
    return {"title": "Capability (benchmark suite)", "markdown": md, "metrics": metrics}
