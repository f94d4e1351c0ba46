"""Results as flat rows (one per setting and test, like llama-bench), a rich table, CSV and JSON."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from pocketlm.utils import atomic_write_text

MB = 2**20
ROW_FIELDS = ("model", "params", "backend", "dtype", "threads", "compile_s", "test", "n_prompt", "depth", "n_gen",
              "median_ms", "iqr_ms", "min_ms", "max_ms", "tok_s", "peak_rss_mb", "weights_mb", "kv_cache_mb",
              "activations_mb", "other_mb", "disk_mb", "device", "cpu", "kernels", "decode_step")


def _mb(v) -> float | None:
    return None if v is None else round(v / MB, 2)


def rows(results: list[dict]) -> list[dict]:
    out = []
    for r in results:
        s, mem = r["setting"], r["memory"]
        common = {
            "model": r["model_info"]["name"] or s["model"], "params": r["model_info"].get("params"),
            "backend": s["backend"], "dtype": r.get("gguf_type", s["dtype"]) if s["backend"] == "llamacpp"
            else s["dtype"], "threads": s["threads"],
            "compile_s": None if r.get("compile_s") is None else round(r["compile_s"], 1),
            "peak_rss_mb": _mb(mem["peak_rss_bytes"]), "weights_mb": _mb(mem["weights_bytes"]),
            "kv_cache_mb": _mb(mem["kv_cache_bytes"]), "activations_mb": _mb(mem["activation_bytes"]),
            "other_mb": _mb(mem["other_bytes"]), "disk_mb": _mb(r["disk_bytes"]),
            "device": r["system"]["device"], "cpu": r["system"]["cpu"], "kernels": kernels_label(r.get("kernels")),
            "decode_step": r.get("decode_step"),  # torch: eager | native | compiled flat; llama.cpp: none
        }
        for p in r["prefill"]:
            out.append(dict(common, test=f"pp{p['n_prompt']}", n_prompt=p["n_prompt"], depth=0, n_gen=0,
                            **{k: round(p[k], 3) for k in ("median_ms", "iqr_ms", "min_ms", "max_ms", "tok_s")}))
        for d in r["decode"]:
            out.append(dict(common, test=f"tg{d['n_gen']}@d{d['depth']}", n_prompt=0, depth=d["depth"],
                            n_gen=d["n_gen"],
                            **{k: round(d[k], 3) for k in ("median_ms", "iqr_ms", "min_ms", "max_ms", "tok_s")}))
    return [{k: row.get(k) for k in ROW_FIELDS} for row in out]


def kernels_label(kernels: dict[str, str] | None) -> str | None:
    """The paths a torch run's linears took, by count of shapes: e.g. `mkldnn 4, transposed 1`."""
    if not kernels:
        return None
    counts: dict[str, int] = {}
    for path in kernels.values():
        counts[path] = counts.get(path, 0) + 1
    return ", ".join(f"{p} {n}" for p, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def to_csv(table: list[dict], fields=ROW_FIELDS) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore")
    w.writeheader()
    w.writerows(table)
    return buf.getvalue()


def write_outputs(results: list[dict], out_dir: str | Path, stem: str = "profile") -> dict:
    """profile.csv (rows) and profile.json (everything); returns their paths."""
    out_dir = Path(out_dir)
    table = rows(results)
    csv_path, json_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.json"
    atomic_write_text(csv_path, to_csv(table))
    atomic_write_text(json_path, json.dumps({"rows": table, "results": results}, indent=1))
    return {"csv": str(csv_path), "json": str(json_path)}


def rich_table(table: list[dict], title: str = "pocketlm profile"):
    from rich.table import Table

    t = Table(title=title)
    cols = ("model", "backend", "dtype", "threads", "test", "median_ms", "iqr_ms", "tok_s", "peak_rss_mb",
            "weights_mb", "kv_cache_mb", "activations_mb", "other_mb", "kernels", "decode_step")
    for c in cols:
        t.add_column(c, justify="left" if c in ("model", "backend", "dtype", "test") else "right")
    for row in table:
        row = dict(row, backend=row["backend"] + (" compiled" if row.get("compile_s") is not None else ""))
        t.add_row(*["" if row.get(c) is None else (f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]))
                    for c in cols])
    return t


def breakdown_table(results: list[dict]):
    from rich.table import Table

    from pocketlm.profile.breakdown import KINDS

    t = Table(title="share of time by module kind (hooked runs)")
    for c in ("model", "dtype", "threads", "phase") + KINDS:
        t.add_column(c)
    for r in results:
        b = r.get("breakdown")
        if not b:
            continue
        s = r["setting"]
        for phase in ("prefill", "decode"):
            t.add_row(r["model_info"]["name"], s["dtype"], str(s["threads"]), phase,
                      *[f"{100 * b[phase]['share'][k]:.1f}%" for k in KINDS])
    return t
