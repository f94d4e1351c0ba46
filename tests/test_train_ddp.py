"""Two processes under torchrun (DDP, gloo, CPU) match one process with the same global batch, for
pretraining and for distillation (whose learned hidden-state projection must be synchronised too)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pocketlm.train.fixtures import bundled_data_dir
from tests.conftest import micro_distill_args, micro_train_args
from tests.side_by_side import run_side_by_side

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """The two-process runs, pretraining and distillation, side by side (torchrun binds only ports the OS
    picks, so two at once is safe): 2 ranks x 2 micro-batches x 2 rows against the one-process references'
    1 rank x 2 micro-batches x 4 rows."""
    from pocketlm.train.fixtures import trained_preset

    root, data, (teacher, _) = tmp_path_factory.mktemp("ddp"), bundled_data_dir(), trained_preset("micro")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = run_side_by_side([TORCHRUN + micro_train_args(data, root / "train", 2),
                             TORCHRUN + micro_distill_args(teacher, data, root / "distill", 2)], env, ROOT, timeout=600)
    return {"train": (root / "train", done[0]), "distill": (root / "distill", done[1])}


def _ddp_run(ddp_runs: dict, name: str) -> Path:
    run, proc = ddp_runs[name]
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def _losses(run: Path, log_name: str, key: str = "loss") -> list[float]:
    rows = [json.loads(line) for line in (run / log_name).read_text().splitlines()]
    return [r[key] for r in rows if r["kind"] == "train"]


def _weights(run: Path, name: str = "model") -> dict[str, torch.Tensor]:
    latest = (run / "checkpoints" / "latest").read_text().strip()
    return load_file(str(run / "checkpoints" / latest / f"{name}.safetensors"))


def _assert_ddp_matches_single(ddp_run: Path, single_run: Path, log_name: str, modules: tuple[str, ...],
                               steps: int) -> list[float]:
    ddp, single = _losses(ddp_run, log_name), _losses(single_run, log_name)
    assert len(ddp) == len(single) == steps
    assert ddp == pytest.approx(single, rel=1e-4, abs=1e-5)
    for name in modules:
        w_ddp, w_single = _weights(ddp_run, name), _weights(single_run, name)
        assert w_ddp.keys() == w_single.keys()
        for k in w_ddp:
            torch.testing.assert_close(w_ddp[k], w_single[k], rtol=1e-4, atol=1e-5)
    return single


def test_two_process_ddp_matches_one_process(ddp_runs, single_process_micro_runs):
    single = _assert_ddp_matches_single(_ddp_run(ddp_runs, "train"), single_process_micro_runs["train"],
                                        "train_log.jsonl", ("model",), 20)
    assert single[-1] < single[0] - 0.5  # it did learn


def test_two_process_ddp_distillation_matches_one_process(ddp_runs, single_process_micro_runs):
    ddp_run, single_run = _ddp_run(ddp_runs, "distill"), single_process_micro_runs["distill"]
    single = _assert_ddp_matches_single(ddp_run, single_run, "distill_log.jsonl", ("model", "projection"), 12)
    assert single[-1] < single[0]  # it did learn
    kd_ddp, kd_single = _losses(ddp_run, "distill_log.jsonl", "kd"), _losses(single_run, "distill_log.jsonl", "kd")
    assert kd_ddp == pytest.approx(kd_single, rel=1e-4, abs=1e-5)
