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

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _run_ddp(args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(TORCHRUN + args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


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


def test_two_process_ddp_matches_one_process(single_process_micro_runs, tmp_path):
    # 2 ranks x 2 micro-batches x 2 rows against the reference's 1 rank x 2 micro-batches x 4 rows
    _run_ddp(micro_train_args(bundled_data_dir(), tmp_path / "ddp", 2))
    single = _assert_ddp_matches_single(tmp_path / "ddp", single_process_micro_runs["train"], "train_log.jsonl",
                                        ("model",), 20)
    assert single[-1] < single[0] - 0.5  # it did learn


def test_two_process_ddp_distillation_matches_one_process(single_process_micro_runs, tmp_path):
    from pocketlm.train.fixtures import trained_preset

    teacher, _ = trained_preset("micro")
    _run_ddp(micro_distill_args(teacher, bundled_data_dir(), tmp_path / "ddp", 2))
    single_run = single_process_micro_runs["distill"]
    single = _assert_ddp_matches_single(tmp_path / "ddp", single_run, "distill_log.jsonl", ("model", "projection"), 12)
    assert single[-1] < single[0]  # it did learn
    kd_ddp, kd_single = _losses(tmp_path / "ddp", "distill_log.jsonl", "kd"), _losses(single_run, "distill_log.jsonl",
                                                                                    "kd")
    assert kd_ddp == pytest.approx(kd_single, rel=1e-4, abs=1e-5)
