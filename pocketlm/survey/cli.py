"""`pocketlm survey list|show|trends|capabilities|classify` and `pocketlm build`: a thin layer over the API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from pocketlm.cli_support import output_console
from pocketlm.survey.catalog import CatalogError, filter_entries, get_entry, load_catalog, parse_count

console = output_console()


def _fail(e: Exception) -> None:
    console.print(f"[red]error:[/red] {e}")
    raise typer.Exit(code=2)


def _count(n: float | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def register(app: typer.Typer) -> None:
    survey = typer.Typer(help="The surveyed SLMs (Lu et al. 2024): catalog, trends, capabilities, classify.",
                         no_args_is_help=True)

    @survey.command("list")
    def list_cmd(
        year: Optional[int] = typer.Option(None, help="release year"),
        min_params: Optional[str] = typer.Option(None, "--min-params", help="e.g. 500M"),
        max_params: Optional[str] = typer.Option(None, "--max-params", help="e.g. 2B"),
        attention: Optional[str] = typer.Option(None, help="MHA | GQA | MQA | MLA"),
        ffn: Optional[str] = typer.Option(None, help="standard | gated"),
        activation: Optional[str] = typer.Option(None, help="relu | gelu | gelu_tanh | silu"),
        norm: Optional[str] = typer.Option(None, help="layernorm | rmsnorm"),
        membership: Optional[str] = typer.Option(None, help="C, S, X or a combination such as CS"),
        as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    ) -> None:
        """List catalog models (axes from the verified configs)."""
        try:
            rows = filter_entries(load_catalog(), year=year,
                                  min_params=parse_count(min_params) if min_params else None,
                                  max_params=parse_count(max_params) if max_params else None,
                                  attention=attention, ffn=ffn, activation=activation, norm=norm,
                                  membership=membership)
        except CatalogError as e:
            _fail(e)
        if as_json:
            print(json.dumps([{"name": e.name, "release": e.release, "hf_id": e.hf_id,
                               "params_official": e.params_official, **e.axes().to_dict()} for e in rows], indent=1))
            return
        t = Table(title=f"{len(rows)} catalog models")
        t.add_column("name", no_wrap=True)
        for col in ("org", "release", "params", "attn", "ffn", "ratio", "act", "norm", "vocab", "set"):
            t.add_column(col)
        for e in rows:
            a = e.axes()
            ratio = a.ffn_ratio if isinstance(a.ffn_ratio, str) or a.ffn_ratio is None else f"{a.ffn_ratio:.2f}"
            t.add_row(e.name, e.organization[:18], e.release, _count(e.params_official), str(a.attention),
                      str(a.ffn_type), str(ratio), str(a.activation), str(a.norm), str(a.vocab_size), e.membership)
        console.print(t)

    @survey.command("show")
    def show_cmd(name: str = typer.Argument(..., help="catalog name or HF id")) -> None:
        """Everything the catalog records about one model."""
        from pocketlm.model import costs
        from pocketlm.survey.catalog import entry_to_config, params_match

        try:
            e = get_entry(name)
        except CatalogError as err:
            _fail(err)
        t = Table(title=e.name, show_header=False)
        t.add_column("field", style="bold")
        t.add_column("value")
        for k in ("organization", "release", "hf_id", "membership", "params_official_text", "params_source",
                  "training_tokens", "training_data", "arch_source", "verified_from", "notes"):
            t.add_row(k, str(getattr(e, k)))
        t.add_row("datasets", ", ".join(e.datasets) or "-")
        t.add_row("training algorithms", ", ".join(e.training_algorithms) or "-")
        for src in ("config", "survey"):
            t.add_row(f"axes ({src})", json.dumps({k: v for k, v in e.axes(src).to_dict().items() if k != "params"}))
        if e.buildable:
            counts = costs.param_counts(entry_to_config(e))
            ok, why = params_match(e, counts)
            t.add_row("params (built)", f"{counts['total']:,} total, {counts['non_embedding']:,} non-embedding")
            t.add_row("params check", ("ok: " if ok else "MISMATCH: ") + why)
            t.add_row("config", json.dumps(e.config))
        else:
            t.add_row("buildable", f"no: {e.not_buildable_reason}")
        t.add_row("leaderboard", json.dumps(e.leaderboard))
        console.print(t)

    @survey.command("trends")
    def trends_cmd(out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder for CSV + PNG files"),
                   source: str = typer.Option("both", help="survey | config | both")) -> None:
        """Architecture shares per half-year vs the survey's published Fig. 2, and dataset usage per year."""
        from pocketlm.survey.trends import AXES, axis_table, compare_published, dataset_usage, study_entries

        if source not in ("survey", "config", "both"):
            _fail(CatalogError(f"--source must be survey, config or both, got {source!r}"))
        entries = study_entries()
        for src in (("survey", "config") if source == "both" else (source,)):
            label = "the survey's labels" if src == "survey" else "verified configs"
            for axis, (_, order) in AXES.items():
                table = axis_table(entries, axis, src)
                t = Table(title=f"{axis} per half-year ({label})")
                t.add_column("half-year")
                cats = [c for c in order if any(c in v for v in table.values())]
                for c in cats:
                    t.add_column(c, justify="right")
                for hy, counts in table.items():
                    t.add_row(hy, *[str(counts.get(c, 0)) for c in cats])
                console.print(t)
            t = Table(title=f"shares vs published ({label})")
            for col in ("axis", "category", "models", "share %", "published %", "diff pp", "explanation"):
                t.add_column(col)
            for r in compare_published(entries, src):
                style = "" if r.within else "yellow"
                t.add_row(r.axis, r.category, f"{r.count}/{r.n}", f"{r.share:.1f}", f"{r.published:.0f}",
                          f"{r.diff_pp:+.1f}", r.explanation[:120], style=style)
            console.print(t)
        t = Table(title="pre-training dataset usage (models per release year)")
        usage = dataset_usage(entries)
        t.add_column("dataset")
        for y in usage:
            t.add_column(str(y), justify="right")
        for d in sorted({d for c in usage.values() for d in c}):
            t.add_row(d, *[str(usage[y].get(d, 0)) for y in usage])
        console.print(t)
        if out is not None:
            from pocketlm.survey.figures import write_trends

            for k, p in write_trends(out).items():
                console.print(f"wrote {p}")

    @survey.command("capabilities")
    def capabilities_cmd(out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder for CSV + PNG")) -> None:
        """Commonsense / problem-solving / math score against release date (leaderboard data)."""
        from pocketlm.survey.capabilities import best_per_metric, load_scores, write_capabilities

        t = Table(title="SLM capability (survey leaderboard)")
        for col in ("model", "release", "params", "commonsense", "problem solving", "math %"):
            t.add_column(col)
        for s in sorted(load_scores(), key=lambda s: (s.release is None, s.release)):
            t.add_row(s.model, str(s.release)[:7], s.params, *[("-" if v is None else f"{v:.3f}")
                                                                for v in (s.commonsense, s.problem_solving, s.math)])
        console.print(t)
        for metric, (model, value) in best_per_metric().items():
            console.print(f"best {metric}: {model} ({value})")
        if out is not None:
            for p in write_capabilities(out).values():
                console.print(f"wrote {p}")

    @survey.command("classify")
    def classify_cmd(path: Path = typer.Argument(..., help="HF model directory or config.json"),
                     k: int = typer.Option(5, min=1, help="number of nearest catalog models"),
                     as_json: bool = typer.Option(False, "--json")) -> None:
        """Place an HF config on the survey axes and name the nearest catalog models."""
        from pocketlm.survey.classify import classify

        try:
            c = classify(path, k=k)
        except (CatalogError, ValueError) as e:
            _fail(e)
        if as_json:
            print(json.dumps(c.to_dict(), indent=1))
            return
        t = Table(title=f"{path} ({c.model_type}; read via {c.source})", show_header=False)
        for key, v in c.axes.to_dict().items():
            t.add_row(key, _count(v) if key == "params" and v else str(v))
        for key, v in c.buckets.items():
            t.add_row(f"{key} bucket", str(v))
        console.print(t)
        n = Table(title="nearest catalog models")
        for col in ("model", "distance", "differs on"):
            n.add_column(col)
        for nb in c.neighbors:
            n.add_row(nb.name, f"{nb.distance:.3f}", ", ".join(nb.differs) or "-")
        console.print(n)

    app.add_typer(survey, name="survey")

    @app.command("build")
    def build_cmd(name: str = typer.Argument(..., help="catalog model name (see `pocketlm survey list`)"),
                  out: Path = typer.Option(..., "--out", "-o", help="output folder"),
                  seed: int = typer.Option(0, help="seed for the random weights"),
                  dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16"),
                  fmt: str = typer.Option("auto", "--format", help="auto | hf | native")) -> None:
        """Instantiate a catalog architecture with seeded random weights and save it (no download)."""
        from pocketlm.survey.build import build, memory_estimate, resolve_dtype
        from pocketlm.utils import available_memory, check_writable

        try:
            check_writable(out, "--out", ("config.json", "pocketlm.json", "model.safetensors"), "model folder")
            entry = get_entry(name)
            mem = memory_estimate(entry, resolve_dtype(dtype))
            if mem > available_memory():
                raise ValueError(f"{entry.name} needs {mem / 2**30:.1f} GiB for its weights but "
                                 f"{available_memory() / 2**30:.1f} GiB is available; try --dtype bfloat16")
            console.print(f"building {entry.name}: needs about {mem / 2**30:.1f} GiB of memory for the weights")
            res = build(name, out, seed=seed, dtype=dtype, fmt=fmt)
        except (CatalogError, ValueError, OSError) as e:
            _fail(e)
        console.print(f"wrote {res.out_dir} ({res.format}, {res.params:,} parameters): {res.note}")
