"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.side_by_side import run_side_by_side

ROOT = Path(__file__).resolve().parents[1]


def micro_train_args(data: Path, out: Path, micro: int, *extra: str, steps: int = 20) -> list[str]:
    """`pocketlm train` of the micro preset: global batch 8 in micro-batches of `micro` rows per process."""
    return ["-m", "pocketlm.cli", "train", "--preset", "micro", "--data", str(data), "--out", str(out),
            "--steps", str(steps), "--batch-size", "8", "--micro-batch", str(micro), "--ckpt-every", str(steps // 2),
            "--eval-every", str(steps // 2), "--threads", "1", "--no-progress", *extra]


def micro_distill_args(teacher: Path, data: Path, out: Path, micro: int, *extra: str) -> list[str]:
    """`pocketlm distill` of a micro student from `teacher`, 12 steps of global batch 8."""
    return ["-m", "pocketlm.cli", "distill", "--teacher", str(teacher), "--student", "micro", "--data", str(data),
            "--seq-len", "64", "--hidden-weight", "0.5", "--lr", "1e-2", "--steps", "12", "--batch-size", "8",
            "--micro-batch", str(micro), "--out", str(out), "--threads", "1", "--no-progress", *extra]


@pytest.fixture(scope="session")
def single_process_micro_runs(tmp_path_factory) -> dict[str, Path]:
    """The one-process references that the DDP and FSDP tests compare two processes against: 20 steps of
    micro pretraining and 12 of distillation (each with micro-batches of 4 rows), run side by side."""
    from pocketlm.train.fixtures import bundled_data_dir, trained_preset

    data, (teacher, _) = bundled_data_dir(), trained_preset("micro")
    root = tmp_path_factory.mktemp("single_process")
    runs = {"train": root / "train", "distill": root / "distill"}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = run_side_by_side([[sys.executable, *micro_train_args(data, runs["train"], 4)],
                             [sys.executable, *micro_distill_args(teacher, data, runs["distill"], 4)]], env, ROOT)
    for proc in done:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return runs
