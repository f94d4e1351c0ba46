"""`pocketlm insights`: reproduce the survey's insights on this machine, one figure and table each."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def insights(names: list[str] = typer.Argument(None, help="insights to run (default: all): gqa, architecture, "
                                                             "memory, quantization, hardware, icl, filtering, "
                                                             "overtraining, open_data"),
                 quick: bool = typer.Option(False, help="small settings: shorter contexts and runs, analytic "
                                                        "memory, no toy training run (minutes, not an hour)"),
                 out: Path = typer.Option(Path("insights_out"),
                                          help="folder for figures, CSVs and insights.md")) -> None:
        """Reproduce the survey's insights: claim, measured numbers, agree / partly / disagree."""
        from rich.console import Console
        from rich.table import Table

        from pocketlm.insights.suite import check_names, run_suite

        check_names(names or [])
        records, failed = run_suite(names or [], out, quick=quick)
        table = Table("insight", "verdict", "seconds", "CPU s", "measured")
        for r in records:
            table.add_row(r.name, r.verdict, f"{r.seconds:.0f}", f"{r.cpu_seconds:.0f}", r.summary)
        console = Console()
        console.print(table)
        console.print(f"total: {sum(r.seconds for r in records):.0f} s wall, {sum(r.cpu_seconds for r in records):.0f} s "
                      f"CPU; report: {out / 'insights.md'}")
        if failed:
            console.print(f"[red]failed: {', '.join(failed)} (see {out}/<name>/error.txt)")
            raise typer.Exit(1)
