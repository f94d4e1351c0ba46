"""In-context learning study: accuracy at 0/1/5 shots on the survey's tasks, gain per task and model size."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .runner import evaluate, primary_metric

ICL_TASKS = ("arc_easy", "arc_challenge", "boolq", "hellaswag", "openbookqa", "piqa", "winogrande", "mmlu")
ICL_SHOTS = (0, 1, 5)


def icl_study(models: Sequence[tuple[str, Any, Any, int]], tasks: Sequence[str] = ICL_TASKS,
              shots: Sequence[int] = ICL_SHOTS, limit: int | None = None, data_dir: str | Path | None = None,
              out_dir: str | Path | None = None, seed: int = 1234) -> dict:
    """Run every (name, model, tokenizer, n_params) at each shot count; gains are score(k) - score(0)."""
    rows = []
    raw = {}
    for name, model, tok, n_params in models:
        res = evaluate(model, tok, tasks, shots=shots, limit=limit, data_dir=data_dir, seed=seed, model_name=name,
                       output=None if out_dir is None else Path(out_dir) / f"icl_{_safe(name)}.json")
        raw[name] = res
        for task, by_shot in res["results"].items():
            base = by_shot.get(str(shots[0]))
            if base is None:
                continue
            metric = primary_metric(base["metrics"])
            for k, r in by_shot.items():
                rows.append({"model": name, "params": n_params, "task": task, "shots": int(k), "metric": metric,
                             "score": r["metrics"][metric], "gain": r["metrics"][metric] - base["metrics"][metric]})
    study = {"tasks": list(tasks), "shots": list(shots), "rows": rows}
    if out_dir is not None:
        from pocketlm.utils import atomic_write_text
        out = Path(out_dir)
        atomic_write_text(out / "icl_table.md", icl_table(study))
        icl_figure(study, out / "icl_gain.png")
    return study


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def icl_table(study: dict) -> str:
    """Markdown: per model and task, the score at each shot count and the gain over zero-shot."""
    shots = study["shots"]
    head = "| model | params | task | " + " | ".join(f"{k}-shot" for k in shots) + " | " + \
        " | ".join(f"gain@{k}" for k in shots[1:]) + " |"
    lines = [head, "|" + "---|" * (3 + 2 * len(shots) - 1)]
    by = {}
    for r in study["rows"]:
        by.setdefault((r["model"], r["params"], r["task"]), {})[r["shots"]] = r
    for (model, params, task), d in by.items():
        scores = " | ".join(f"{d[k]['score']:.3f}" if k in d else "-" for k in shots)
        gains = " | ".join(f"{d[k]['gain']:+.3f}" if k in d else "-" for k in shots[1:])
        lines.append(f"| {model} | {params / 1e6:.1f}M | {task} | {scores} | {gains} |")
    # mean gain per model (the per-size summary)
    lines += ["", "| model | params | " + " | ".join(f"mean gain@{k}" for k in shots[1:]) + " |",
              "|---|---|" + "---:|" * (len(shots) - 1)]
    for model, params in dict.fromkeys((r["model"], r["params"]) for r in study["rows"]):
        means = []
        for k in shots[1:]:
            g = [r["gain"] for r in study["rows"] if r["model"] == model and r["shots"] == k]
            means.append(f"{sum(g) / len(g):+.3f}" if g else "-")
        lines.append(f"| {model} | {params / 1e6:.1f}M | " + " | ".join(means) + " |")
    return "\n".join(lines)


def icl_figure(study: dict, path: str | Path) -> None:
    """Left: gain over zero-shot per task (last model); right: mean gain vs model size per shot count."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, shots = study["rows"], study["shots"]
    models = list(dict.fromkeys((r["model"], r["params"]) for r in rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    width = 0.8 / max(len(shots) - 1, 1)
    for m_i, (model, _) in enumerate(models[-1:]):
        for s_i, k in enumerate(shots[1:]):
            vals = [next((r["gain"] for r in rows if r["model"] == model and r["task"] == t and r["shots"] == k), 0.0)
                    for t in tasks]
            ax1.bar([i + s_i * width for i in range(len(tasks))], vals, width, label=f"{k}-shot")
        ax1.set_title(f"ICL gain over 0-shot per task ({model})")
    ax1.axhline(0, color="black", lw=0.8)
    ax1.set_xticks([i + width * (len(shots) - 2) / 2 for i in range(len(tasks))], tasks, rotation=30, ha="right")
    ax1.set_ylabel("score(k-shot) - score(0-shot)")
    ax1.legend()
    for k in shots[1:]:
        xs, ys = [], []
        for model, params in models:
            g = [r["gain"] for r in rows if r["model"] == model and r["shots"] == k]
            if g:
                xs.append(params)
                ys.append(sum(g) / len(g))
        ax2.plot(xs, ys, marker="o", label=f"{k}-shot")
    ax2.axhline(0, color="black", lw=0.8)
    ax2.set_xscale("log")
    ax2.set_xlabel("parameters")
    ax2.set_ylabel("mean gain over 0-shot")
    ax2.set_title("ICL gain vs model size")
    ax2.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from pocketlm.utils import atomic_path
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
