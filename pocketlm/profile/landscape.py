"""The survey's runtime study on this device: latency and memory vs parameters over the catalog
architectures (random weights), and side-by-side comparisons of chosen models."""

from __future__ import annotations

from pathlib import Path

import torch

from pocketlm.profile.runner import run_setting, validate
from pocketlm.profile.setting import ProfileError, Setting
from pocketlm.runtime import ModelOpenError
from pocketlm.survey.figures import save_figure, write_csv

POINT_FIELDS = ("model", "params", "attention", "n_layer", "d_model", "vocab_size", "backend", "dtype", "threads",
                "prefill_ms", "prefill_tok_s", "decode_ms", "decode_tok_s", "prefill_best_ms", "decode_best_ms",
                "peak_rss_mb", "weights_mb",
                "kv_cache_mb", "activations_mb", "other_mb", "n_prompt", "depth")


INT_FIELDS = ("params", "n_layer", "d_model", "vocab_size", "threads", "n_prompt", "depth")


def catalog_models(max_params: float, min_params: float = 0, backend: str = "torch") -> list[str]:
    """Buildable catalog entries with min_params <= total params <= max_params, smallest first;
    for the llamacpp backend, only those a llama.cpp architecture runs."""
    return [name for name, reasons in _catalog_in_range(max_params, min_params)
            if backend != "llamacpp" or not reasons]


def catalog_not_runnable(max_params: float, min_params: float = 0) -> list[dict]:
    """Buildable catalog entries in range that llama.cpp does not run, each with the reason."""
    return [{"model": name, "reason": "; ".join(reasons)}
            for name, reasons in _catalog_in_range(max_params, min_params) if reasons]


def _catalog_in_range(max_params: float, min_params: float) -> list[tuple[str, list[str]]]:
    """(name, what llama.cpp's graph lacks for it) for buildable entries in range, smallest first."""
    from pocketlm.export.gguf import unsupported_reasons
    from pocketlm.model import costs
    from pocketlm.survey.catalog import entry_to_config, load_catalog

    picked = []
    for e in load_catalog():
        if not e.buildable:
            continue
        cfg = entry_to_config(e)
        n = costs.param_counts(cfg)["total"]
        if min_params <= n <= max_params:
            picked.append((n, e.name, unsupported_reasons(cfg)))
    return [(name, reasons) for _, name, reasons in sorted(picked)]


def point(result: dict) -> dict:
    """One model's landscape row from its worker result."""
    info, mem, s = result["model_info"], result["memory"], result["setting"]
    p, d = result["prefill"][0], result["decode"][0]
    mb = 2**20
    return {
        "model": info["name"], "params": info["params"], "attention": info["attention"],
        "n_layer": info["n_layer"], "d_model": info["d_model"], "vocab_size": info["vocab_size"],
        "backend": s.get("backend", "torch"), "dtype": s["dtype"], "threads": s["threads"],
        "prefill_ms": round(p["median_ms"], 3),
        "prefill_tok_s": round(p["tok_s"], 2), "decode_ms": round(d["median_ms"], 3),
        "decode_tok_s": round(d["tok_s"], 2), "prefill_best_ms": round(p["min_ms"], 3),
        "decode_best_ms": round(d["min_ms"], 3), "peak_rss_mb": round(mem["peak_rss_bytes"] / mb, 1),
        "weights_mb": round(mem["weights_bytes"] / mb, 1), "kv_cache_mb": round(mem["kv_cache_bytes"] / mb, 2),
        "activations_mb": round((mem["activation_bytes"] or 0) / mb, 2),
        "other_mb": round(mem["other_bytes"] / mb, 1), "n_prompt": p["n_prompt"], "depth": d["depth"],
    }


def _measure(names: list[str], dtype: str, prompt: int, gen: int, depth: int, threads: int, repeat: int,
             label: str, keep_going: bool = False, failed: list | None = None, pack: bool | None = None,
             backend: str = "torch", on_point=None, gguf_dir: str | Path | None = None) -> list[dict]:
    """One point per model (each in a fresh worker); `on_point(point)` after each (to save progress)."""
    failed = failed if failed is not None else []
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    settings = [Setting(model=n, backend=backend, dtype=dtype, threads=threads, prompts=(prompt,), gen=gen,
                        depths=(depth,), repeat=repeat, warmup=1, pack=pack,
                        gguf_dir=str(gguf_dir) if gguf_dir else None) for n in names]
    validate(settings)
    points = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task(label, total=len(settings))
        for s in settings:
            bar.update(task, description=f"{label}: {s.model}")
            try:
                points.append(point(run_setting(s)))
                if on_point is not None:
                    on_point(points[-1])
            except (ProfileError, ModelOpenError) as e:  # one model failing (e.g. out of memory) must not lose the rest
                if not keep_going:
                    raise
                failed.append({"model": s.model, "error": str(e)[:500]})
            bar.advance(task)
    return points


def landscape_figure(points: list[dict], path: Path, title: str, best: bool = True) -> Path:
    """Prefill latency, decode latency and peak memory vs parameters; one labelled marker per model.

    Log-log axes (the catalog spans 20x in size and more in latency) and labels placed where they
    overlap no other label or marker (`place_labels`), so ~40 models stay readable. `best`: plot the
    fastest repeat (robust on a shared machine, where other jobs only add time) instead of the median.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    colors = {"MHA": "tab:blue", "GQA": "tab:orange", "MQA": "tab:green", "MLA": "tab:red"}
    which = "best of repeats" if best else "median"
    panels = [("prefill_best_ms" if best else "prefill_ms", f"prefill latency (ms, {which})"),
              ("decode_best_ms" if best else "decode_ms", f"decode latency (ms / token, {which})"),
              ("peak_rss_mb", "peak memory (MB RSS)")]
    fig, axes = plt.subplots(1, 3, figsize=(22, 9))
    xs = [p["params"] / 1e9 for p in points]
    for ax, (key, ylabel) in zip(axes, panels):
        ys = [p[key] for p in points]
        ax.scatter(xs, ys, color=[colors.get(p["attention"], "gray") for p in points], s=30, zorder=3)
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # plain numbers (0.5, 300) instead of 5 x 10^-1 on log axes
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
        ax.set_xlabel("parameters (billions, log)")
        ax.set_ylabel(ylabel + ", log")
        ax.grid(alpha=0.3, which="both")
    for kind, c in colors.items():
        if any(p["attention"] == kind for p in points):
            axes[0].scatter([], [], color=c, label=kind)
    axes[0].legend(title="attention", fontsize=8, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    for ax, (key, _) in zip(axes, panels):  # after the layout: labels are placed in final pixels
        place_labels(ax, xs, [p[key] for p in points], [p["model"] for p in points])
    return save_figure(fig, path)


# label offsets tried in turn (points from the marker, right then left, moving out; the first free one wins)
_OFFSETS = [(side * (4 + 8 * (k // 2)), dy) for k, dy in enumerate((3, -10, 13, -20, 23, -30, 33, -40, 43, -50))
            for side in (1, -1)]


def place_labels(ax, xs: list[float], ys: list[float], labels: list[str], fontsize: float = 6.5) -> list[tuple]:
    """Annotate each point with its label at the first offset (`_OFFSETS`) whose text box overlaps
    no label already placed and no marker; the least crowded offset if none is free. Far offsets get
    a thin leader line. Returns the chosen offsets (points), in input order."""
    ax.get_xlim(), ax.get_ylim()  # settles the autoscaled limits the data -> pixel transform uses
    to_px = ax.transData.transform
    pt = ax.figure.dpi / 72
    markers = [tuple(to_px((x, y))) for x, y in zip(xs, ys)]
    placed: list[tuple[float, float, float, float]] = []

    def box(mx: float, my: float, dx: float, dy: float, text: str) -> tuple[float, float, float, float]:
        w, h = 0.62 * fontsize * pt * len(text), 1.3 * fontsize * pt
        x0 = mx + dx * pt if dx >= 0 else mx + dx * pt - w
        y0 = my + dy * pt - 0.3 * fontsize * pt  # the descent below the baseline
        return x0, y0, x0 + w, y0 + h

    def crowding(b: tuple[float, float, float, float], own: int) -> float:
        over = sum(max(0.0, min(b[2], c[2]) - max(b[0], c[0])) * max(0.0, min(b[3], c[3]) - max(b[1], c[1]))
                   for c in placed)
        hits = sum(1 for i, (mx, my) in enumerate(markers) if i != own and b[0] - 3 <= mx <= b[2] + 3
                   and b[1] - 3 <= my <= b[3] + 3)
        return over + hits * 100.0

    chosen = []
    for i in sorted(range(len(labels)), key=lambda i: xs[i]):
        mx, my = markers[i]
        scored = [(crowding(box(mx, my, dx, dy, labels[i]), i), k) for k, (dx, dy) in enumerate(_OFFSETS)]
        best = next((k for c, k in scored if c == 0), min(scored)[1])
        dx, dy = _OFFSETS[best]
        placed.append(box(mx, my, dx, dy, labels[i]))
        far = abs(dy) > 12
        ax.annotate(labels[i], (xs[i], ys[i]), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                    ha="left" if dx >= 0 else "right",
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "gray"} if far else None)
        chosen.append((i, (dx, dy)))
    return [off for _, off in sorted(chosen)]


def _system_line(threads: int, dtype: str) -> str:
    from pocketlm.profile.system import cpu_model

    import os

    return f"{cpu_model()} ({os.cpu_count()} cores), {threads} thread{'' if threads == 1 else 's'}, {dtype}, random weights"


def read_points(path: Path) -> list[dict]:
    """Landscape rows of a CSV written before (typed as `point` returns them); [] if there is none."""
    import csv

    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: (v if k in ("model", "attention", "dtype", "backend") else
                     int(float(v)) if k in INT_FIELDS else float(v)) for k, v in row.items() if v != ""}
                for row in csv.DictReader(f)]


def landscape(max_params: float = 2e9, min_params: float = 0, dtype: str = "bf16", prompt: int = 64,
              gen: int = 8, depth: int = 64, threads: int = 0, repeat: int = 3, names: list[str] | None = None,
              out_dir: str | Path = "docs/profile_landscape", pack: bool | None = None, backend: str = "torch",
              gguf_dir: str | Path | None = None) -> dict:
    """Profile every catalog architecture in range (each in a fresh process); write CSV + figure.

    Resumable: rows already in `out_dir/landscape.csv` for the same backend, dtype, threads, prompt
    and depth are kept and their models not measured again; the CSV is rewritten after every model.
    Models that failed, and (llamacpp) catalog architectures llama.cpp does not run, are written with
    the reason to `out_dir/not_measured.csv`. `threads` 0: all cores; for the llamacpp backend `dtype`
    is a GGUF type (Q4_0, Q8_0, F16...) and `gguf_dir` keeps the exported files for reuse
    (`export_ggufs` fills it ahead of a timing window)."""
    threads = threads or torch.get_num_threads()
    whole_catalog = not names
    names = names or catalog_models(max_params, min_params, backend)
    if not names:
        raise ProfileError(f"no buildable catalog model has between {min_params:.3g} and {max_params:.3g} "
                           "parameters; raise --max-params")
    out = Path(out_dir)
    csv_file = out / "landscape.csv"

    def same(p: dict) -> bool:
        return (p.get("backend", "torch") == backend and p["dtype"].lower() == dtype.lower()
                and (p.get("threads"), p.get("n_prompt"), p.get("depth")) == (threads, prompt, depth))

    kept = read_points(csv_file)
    done = {p["model"] for p in kept if same(p)}
    todo = [n for n in names if n not in done]

    def save(points: list[dict]) -> Path:
        rows = sorted(points, key=lambda p: (p["params"], p.get("backend", ""), p["dtype"]))
        return write_csv([{k: p.get(k) for k in POINT_FIELDS} for p in rows], csv_file)

    fresh: list[dict] = []
    failed: list[dict] = []
    if todo:
        _measure(todo, dtype, prompt, gen, depth, threads, repeat, f"landscape ({backend}, {dtype})",
                 keep_going=True, failed=failed, pack=pack, backend=backend,
                 on_point=lambda p: (fresh.append(p), save(kept + fresh)), gguf_dir=gguf_dir)
    not_runnable = catalog_not_runnable(max_params, min_params) if backend == "llamacpp" and whole_catalog else []
    _save_not_measured(out / "not_measured.csv", backend, dtype, failed, not_runnable,
                       measured={p["model"] for p in fresh} | done)
    points = [p for p in kept + fresh if same(p)]
    if not points:
        raise ProfileError(f"every model failed: {failed[:3]}")
    csv_path = save(kept + fresh)
    runtime = "llama.cpp" if backend == "llamacpp" else "torch"
    fig = landscape_figure(points, out / f"landscape_{backend}_{dtype}.png" if backend != "torch" else
                           out / "landscape.png",
                           f"{runtime}: latency and memory vs parameters: prompt {prompt}, decode at depth {depth} — "
                           + _system_line(threads, dtype))
    return {"models": len(points), "measured_now": len(fresh), "skipped_measured": len(done & set(names)),
            "csv": str(csv_path), "figure": str(fig), "failed": failed, "points": points}


def _save_not_measured(path: Path, backend: str, dtype: str, failed: list[dict], not_runnable: list[dict],
                       measured: set[str]) -> None:
    """Keep one row per (model, backend, dtype) that has no measurement, with why; a model measured
    since leaves the file. Rows of other backends / dtypes are kept as they are."""
    import csv

    rows = {}
    if path.exists():
        with open(path, newline="") as f:
            rows = {(r["model"], r["backend"], r["dtype"]): r for r in csv.DictReader(f)}
    for r in not_runnable:
        rows[(r["model"], backend, dtype)] = {"model": r["model"], "backend": backend, "dtype": dtype,
                                             "stage": "not run by llama.cpp", "reason": r["reason"]}
    for r in failed:
        rows[(r["model"], backend, dtype)] = {"model": r["model"], "backend": backend, "dtype": dtype,
                                             "stage": r.get("stage", "failed"),
                                             "reason": r["error"].replace("\n", " ")[:500]}
    for m in measured:
        rows.pop((m, backend, dtype), None)
    if rows:
        write_csv(list(rows.values()), path)
    elif path.exists():
        path.unlink()


def export_ggufs(names: list[str], qtype: str, gguf_dir: str | Path, seed: int = 0, threads: int = 0) -> list[str]:
    """Export each catalog model's random-weight GGUF (`qtype`) into `gguf_dir`, where the llamacpp
    backend with the same `gguf_dir` finds it: the slow export done ahead, outside a timing window.
    Files already there are kept. Returns the paths."""
    from rich.progress import Progress

    from pocketlm.profile.llamacpp_backend import _export, cached_gguf, gguf_type
    from pocketlm.runtime import resolve

    qtype = gguf_type(qtype)
    Path(gguf_dir).mkdir(parents=True, exist_ok=True)
    paths = []
    with Progress() as bar:
        task = bar.add_task(f"GGUF {qtype}", total=len(names))
        for name in names:
            bar.update(task, description=f"GGUF {qtype}: {name}")
            ref = resolve(name)
            setting = Setting(model=name, backend="llamacpp", dtype=qtype, threads=threads, seed=seed,
                              gguf_dir=str(gguf_dir))
            paths.append(str(_export(ref, setting, qtype, cached_gguf(ref, setting, qtype))[0]))
            bar.advance(task)
    return paths


def compare(models: list[str], dtype: str = "bf16", prompt: int = 128, gen: int = 16, depth: int = 128,
            threads: int = 0, repeat: int = 3, out_dir: str | Path = "profile_compare",
            pack: bool | None = None) -> dict:
    """The same measurements for a few chosen models, as a CSV, a bar figure and ratios to the first.
    `threads` 0: all cores."""
    threads = threads or torch.get_num_threads()
    if len(models) < 2:
        raise ProfileError("compare needs two or more models, e.g. `pocketlm profile compare A.json B.json`")
    points = _measure(models, dtype, prompt, gen, depth, threads, repeat, "compare", pack=pack)
    base = points[0]
    for p in points:
        for key in ("prefill_ms", "decode_ms", "peak_rss_mb", "kv_cache_mb"):
            p[f"{key}_vs_first"] = round(p[key] / base[key], 3) if base[key] else None
    out = Path(out_dir)
    csv_path = write_csv(points, out / "compare.csv")
    fig = compare_figure(points, out / "compare.png",
                         f"prompt {prompt}, decode at depth {depth} — " + _system_line(threads, dtype))
    return {"csv": str(csv_path), "figure": str(fig), "points": points}


def compare_figure(points: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("prefill_ms", "prefill (ms)"), ("decode_ms", "decode (ms / token)"),
              ("kv_cache_mb", "KV cache (MB)"), ("peak_rss_mb", "peak RSS (MB)")]
    fig, axes = plt.subplots(1, 4, figsize=(4 * 4, 4.2))
    labels = [f"{p['model']}\n{p['params'] / 1e6:.0f}M {p['attention']}\n{p['n_layer']}L x {p['d_model']}"
              for p in points]
    for ax, (key, ylabel) in zip(axes, panels):
        ax.bar(range(len(points)), [p[key] for p in points], color="tab:blue")
        ax.set_xticks(range(len(points)))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_title(ylabel)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def merge_landscapes(csv_paths: list[str | Path], out_dir: str | Path, title: str) -> dict:
    """Combine landscape CSVs (e.g. a run and a re-run of the models that failed) into one CSV + figure."""
    import csv

    points: dict[str, dict] = {}
    for path in csv_paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                p = {k: (v if k in ("model", "attention", "dtype") else
                         int(float(v)) if k in INT_FIELDS else float(v)) for k, v in row.items()}
                points[p["model"]] = p
    ordered = sorted(points.values(), key=lambda p: p["params"])
    out = Path(out_dir)
    csv_path = write_csv([{k: p.get(k) for k in POINT_FIELDS} for p in ordered], out / "landscape.csv")
    fig = landscape_figure(ordered, out / "landscape.png", title)
    return {"models": len(ordered), "csv": str(csv_path), "figure": str(fig)}


def _catalog_configs(points: list[dict]) -> dict:
    """The catalog's ModelConfig of each landscape row's model, by name (None for a name it lacks)."""
    from pocketlm.survey.catalog import CatalogError, entry_to_config, get_entry, load_catalog

    entries, out = load_catalog(), {}
    for p in points:
        try:
            out[p["model"]] = entry_to_config(get_entry(p["model"], entries))
        except CatalogError:
            out[p["model"]] = None
    return out


def spearman(a, b) -> float:
    """Spearman's rank correlation of `a` and `b`: Pearson's on their ranks, tied values sharing their mean
    rank (catalog models share vocabularies and depths, and an arbitrary order among ties is a made-up
    correlation); NaN when either side is constant."""
    import numpy as np

    def ranks(x) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=float)
        for value in np.unique(x):
            tied = x == value
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def landscape_findings(points: list[dict], rel_size: float = 0.15) -> dict:
    """The survey's runtime findings, recomputed from landscape rows of one backend and dtype:
    how latency and memory follow parameters (log-log slope, Spearman rank correlation), the spread at
    equal size (pairs within `rel_size` of each other's parameters), and the memory outliers
    (`memory_outliers` against total and against non-embedding parameters)."""
    import numpy as np

    params = np.array([p["params"] for p in points], dtype=float)
    out: dict = {"models": len(points)}
    for key in ("prefill_best_ms", "decode_best_ms", "peak_rss_mb"):
        y = np.array([p[key] for p in points], dtype=float)
        slope, _ = np.polyfit(np.log(params), np.log(y), 1)
        out[key] = {"loglog_slope": round(float(slope), 3),
                    "spearman": round(spearman(params, y), 3)}
    pairs = []
    for i, a in enumerate(points):
        for b in points[i + 1:]:
            if abs(a["params"] - b["params"]) <= rel_size * min(a["params"], b["params"]):
                slow, fast = (a, b) if a["prefill_best_ms"] >= b["prefill_best_ms"] else (b, a)
                pairs.append({"slower": slow["model"], "faster": fast["model"],
                              "prefill_ratio": round(slow["prefill_best_ms"] / fast["prefill_best_ms"], 2),
                              "decode_ratio": round(slow["decode_best_ms"] / fast["decode_best_ms"], 2),
                              "layers": (slow["n_layer"], fast["n_layer"]), "vocab": (slow["vocab_size"],
                                                                                       fast["vocab_size"])})
    out["equal_size_pairs"] = sorted(pairs, key=lambda p: -p["prefill_ratio"])
    out["memory_outliers"] = memory_outliers(points, "params")
    out["memory_outliers_non_embedding"] = memory_outliers(points, "non_embedding")
    out["architecture_at_equal_size"] = architecture_effects(points)
    return out


def memory_outliers(points: list[dict], size: str = "params", top: int = 4) -> dict:
    """Peak memory against a line with a floor (the process and llama.cpp's buffers), fitted on total
    (`size="params"`) or non-embedding parameters (catalog counts; otherwise params minus vocab x width):
    the floor and MB per million parameters, the `top` models furthest above the line (peak / fit) with
    their vocabulary, and the rank correlation of peak / fit with the vocabulary size."""
    import numpy as np

    from pocketlm.model import costs

    configs = _catalog_configs(points)

    def non_embedding(p: dict) -> float:
        cfg = configs[p["model"]]
        return costs.param_counts(cfg)["non_embedding"] if cfg else p["params"] - p["vocab_size"] * p["d_model"]

    x = np.array([p["params"] if size == "params" else non_embedding(p) for p in points], dtype=float)
    y = np.array([p["peak_rss_mb"] for p in points], dtype=float)
    per_param, floor = np.polyfit(x, y, 1)
    ratio = y / (floor + per_param * x)
    vocab = np.array([p["vocab_size"] for p in points], dtype=float)
    vocab_rho = spearman(ratio, vocab)
    return {"floor_mb": round(float(floor), 1), "mb_per_mparam": round(float(per_param * 1e6), 3),
            "vocab_spearman": round(vocab_rho, 3) if np.isfinite(vocab_rho) else None,
            "above_fit": [{"model": points[i]["model"], "above_fit": round(float(ratio[i]), 3),
                           "vocab": points[i]["vocab_size"],
                           "vocab_share": round(points[i]["vocab_size"] * points[i]["d_model"] / points[i]["params"], 2)}
                          for i in np.argsort(-ratio)[:top]]}


def architecture_effects(points: list[dict]) -> dict:
    """How far architecture moves each metric at equal size: the spread (std of log residuals against
    the log-log fit on parameters, as a factor) and the rank correlation of those residuals with the
    shape (depth: layers; FFN width: ffn_dim / d_model; vocabulary: embedding share of parameters;
    KV heads: n_kv_head / n_head). Shapes come from the catalog (a name it lacks is left out)."""
    import numpy as np

    configs = _catalog_configs(points)
    shapes, kept = [], []
    for p in points:
        cfg = configs[p["model"]]
        if cfg is None:
            continue
        kept.append(p)
        shapes.append({"layers": cfg.n_layer, "ffn_ratio": cfg.ffn_dim(0) / cfg.d_model,
                       "vocab_share": cfg.vocab_size * cfg.d_model / p["params"],
                       "kv_ratio": cfg.kv_heads(0) / cfg.heads(0)})
    if len(kept) < 4:
        return {}

    logp = np.log([p["params"] for p in kept])
    out = {}
    for key in ("prefill_best_ms", "decode_best_ms", "peak_rss_mb"):
        y = np.log([p[key] for p in kept])
        resid = y - np.polyval(np.polyfit(logp, y, 1), logp)
        out[key] = {"spread_factor": round(float(np.exp(resid.std())), 3),
                    "residual_spearman": {k: round(spearman(resid, [s[k] for s in shapes]), 3)
                                          for k in shapes[0]}}
    return out


def dtype_ratios(points: list[dict], base: str = "F16") -> list[dict]:
    """Per model measured in several dtypes: prefill and decode speed-ups over `base` (the same model),
    largest file first."""
    by_model: dict[str, dict[str, dict]] = {}
    for p in points:
        by_model.setdefault(p["model"], {})[p["dtype"].upper()] = p
    rows = []
    for model, runs in by_model.items():
        if base not in runs or len(runs) < 2:
            continue
        ref = runs[base]
        for dtype, p in sorted(runs.items(), key=lambda kv: -kv[1]["weights_mb"]):  # F16, Q8_0, Q4_0
            rows.append({"model": model, "dtype": dtype, "weights_mb": p["weights_mb"],
                         "prefill_speedup": round(ref["prefill_best_ms"] / p["prefill_best_ms"], 2),
                         "decode_speedup": round(ref["decode_best_ms"] / p["decode_best_ms"], 2)})
    return rows


def dtype_figure(rows: list[dict], path: Path, title: str) -> Path:
    """Prefill and decode speed-up over F16 for each model and GGUF type: one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    width = 0.8 / len(dtypes)
    for ax, key in zip(axes, ("prefill_speedup", "decode_speedup")):
        for j, d in enumerate(dtypes):
            vals = [next((r[key] for r in rows if r["model"] == m and r["dtype"] == d), 0) for m in models]
            ax.bar([i + j * width for i in range(len(models))], vals, width, label=d)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xticks([i + width * (len(dtypes) - 1) / 2 for i in range(len(models))])
        ax.set_xticklabels(models, fontsize=8, rotation=15)
        ax.set_title(key.replace("_", " ") + " over F16 (same model)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(title="GGUF type")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def distinct_graphs(points: list[dict]) -> tuple[list[dict], list[dict]]:
    """One row per computation graph. Catalog entries whose configs differ only in name, source, RoPE
    base, context length or a vocabulary that pads to the same multiple of 64 are the same measurement
    with random weights; the first is kept and each later one is returned as a twin, with its prefill /
    decode / memory ratios to the kept row. Names the catalog lacks are kept as they are."""
    from dataclasses import asdict

    configs = _catalog_configs(points)
    first: dict[str, dict] = {}
    kept, twins = [], []
    for p in points:
        if configs[p["model"]] is None:
            kept.append(p)
            continue
        cfg = asdict(configs[p["model"]])
        for field in ("name", "extra", "rope_theta", "max_seq_len"):
            cfg.pop(field, None)
        cfg["vocab_size"] = -(-cfg["vocab_size"] // 64)
        key = repr(sorted(cfg.items()))
        if key not in first:
            first[key] = p
            kept.append(p)
            continue
        twin = first[key]
        twins.append({"model": p["model"], "same_as": twin["model"],
                      **{f"{k}_ratio": round(p[k] / twin[k], 3) for k in ("prefill_best_ms", "decode_best_ms",
                                                                          "peak_rss_mb")}})
    return kept, twins


def write_findings(csv_path: str | Path, dtype: str = "Q4_0", backend: str = "llamacpp") -> dict:
    """`landscape_findings` of one backend and dtype over distinct graphs (`distinct_graphs`: each
    twin's ratios to its kept row are the run's noise), and the F16 / Q8_0 / Q4_0 ratios (with their
    figure) of the models measured in several dtypes; written beside the CSV as findings.json."""
    import json

    from pocketlm.utils import atomic_write_text

    csv_path = Path(csv_path)
    points = [p for p in read_points(csv_path) if p.get("backend", "torch") == backend]
    distinct, twins = distinct_graphs([p for p in points if p["dtype"].upper() == dtype.upper()])
    found = landscape_findings(distinct)
    found["twins"] = twins
    found["dtype_ratios"] = dtype_ratios(points)
    if found["dtype_ratios"]:
        found["dtype_figure"] = str(dtype_figure(found["dtype_ratios"], csv_path.parent / "dtypes.png",
                                                 f"{backend}: quantization, same models"))
    atomic_write_text(csv_path.parent / "findings.json", json.dumps(found, indent=1))
    return found
