"""The root command: `info` on a catalog name and on a model directory, and one-line user errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from pocketlm.interop import save_native
from pocketlm.model import costs
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import Transformer
from tests.side_by_side import run_side_by_side


MQA_CFG = ModelConfig(vocab_size=300, d_model=64, n_layer=2, n_head=4, n_kv_head=1, intermediate_size=96)


@pytest.fixture(scope="module")
def info_runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """`pocketlm info` in three fresh processes, side by side: on a model folder, on a catalog name, on a
    name that does not exist."""
    folder = tmp_path_factory.mktemp("mqa")
    save_native(Transformer(MQA_CFG), folder)
    argvs = {"folder": ["info", str(folder), "--json", "--context", "128"],
             "catalog": ["info", "SmolLM-135M", "--json"], "unknown": ["info", "NoSuchModel"]}
    done = run_side_by_side([[sys.executable, "-m", "pocketlm.cli", *a] for a in argvs.values()], timeout=120)
    return dict(zip(argvs, done))


def test_info_json_matches_analytic_costs(info_runs):
    out, cfg = info_runs["folder"], MQA_CFG
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["axes"]["attention"] == "MQA"
    assert info["costs"]["params_total"] == costs.param_counts(cfg)["total"]
    assert info["costs"]["kv_cache_mib_bf16"] * 2**20 == costs.kv_cache_bytes(cfg, 128, 2)


def test_info_on_catalog_name(info_runs):
    out = info_runs["catalog"]
    assert out.returncode == 0, out.stderr
    # 49152 x 576 embedding (tied) + 30 blocks x 3,540,096 + a 576-wide final norm
    assert json.loads(out.stdout)["costs"]["params_total"] == 28_311_552 + 30 * 3_540_096 + 576


def test_user_error_is_one_line_without_traceback(info_runs):
    out = info_runs["unknown"]
    assert out.returncode == 2
    assert out.stderr.startswith("error: NoSuchModel") and "Traceback" not in out.stderr


HELP_PROBE = r"""
import contextlib, io, json, sys
import click
from typer.main import get_command
from pocketlm.cli import app

root = get_command(app)

def paths(cmd, prefix=()):
    yield prefix
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from paths(sub, prefix + (name,))

seen = []
for path in paths(root):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            root.main([*path, "--help"], prog_name="pocketlm", standalone_mode=False)
        except SystemExit:
            pass
    heavy = [m for m in ("torch", "transformers") if m in sys.modules]
    seen.append({"command": " ".join(path), "heavy": heavy, "usage": "Usage:" in out.getvalue()})
print(json.dumps(seen))
"""


def test_every_help_imports_neither_torch_nor_transformers():
    proc = subprocess.run([sys.executable, "-c", HELP_PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    seen = {c["command"]: c for c in json.loads(proc.stdout.strip().splitlines()[-1])}
    assert {"", "info", "build", "train", "distill", "demo", "survey list", "data prepare", "eval run", "eval kl",
            "profile run", "profile landscape", "profile compare"} <= set(seen)
    assert all(c["usage"] for c in seen.values()), [k for k, c in seen.items() if not c["usage"]]
    assert {k: c["heavy"] for k, c in seen.items() if c["heavy"]} == {}


def test_registration_is_an_explicit_list_and_a_broken_module_fails_loudly(tmp_path, monkeypatch):
    from pocketlm.cli import COMMAND_MODULES, build_app

    names = {c.name or c.callback.__name__ for c in build_app().registered_commands}
    groups = {g.name for g in build_app().registered_groups}
    assert {"info", "build", "train", "distill", "demo"} <= names and {"survey", "data", "eval", "profile"} <= groups
    (tmp_path / "broken_commands.py").write_text("import pocketlm_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="pocketlm_no_such_dependency"):
        build_app((*COMMAND_MODULES, "broken_commands"))
    with pytest.raises(ModuleNotFoundError, match="pocketlm.profile.clii"):  # a typo does not vanish
        build_app(("pocketlm.profile.clii",))


def test_one_default_subcommand_mechanism():
    import typer
    from typer.testing import CliRunner

    from pocketlm.cli_support import RunByDefault

    group = typer.Typer(cls=RunByDefault, no_args_is_help=True)

    @group.command("run")
    def run(model: str, n: int = 1) -> None:
        typer.echo(f"run {model} {n}")

    @group.command("other")
    def other() -> None:
        typer.echo("other")

    app = typer.Typer()
    app.command("noop")(lambda: None)
    app.add_typer(group, name="g")
    runner = CliRunner()
    assert runner.invoke(app, ["g", "MODEL"]).output == "run MODEL 1\n"
    assert runner.invoke(app, ["g", "--n", "2", "MODEL"]).output == "run MODEL 2\n"  # an option first
    assert runner.invoke(app, ["g", "other"]).output == "other\n"
    assert "Commands" in runner.invoke(app, ["g", "--help"]).output
    assert "Commands" in runner.invoke(app, ["g"]).output
    from pocketlm.cli import app as pocketlm  # profile and eval both use it
    from pocketlm.runtime import ModelOpenError

    out = runner.invoke(pocketlm, ["profile", "--gen", "2", "no/such/dir"])
    assert isinstance(out.exception, ModelOpenError) and "no such directory" in str(out.exception)
    out = runner.invoke(pocketlm, ["eval", "--limit", "1", "no/such/dir"])
    assert out.exit_code == 2 and "does not exist" in out.output


def test_tables_print_whole_when_not_a_terminal(capsys):
    from rich.table import Table

    from pocketlm.cli_support import output_console

    table = Table(title="wide")
    columns = [f"column_{i:02d}" for i in range(24)]
    for c in columns:
        table.add_column(c)
    table.add_row(*[f"value-{i:02d}-0123456789" for i in range(24)])
    output_console().print(table)  # pytest captures stdout: not a terminal
    text = capsys.readouterr().out
    assert "…" not in text
    assert all(c in text for c in columns) and all(f"value-{i:02d}-0123456789" in text for i in range(24))
    assert max(len(line) for line in text.splitlines()) > 80


def test_demo_refuses_to_skip_the_step_the_others_need(tmp_path):
    from pocketlm.demo import run_demo

    with pytest.raises(ValueError, match="train always runs"):
        run_demo(tmp_path / "out", skip=("train",))
    with pytest.raises(ValueError, match="--skip profil: choose from model, survey, evaluate, profile"):
        run_demo(tmp_path / "out", skip=("profil",))
    assert not (tmp_path / "out").exists()
