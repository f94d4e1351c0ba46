"""Perplexity of each pruning method over a set of sparsities and N:M patterns: the table and the figure the
papers show (Wanda README: magnitude >> Wanda ~ SparseGPT at 50%; SparseGPT <= Wanda at 2:4)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import Tensor

from pocketlm.compress.measure import compare_on_tokens
from pocketlm.compress.prune.driver import prune

METHOD_ORDER = ("magnitude", "wanda", "sparsegpt")


def sweep(model: Any, calib: Tensor, heldout: Tensor, window: int, settings: Sequence[str] = ("0.5", "2:4"),
          methods: Sequence[str] = METHOD_ORDER, owl: bool = False, log: Callable[[str], None] | None = None,
          ) -> list[dict]:
    """One row per (method, setting): setting is a sparsity ("0.5") or an N:M pattern ("2:4")."""
    rows = []
    dense_ppl = None
    for setting in settings:
        for method in methods:
            pruned = copy.deepcopy(model)
            kind = {"pattern": setting} if ":" in setting else {"sparsity": float(setting)}
            report = prune(pruned, method, calib=calib, owl=owl and ":" not in setting and method != "magnitude",
                           **kind)
            quality = compare_on_tokens(model, pruned, heldout, window)
            dense_ppl = quality["ppl_before"]
            rows.append({"method": method, "setting": setting, "sparsity": report.sparsity,
                         "ppl": quality["ppl_after"], "kl": quality["kl_mean"], "seconds": report.wall_s})
            if log:
                log(f"{method} {setting}: ppl {quality['ppl_after']:.4f} (dense {quality['ppl_before']:.4f})")
    for r in rows:
        r["dense_ppl"] = dense_ppl
    return rows


def sweep_table(rows: list[dict]) -> str:
    """Markdown: one line per method, one perplexity column per setting."""
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    head = ["| method | " + " | ".join(_label(s) for s in settings) + " |", "|---|" + "---|" * len(settings)]
    body = [f"| dense | " + " | ".join(f"{rows[0]['dense_ppl']:.3f}" for _ in settings) + " |"]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = {r["setting"]: r["ppl"] for r in rows if r["method"] == method}
        body.append(f"| {method} | " + " | ".join(f"{cells[s]:.3f}" for s in settings) + " |")
    return "\n".join(head + body)


def _label(setting: str) -> str:
    return setting if ":" in setting else f"{float(setting):.0%}"


def sweep_figure(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Perplexity vs sparsity, one line per method (unstructured settings), N:M as separate markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        line = sorted((r["sparsity"], r["ppl"]) for r in rows if r["method"] == method and ":" not in r["setting"])
        color = f"C{i}"
        if line:
            ax.plot([0] + [x for x, _ in line], [rows[0]["dense_ppl"]] + [y for _, y in line], "o-", color=color,
                    label=method)
        for r in rows:
            if r["method"] == method and ":" in r["setting"]:
                ax.plot(r["sparsity"], r["ppl"], "s", color=color, markerfacecolor="none")
                ax.annotate(r["setting"], (r["sparsity"], r["ppl"]), textcoords="offset points", xytext=(4, 2),
                            fontsize=7, color=color)
    ax.set_xlabel("sparsity of the pruned matrices (squares: N:M)")
    ax.set_ylabel("held-out perplexity")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.0f"))
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
