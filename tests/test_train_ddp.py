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

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _run(prefix: list[str], args: list[str], out: Path, micro: int) -> None:
    cmd = prefix + ["-m", "pocketlm.cli", *args, "--out", str(out), "--steps", "12", "--batch-size", "8",
                    "--micro-batch", str(micro), "--threads", "1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _losses(run: Path, log_name: str, key: str = "loss") -> list[float]:
    rows = [json.loads(line) for line in (run / log_name).read_text().splitlines()]
    return [r[key] for r in rows if r["kind"] == "train"]


def _weights(run: Path, name: str = "model") -> dict[str, torch.Tensor]:
    latest = (run / "checkpoints" / "latest").read_text().strip()
    return load_file(str(run / "checkpoints" / latest / f"{name}.safetensors"))


def _assert_ddp_matches_single(args: list[str], tmp_path: Path, log_name: str, modules: tuple[str, ...]) -> list[float]:
    _run(TORCHRUN, args, tmp_path / "ddp", micro=2)  # 2 ranks x 2 micro-batches x 2 rows
    _run([sys.executable], args, tmp_path / "single", micro=4)  # 1 rank x 2 micro-batches x 4 rows
    ddp, single = _losses(tmp_path / "ddp", log_name), _losses(tmp_path / "single", log_name)
    assert len(ddp) == len(single) == 12
    assert ddp == pytest.approx(single, rel=1e-4, abs=1e-5)
    for name in modules:
        w_ddp, w_single = _weights(tmp_path / "ddp", name), _weights(tmp_path / "single", name)
        assert w_ddp.keys() == w_single.keys()
        for k in w_ddp:
            torch.testing.assert_close(w_ddp[k], w_single[k], rtol=1e-4, atol=1e-5)
    return single


def test_two_process_ddp_matches_one_process(tmp_path):
    args = ["train", "--preset", "micro", "--data", str(bundled_data_dir()), "--eval-every", "12", "--ckpt-every", "12"]
    single = _assert_ddp_matches_single(args, tmp_path, "train_log.jsonl", ("model",))
    assert single[-1] < single[0] - 0.5  # it did learn


def test_two_process_ddp_distillation_matches_one_process(tmp_path):
    from pocketlm.train.fixtures import trained_preset

    teacher, _ = trained_preset("micro")
    args = ["distill", "--teacher", str(teacher), "--student", "micro", "--data", str(bundled_data_dir()),
            "--seq-len", "64", "--hidden-weight", "0.5", "--lr", "1e-2"]
    single = _assert_ddp_matches_single(args, tmp_path, "distill_log.jsonl", ("model", "projection"))
    assert single[-1] < single[0]  # it did learn
    kd_ddp, kd_single = _losses(tmp_path / "ddp", "distill_log.jsonl", "kd"), _losses(tmp_path / "single",
                                                                                    "distill_log.jsonl", "kd")
    assert kd_ddp == pytest.approx(kd_single, rel=1e-4, abs=1e-5)
