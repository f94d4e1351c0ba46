"""`eval compare`: paired bootstrap confidence interval of B - A on the examples both scored."""

from __future__ import annotations

import numpy as np

from .runner import primary_metric


class CompareError(ValueError):
    """The two results files cannot be compared (no shared task or different examples)."""


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 10_000, seed: int = 0,
                     confidence: float = 0.95) -> dict[str, float]:
    """Mean difference b - a, its percentile bootstrap CI (examples resampled in pairs) and p-value."""
    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(n_boot, len(diff)))
    means = diff[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    # two-sided: how often the resampled difference lands on the other side of zero
    p = 2 * min((means <= 0).mean(), (means >= 0).mean())
    return {"n": int(len(diff)), "mean_a": float(np.mean(a)), "mean_b": float(np.mean(b)),
            "diff": float(diff.mean()), "ci_low": float(lo), "ci_high": float(hi), "p_value": float(min(p, 1.0)),
            "confidence": confidence}


def compare_results(res_a: dict, res_b: dict, n_boot: int = 10_000, seed: int = 0) -> list[dict]:
    """One row per (task, shots, metric) present in both files, paired on identical prompts."""
    rows = []
    for task, by_shot in res_a["results"].items():
        for shots, ra in by_shot.items():
            rb = res_b["results"].get(task, {}).get(shots)
            if rb is None:
                continue
            recs_b = {r["doc_id"]: r for r in rb["records"]}
            pairs = [(r, recs_b[r["doc_id"]]) for r in ra["records"] if r["doc_id"] in recs_b]
            mismatched = [r["doc_id"] for r, s in pairs if r["prompt_sha"] != s["prompt_sha"]]
            if mismatched:
                raise CompareError(f"{task} {shots}-shot: examples {mismatched[:5]} have different prompts in the two "
                                   "files (different data, seed or tokenizer-independent prompt); re-run both on the "
                                   "same --data-dir/--limit/--seed")
            if not pairs:
                continue
            metric = primary_metric(ra["metrics"])
            if metric is None:  # perplexity tasks: compare per-document log-likelihood per byte
                a = np.array([r["loglikelihood"] / r["bytes"] for r, _ in pairs])
                b = np.array([s["loglikelihood"] / s["bytes"] for _, s in pairs])
                metric = "loglik_per_byte"
            else:
                a = np.array([r["scores"][metric] for r, _ in pairs])
                b = np.array([s["scores"][metric] for _, s in pairs])
            rows.append({"task": task, "shots": int(shots), "metric": metric,
                         **paired_bootstrap(a, b, n_boot=n_boot, seed=seed)})
    if not rows:
        raise CompareError("the two results files share no (task, shots) with common examples")
    return rows


def compare_table(rows: list[dict], name_a: str = "A", name_b: str = "B") -> str:
    lines = [f"| task | shots | metric | n | {name_a} | {name_b} | diff (B-A) | 95% CI | p | verdict |",
             "|---|---:|---|---:|---:|---:|---:|---|---:|---|"]
    for r in rows:
        verdict = "B better" if r["ci_low"] > 0 else "B worse" if r["ci_high"] < 0 else "no significant difference"
        lines.append(f"| {r['task']} | {r['shots']} | {r['metric']} | {r['n']} | {r['mean_a']:.4f} | {r['mean_b']:.4f} "
                     f"| {r['diff']:+.4f} | [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] | {r['p_value']:.3f} | {verdict} |")
    return "\n".join(lines)
