"""RTN vs GPTQ vs AWQ at several bit widths on one model: rows, a markdown table and a figure of held-out
perplexity and KL against bits per weight (the demo's quant section and benchmarks/bench_quant_quality.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import Tensor

from pocketlm.compress.measure import compare_on_tokens, window_logprobs
from pocketlm.compress.quantize.driver import quantize
from pocketlm.model.quantize import IntGrid

METHOD_ORDER = ("rtn", "gptq", "awq")


def quant_sweep(model: Any, calib: Tensor, heldout: Tensor, window: int, bits: Sequence[int] = (4, 3),
                group_size: int | None = 32, methods: Sequence[str] = METHOD_ORDER,
                log: Callable[[str], None] | None = None, models: dict | None = None, **options: Any) -> list[dict]:
    """One row per (method, bits): held-out perplexity, its increase's standard error over windows,
    KL(float || quantized) mean / p99, top-1, seconds, and the per-window log-perplexity differences
    (`window_nll_diffs`, the paired sample behind the standard error). The float model is scored once.

    `models`: a dict that receives each quantized model under (method, bits)."""
    rows = []
    dense = window_logprobs(model, heldout, window)
    for b in bits:
        for method in methods:
            quantized = copy.deepcopy(model)
            report = quantize(quantized, method, b, group_size, calib=calib, **options)
            q = compare_on_tokens(model, quantized, heldout, window, dense_logprobs=dense)
            if models is not None:
                models[(method, b)] = quantized
            rows.append(_row(method, b, group_size, q, report.wall_s))
            if log:
                log(f"{method} {b}-bit: ppl {q['ppl_after']:.4f} (float {q['ppl_before']:.4f}, increase s.e. "
                    f"{rows[-1]['ppl_increase_se']:.4f}), KL {q['kl_mean']:.5f}")
    return rows


def _row(method: str, bits: int, group_size: int | None, q: dict, seconds: float) -> dict:
    return {"method": method, "bits": bits, "group_size": group_size,
            "bits_per_weight": IntGrid(bits, group_size, False).bits_per_weight, "float_ppl": q["ppl_before"],
            "ppl": q["ppl_after"], "ppl_increase_se": q["ppl_before"] * q["nll_diff_se"], "kl": q["kl_mean"],
            "kl_p99": q["kl_p99"], "top1": q["top1_agreement"], "seconds": seconds,
            "window_nll_diffs": q["window_nll_diffs"]}


def rescore(model: Any, models: dict, rows: list[dict], heldout: Tensor, window: int) -> list[dict]:
    """`quant_sweep`'s rows measured again on other held-out tokens, with the quantized models it kept in
    `models` (no second quantization): the same methods and seconds, the new text's quality."""
    dense = window_logprobs(model, heldout, window)
    return [_row(r["method"], r["bits"], r["group_size"],
                 compare_on_tokens(model, models[(r["method"], r["bits"])], heldout, window, dense_logprobs=dense),
                 r["seconds"]) for r in rows]


def quant_table(rows: list[dict]) -> str:
    """Markdown: one line per (method, bits) with perplexity, its increase over float (± standard error over
    windows), KL, top-1 and time."""
    lines = ["| method | bits | bits/weight | perplexity | increase ± s.e. | KL mean | KL p99 | top-1 | seconds |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| float | 32 | 32 | {rows[0]['float_ppl']:.3f} | | | | | |"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['bits']} | {r['bits_per_weight']:.2f} | {r['ppl']:.3f} | "
                     f"{r['ppl'] - r['float_ppl']:+.3f} ± {r['ppl_increase_se']:.3f} | {r['kl']:.4f} | "
                     f"{r['kl_p99']:.4f} | {r['top1']:.1%} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def quant_figure(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Two panels, perplexity and KL against bits per weight, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        line = sorted((r["bits_per_weight"], r["ppl"], r["kl"]) for r in rows if r["method"] == method)
        axes[0].plot([x for x, _, _ in line], [y for _, y, _ in line], "o-", color=f"C{i}", label=method)
        axes[1].plot([x for x, _, _ in line], [k for _, _, k in line], "o-", color=f"C{i}", label=method)
    axes[0].axhline(rows[0]["float_ppl"], color="gray", ls="--", lw=1, label="float")
    axes[0].set_ylabel("held-out perplexity")
    axes[1].set_ylabel("KL(float || quantized), nats/token")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("bits per weight (codes + group scales)")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
