"""Two processes under torchrun (DDP, gloo, CPU) match one process with the same global batch."""

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


def _run(prefix: list[str], data: Path, out: Path, micro: int) -> None:
    cmd = prefix + ["-m", "pocketlm.cli", "train", "--preset", "micro", "--data", str(data), "--out", str(out),
                    "--steps", "12", "--batch-size", "8", "--micro-batch", str(micro), "--eval-every", "12",
                    "--ckpt-every", "12", "--threads", "1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    latest = (run / "checkpoints" / "latest").read_text().strip()
    return load_file(str(run / "checkpoints" / latest / "model.safetensors"))


def test_two_process_ddp_matches_one_process(tmp_path):
    data = bundled_data_dir()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    _run(torchrun, data, tmp_path / "ddp", micro=2)  # 2 ranks x 2 micro-batches x 2 rows
    _run([sys.executable], data, tmp_path / "single", micro=4)  # 1 rank x 2 micro-batches x 4 rows
    ddp, single = _losses(tmp_path / "ddp"), _losses(tmp_path / "single")
    assert len(ddp) == len(single) == 12
    assert ddp == pytest.approx(single, rel=1e-4, abs=1e-5)
    assert single[-1] < single[0] - 0.5  # it did learn
    w_ddp, w_single = _weights(tmp_path / "ddp"), _weights(tmp_path / "single")
    assert w_ddp.keys() == w_single.keys()
    for k in w_ddp:
        torch.testing.assert_close(w_ddp[k], w_single[k], rtol=1e-4, atol=1e-5)
