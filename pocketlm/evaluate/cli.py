"""`pocketlm eval ...`: thin CLI over pocketlm.evaluate.

    pocketlm eval MODEL --tasks arc_easy,hellaswag --shots 0,5 [--data-dir DIR] [--limit N] [-o results.json]
    pocketlm eval icl MODEL [MODEL...]      0/1/5-shot study -> table + figure
    pocketlm eval compare A.json B.json     paired bootstrap CI of B - A
    pocketlm eval kl BASE OTHER --text F    KL divergence + top-1 agreement of next-token distributions
    --precision int4 (run, icl; OTHER of kl) scores the model at that precision, as `profile` times it
    pocketlm eval tasks                     list the built-in task specs
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from pocketlm.cli_support import RunByDefault

eval_app = typer.Typer(cls=RunByDefault, no_args_is_help=True, add_completion=False,
                       help="Measure capability: benchmark suite, few-shot ICL, paired comparison, KL.")


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--shots takes comma-separated integers like 0,1,5, got {text!r}")


PRECISION_HELP = ("fp32 | bf16 | fp16 | int8 | int4 (weight-only, RTN, group 32); default: the checkpoint's own "
                  "(a quantized pocketlm checkpoint's stored precision, else fp32)")


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@eval_app.command("run")
def run_cmd(model: Path = typer.Argument(..., help="model folder (pocketlm or Hugging Face)"),
            tasks: str = typer.Option("hellaswag,arc_easy,piqa,winogrande,boolq", "--tasks", "-t",
                                      help="comma-separated task names or .yaml spec paths"),
            shots: str = typer.Option("0", "--shots", help="comma-separated shot counts, e.g. 0,1,5"),
            data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="root of full data copies "
                                                    "(eval/<task>/...); default: bundled subsets"),
            limit: Optional[int] = typer.Option(None, "--limit", min=1, help="first N documents per task"),
            seed: int = typer.Option(1234, "--seed", help="few-shot sampling seed (lm-eval's default)"),
            tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="tokenizer folder if not with the model"),
            output: Optional[Path] = typer.Option(None, "--output", "-o", help="results JSON (per-example records)"),
            precision: Optional[str] = typer.Option(None, "--precision", help=PRECISION_HELP),
            allow_any_data_path: bool = typer.Option(False, "--allow-any-data-path", help="let task specs read "
                                                     "data files outside --data-dir and their own folder"),
            ) -> None:
    """Evaluate MODEL on task specs at each shot count; prints a table, writes JSON with -o."""
    from .loading import load_for_eval
    from .runner import evaluate, summary_table
    from .sources import any_data_path
    from .spec import get_spec
    try:
        shot_counts = _ints(shots)  # every option and task spec is checked before the model loads
        if not str(model).startswith("proxy:") and not model.exists():
            raise FileNotFoundError(f"model {model} does not exist")
        with any_data_path(allow_any_data_path):
            specs = [get_spec(t) for t in tasks.split(",") if t]
        m, tok = load_for_eval(model, tokenizer, precision=precision)
        res = evaluate(m, tok, specs, shots=shot_counts, limit=limit,
                       data_dir=data_dir, seed=seed, model_name=str(model), output=output,
                       allow_any_data_path=allow_any_data_path)
    except (ValueError, FileNotFoundError, OSError) as e:
        _fail(e)
    typer.echo(summary_table(res))
    for g, by_shot in res["groups"].items():
        for k, entry in by_shot.items():
            typer.echo(f"{g} ({k}-shot): {entry['score']:.4f} over {len(entry['tasks'])} task(s)")
    for s in res["skipped"]:
        typer.echo(f"skipped: {s}")
    if output:
        typer.echo(f"wrote {output}")


@eval_app.command("tasks")
def tasks_cmd() -> None:
    """List the built-in task specs."""
    from .spec import builtin_tasks, get_spec
    for name in builtin_tasks():
        s = get_spec(name)
        typer.echo(f"{name:24s} {s.group:18s} {s.output_type:22s} {', '.join(s.metrics)}")


@eval_app.command("icl")
def icl_cmd(models: List[Path] = typer.Argument(..., help="one or more model folders (e.g. a size series)"),
            tasks: Optional[str] = typer.Option(None, "--tasks", help="default: the survey's 8 ICL tasks"),
            shots: str = typer.Option("0,1,5", "--shots"),
            data_dir: Optional[Path] = typer.Option(None, "--data-dir"),
            limit: Optional[int] = typer.Option(None, "--limit", min=1),
            out_dir: Path = typer.Option(Path("runs/icl"), "--out", help="folder for table, figure, JSON"),
            precision: Optional[str] = typer.Option(None, "--precision", help=PRECISION_HELP)) -> None:
    """In-context learning study: scores at 0/1/5 shots, gain per task and per model size."""
    from .icl import ICL_TASKS, icl_study, icl_table
    from .loading import count_parameters, load_for_eval
    try:
        loaded = []
        for p in models:
            m, tok = load_for_eval(p, precision=precision)
            loaded.append((p.name, m, tok, count_parameters(m)))
        study = icl_study(loaded, tasks=tasks.split(",") if tasks else ICL_TASKS, shots=_ints(shots), limit=limit,
                          data_dir=data_dir, out_dir=out_dir)
    except (ValueError, FileNotFoundError, OSError) as e:
        _fail(e)
    typer.echo(icl_table(study))
    typer.echo(f"wrote {out_dir}/icl_table.md and {out_dir}/icl_gain.png")


@eval_app.command("compare")
def compare_cmd(a: Path = typer.Argument(..., help="results JSON of model A (baseline)"),
                b: Path = typer.Argument(..., help="results JSON of model B"),
                n_boot: int = typer.Option(10000, "--n-boot"), seed: int = typer.Option(0, "--seed"),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Paired bootstrap confidence interval of B - A on the examples both files scored."""
    from .compare import compare_results, compare_table
    from .runner import load_results
    try:
        rows = compare_results(load_results(a), load_results(b), n_boot=n_boot, seed=seed)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    typer.echo(json.dumps(rows, indent=1) if as_json else compare_table(rows, a.stem, b.stem))


@eval_app.command("kl")
def kl_cmd(base: Path = typer.Argument(..., help="reference model folder"),
           other: Path = typer.Argument(..., help="model to compare (e.g. its quantized or pruned copy)"),
           text: Path = typer.Option(..., "--text", help="a UTF-8 text file"),
           window: int = typer.Option(512, "--window"), max_tokens: Optional[int] = typer.Option(4096, "--max-tokens"),
           precision: Optional[str] = typer.Option(None, "--precision", help="precision of OTHER (BASE opens at "
                                                   "its own): " + PRECISION_HELP)) -> None:
    """KL(base || other) and top-1 agreement of next-token distributions over a text."""
    from .kl import next_token_kl
    from .loading import load_for_eval
    try:
        if not text.is_file():
            raise FileNotFoundError(f"--text {text} does not exist")
        mb, tok = load_for_eval(base)
        mo, _ = load_for_eval(other, precision=precision)
        res = next_token_kl(mb, mo, tok, text.read_text(encoding="utf-8"), window=window, max_tokens=max_tokens)
    except (ValueError, FileNotFoundError, OSError) as e:
        _fail(e)
    for k, v in res.items():
        typer.echo(f"{k:15s} {v:.6g}" if isinstance(v, float) else f"{k:15s} {v}")


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
