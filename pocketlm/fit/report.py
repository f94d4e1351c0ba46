"""fit_report.json / fit_report.md / report.md / report.html and the Pareto figure of one fit."""

from __future__ import annotations

import json
from pathlib import Path

from pocketlm.utils import atomic_path, atomic_write_text

MB = 1e6


def _fmt_cost(c: dict | None) -> tuple[str, str, str, str]:
    if not c:
        return ("", "", "", "")
    return (f"{c['decode_tok_s']:.1f}", f"{c['prefill_ms']:.1f}", f"{c['memory_bytes'] / MB:.1f}",
            f"{c['disk_bytes'] / MB:.2f}")


def _quality(r: dict) -> tuple[str, str]:
    q = r.get("quality")
    return ("", "") if not q else (f"{q['kl_mean']:.4f}", f"{q['ppl_after']:.3f}")


def _tasks(r: dict) -> str:
    t = r.get("tasks") or {}
    return ", ".join(f"{k} {v['value']:.3f}" for k, v in t.items() if v.get("value") is not None)


def front_figure(report: dict, path: Path) -> Path | None:
    """KL to the original vs measured decode latency, marker area by memory; front joined, choice starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for r in report["candidates"] if r["measured"] and r["quality"] and r["rung"] == 1]
    if not recs:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.6), dpi=110)
    mem = [r["measured"]["memory_bytes"] / MB for r in recs]
    top = max(mem)
    for r, m in zip(recs, mem):
        fits = not r["misses"]
        ax.scatter(r["measured"]["decode_ms"], r["quality"]["kl_mean"], s=30 + 250 * m / top,
                   c="tab:blue" if fits else "lightgray", edgecolors="k", linewidths=0.5, zorder=2)
        ax.annotate(r["candidate"].replace("gguf_qtype=", "").replace("precision=", ""),
                    (r["measured"]["decode_ms"], r["quality"]["kl_mean"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    fr = sorted((r for r in recs if r["candidate"] in report["front"]), key=lambda r: r["measured"]["decode_ms"])
    if fr:
        ax.plot([r["measured"]["decode_ms"] for r in fr], [r["quality"]["kl_mean"] for r in fr], "-",
                color="tab:green", lw=1, zorder=1, label="front (fits the budget)")
    chosen = next((r for r in recs if r["candidate"] == report["chosen"]), None)
    if chosen:
        ax.scatter(chosen["measured"]["decode_ms"], chosen["quality"]["kl_mean"], marker="*", s=320,
                   c="gold", edgecolors="k", zorder=3, label=f"chosen: {chosen['candidate']}")
    ax.set_xlabel("measured decode latency (ms/token)")
    ax.set_ylabel("KL to the original (nats/token)")
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_title(f"{report['model']} on {report['runtime']}: {report['budget']}\n"
                 "gray: misses the budget; marker area ~ measured memory", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def baseline_verdicts(chosen: dict, baselines: list[dict]) -> list[str]:
    """One line per "one type everywhere" baseline: is fit's choice at least as good on quality at no higher
    measured cost, and if not, why."""
    lines, c = [], chosen["measured"]
    for b in baselines:
        name, m, q = f"`{b['candidate']}`", b["measured"], b["quality"]
        if b["candidate"] == chosen["candidate"]:
            lines.append(f"{name} is fit's choice: nothing that fits scores better.")
        elif not m or not q:
            lines.append(f"{name} was not measured (the cost model put it {'; '.join(b['misses']) or 'aside'}).")
        elif b["misses"]:
            lines.append(f"{name} misses the budget ({'; '.join(b['misses'])}); the choice fits.")
        else:
            kl = chosen["quality"]["kl_mean"]
            cost = (c["decode_ms"] / m["decode_ms"], c["memory_bytes"] / m["memory_bytes"])
            ratios = f"the choice's decode time x{cost[0]:.2f}, memory x{cost[1]:.2f} of the baseline's"
            cheaper = " and ".join(n for n, r in zip(("decode time", "memory"), cost) if r > 1)
            if kl <= q["kl_mean"] and max(cost) <= 1:
                lines.append(f"{name} fits; the choice is at least as good on quality (KL {kl:.4f} vs "
                             f"{q['kl_mean']:.4f}) at no higher measured cost ({ratios}).")
            elif kl <= q["kl_mean"]:
                lines.append(f"{name} fits and costs less in {cheaper} ({ratios}), but the choice has lower KL ({kl:.4f} vs "
                             f"{q['kl_mean']:.4f}): fit spends the budget on quality; ask for a tighter budget to "
                             "trade it back.")
            else:
                lines.append(f"{name} fits with lower KL ({q['kl_mean']:.4f} vs {kl:.4f}); the choice ranks first "
                             "on the task mean of --quality.")
    return lines


def sections(report: dict, figure: str | None) -> list[dict]:
    """The fit's report as ordered sections (shared by report.md, report.html and the demo)."""
    counts, cm = report["counts"], report["cost_model"]
    chosen = report["chosen_record"]
    if chosen:
        v = report["verify"]
        d, p, m, disk = _fmt_cost(v["measured"])
        result = [f"**Chosen: `{chosen['candidate']}`** — KL {chosen['quality']['kl_mean']:.4f} nats/token, "
                  f"perplexity {chosen['quality']['ppl_after']:.3f} (original "
                  f"{chosen['quality']['ppl_before']:.3f})"
                  + (f"; chosen on the front by its task mean ({_tasks(chosen)}; {report['config']['task_limit']} "
                     "examples per task, so small differences are noise)." if chosen.get("tasks") else "."), "",
                  f"Written to `{report['artifact']['model_dir']}` ({report['artifact']['format']}, "
                  f"{report['artifact']['bytes'] / MB:.2f} MB"
                  + (f"; GGUF `{Path(report['artifact']['gguf']).name}`" if report["artifact"].get("gguf") else "")
                  + f"). Re-measured in a fresh process: decode {d} tok/s, prefill {p} ms, memory {m} MB, "
                  f"weights on disk {disk} MB — "
                  + ("meets the budget." if not v["misses"] else "**misses: " + "; ".join(v["misses"]) + "**")]
    else:
        result = ["**Nothing fits this budget.** Nearest candidates and the limits each misses:", "",
                  "| candidate | measured | misses |", "|---|---|---|"]
        result += [f"| {n['candidate']} | {'yes' if n['measured'] else 'predicted'} | {'; '.join(n['misses'])} |"
                   for n in report["nearest"]]
    result += ["", f"{counts['considered']} candidates considered, {counts['discarded_by_cost_model']} discarded by "
               f"the cost model, {counts['scored']} scored for quality, {counts['with_measured_cost']} with a "
               f"measured cost from {counts['measurement_processes']} fresh-process measurements "
               f"({counts['measured_this_run']} run now, the rest reused from `fit.sqlite`); "
               f"{report['seconds']} s."]
    if report.get("stage_seconds"):
        result += ["", "Where the time went (s): " + ", ".join(
            f"{k} {v}" for k, v in sorted(report["stage_seconds"].items(), key=lambda kv: -kv[1]))
            + f"; {counts.get('runtime_files_written', 0)} runtime files written (each candidate's once)."]
    if counts.get("screened_out"):
        se = report.get("screen_error") or {}
        result += ["", f"{counts['screened_out']} of {counts['alive']} candidates the cost model kept were left "
                   "unscored: their KL, estimated as the sum of their parts' (each weights step at the widest "
                   "format, each format on the dense model), was dominated at its predicted cost"
                   + (f" (the estimate's median error on the {se['n']} scored: {se['median_rel']:.0%})." if se
                      else ".")]
    head = "| candidate | KL | ppl | decode tok/s | prefill ms | memory MB | disk MB | tasks | status |"
    rule = "|---|---:|---:|---:|---:|---:|---:|---|---|"

    def row(r: dict, cost: dict | None) -> str:
        return "| " + " | ".join([r["candidate"], *_quality(r), *_fmt_cost(cost), _tasks(r), r["status"]]) + " |"

    by_key = {r["candidate"]: r for r in report["candidates"]}
    front_rows = [row(by_key[k], by_key[k]["measured"]) for k in report["front"]]
    front_md = ([head, rule] + front_rows) if front_rows else ["No measured candidate fits the budget."]
    if figure:
        front_md += ["", f"![Pareto front]({figure})"]
    baseline_md = [head, rule] + [row(b, b["measured"]) for b in report["baselines"]]
    if chosen:
        baseline_md += [""] + [f"- {line}" for line in baseline_verdicts(chosen, report["baselines"])]
    err = report["prediction_error"]
    cm_md = [f"Calibrated on {len(cm['anchors'])} anchors ({', '.join(cm['anchors'])}): effective decode bandwidth "
             f"{cm['effective_bandwidth_GBps'] or 0:.2f} GB/s, decode overhead {cm['decode_overhead_ms']:.2f} ms/token, "
             f"effective prefill {cm['effective_prefill_GFLOPs'] or 0:.2f} GFLOP/s, runtime buffers "
             f"{cm['runtime_buffers_MB']:.1f} MB.", "",
             "| cost | median abs. error | max abs. error | candidates |", "|---|---:|---:|---:|"]
    cm_md += [f"| {k} | {v['median_abs']:.1%} | {v['max_abs']:.1%} | {v['n']} |" for k, v in err.items()]
    if not err:
        cm_md += ["| (every measured candidate was an anchor) | | | 0 |"]
    if report.get("verify_prediction_error"):
        cm_md += ["", "The written artifact, re-measured in a fresh process, against its prediction: " + ", ".join(
            f"{k} {v:+.1%}" for k, v in report["verify_prediction_error"].items()) + "."]
    cm_md += ["", "Errors are over measured candidates the model was not fitted to (anchors excluded). A format "
              "with its own anchor is predicted by scaling that anchor; the others by the bandwidth / FLOP "
              "line, which is where the error comes from."]
    all_rows = [row(r, r["measured"] or r["predicted"]) for r in report["candidates"]]
    all_md = ["Costs are measured where measured, else predicted (status says which).", "", head, rule] + all_rows
    notes = report["notes"] or ["Memory is the model's RSS growth in the runtime (weights, KV cache for the "
                                "measured context, activations and buffers); decode is measured at depth "
                                f"{report['config']['context'] - report['config']['gen']}."]
    return [
        {"title": "Result", "markdown": "\n".join(result)},
        {"title": "Pareto front (measured, fits the budget)", "markdown": "\n".join(front_md)},
        {"title": "Against 'one type everywhere'", "markdown": "\n".join(baseline_md)},
        {"title": "Cost model: predicted vs measured", "markdown": "\n".join(cm_md)},
        {"title": "Every candidate", "markdown": "\n".join(all_md)},
        {"title": "Notes", "markdown": "\n".join(f"- {n}" for n in notes)},
    ]


def write_reports(report: dict, out: Path) -> dict:
    """fit_report.json, pareto.png, fit_report.md (= report.md) and report.html in `out`."""
    from pocketlm.htmlreport import write_report_html

    figure = front_figure(report, out / "pareto.png")
    secs = sections(report, figure.name if figure else None)
    title = f"pocketlm fit: {report['model']} ({report['runtime']}; {report['budget']})"
    md = "\n".join([f"# {title}", ""] + [f"## {s['title']}\n\n{s['markdown']}\n" for s in secs])
    atomic_write_text(out / "fit_report.json", json.dumps(report, indent=2, default=str))
    atomic_write_text(out / "fit_report.md", md)
    atomic_write_text(out / "report.md", md)
    write_report_html(out / "report.html", title, secs)
    report["sections"] = secs
    return report
