"""Kill -9 mid-run, resume, and get exactly the uninterrupted loss curve; schedules; error messages."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pocketlm.train.fixtures import bundled_data_dir
from pocketlm.train.schedule import decay_start_step, lr_multiplier
from tests.side_by_side import running_beside

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir() -> Path:
    return bundled_data_dir()


# Long enough that the kill (once >= 13 steps are logged, past the step-8 checkpoint) lands mid-run with 50
# steps to spare even when the polling test process is starved for seconds; the resumed part crosses a
# mid-run evaluation (step 32) and WSD's decay phase (the last 20%), which the restored state must reproduce.
STEPS = 64


def _cmd(data: Path, out: Path, steps: int = STEPS) -> list[str]:
    return [sys.executable, "-m", "pocketlm.cli", "train", "--preset", "micro", "--data", str(data), "--out", str(out),
            "--steps", str(steps), "--ckpt-every", "8", "--eval-every", "32", "--threads", "1", "--no-progress"]


def _distill_cmd(teacher: Path, data: Path, out: Path, steps: int = STEPS) -> list[str]:
    return [sys.executable, "-m", "pocketlm.cli", "distill", "--teacher", str(teacher), "--student", "micro",
            "--data", str(data), "--out", str(out), "--steps", str(steps), "--batch-size", "8", "--seq-len", "64",
            "--hidden-weight", "0.5", "--ckpt-every", "8", "--threads", "1", "--no-progress"]


def _rows(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


def _losses(run: Path, log_name: str = "train_log.jsonl", keys: tuple[str, ...] = ("loss",)) -> list[tuple]:
    return [(r["step"], *(r[k] for k in keys)) for r in _rows(run / log_name) if r["kind"] == "train"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _kill_mid_run_then_resume(cmd: list[str], out: Path, log_name: str, steps: int) -> int:
    """Start `cmd`, SIGKILL it once a checkpoint exists and training went past it, re-run it to the end;
    return how many steps the killed process had logged."""
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # generous: a loaded machine can take minutes to reach step 13
    while time.time() < deadline and proc.poll() is None:
        if (out / "checkpoints" / "latest").is_file() and len(_losses(out, log_name)) >= 13:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    interrupted_at = len(_losses(out, log_name))
    assert 8 <= interrupted_at < steps, "the run must be killed mid-way"
    subprocess.run(cmd, check=True, env=_env(), cwd=ROOT, capture_output=True)
    assert not list((out / "checkpoints").glob(".tmp*"))
    return interrupted_at


def test_sigkill_then_resume_reproduces_the_uninterrupted_loss_curve(data_dir, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    with running_beside(_cmd(data_dir, full), _env(), ROOT, tmp_path / "full.stderr"):  # on the second core
        _kill_mid_run_then_resume(_cmd(data_dir, killed), killed, "train_log.jsonl", STEPS)
    assert _losses(killed) == _losses(full)  # bit-identical: data order, optimizer, schedule restored
    assert (killed / "loss_curve.png").is_file() and (killed / "model" / "pocketlm.json").is_file()


def test_distillation_resumes_bit_identically_after_sigkill(data_dir, tmp_path):
    from pocketlm.train.fixtures import trained_preset

    teacher, _ = trained_preset("micro")
    full, killed = tmp_path / "full", tmp_path / "killed"
    with running_beside(_distill_cmd(teacher, data_dir, full), _env(), ROOT, tmp_path / "full.stderr"):
        _kill_mid_run_then_resume(_distill_cmd(teacher, data_dir, killed), killed, "distill_log.jsonl", STEPS)
    terms = ("loss", "kd", "ce", "hidden", "grad_norm", "lr")
    resumed, uninterrupted = _losses(killed, "distill_log.jsonl", terms), _losses(full, "distill_log.jsonl", terms)
    assert len(resumed) == STEPS and resumed == uninterrupted  # student, projection, optimizer, schedule restored
    summary = [r for r in _rows(killed / "distill_log.jsonl") if r["kind"] == "summary"]
    assert len(summary) == 1 and summary == [r for r in _rows(full / "distill_log.jsonl") if r["kind"] == "summary"]
    assert summary[0]["kl_after"] < summary[0]["kl_before"]  # kl_before: the untrained student's, kept across the kill
    assert (killed / "model" / "pocketlm.json").is_file()


def test_schedules_match_their_definitions():
    total, warmup = 100, 10
    wsd = [lr_multiplier(s, total, warmup, "wsd", 0.1, 0.2) for s in range(total)]
    assert wsd[0] == pytest.approx(0.1) and wsd[9] == pytest.approx(1.0)
    assert decay_start_step(total, warmup, "wsd", 0.2) == 80
    assert all(m == 1.0 for m in wsd[10:80]) and wsd[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(wsd[80:], wsd[81:]))  # strictly decaying in stage two
    cos = [lr_multiplier(s, total, warmup, "cosine", 0.1) for s in range(total)]
    mid = warmup + (total - 1 - warmup) / 2
    assert lr_multiplier(int(mid), total, warmup, "cosine", 0.1) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (int(mid) - warmup) / (total - 1 - warmup))))
    assert cos[-1] == pytest.approx(0.1) and cos[warmup] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_multiplier(0, 10, 0, "linear")


def test_bad_settings_name_the_problem(data_dir, tmp_path):
    from pocketlm.train.config import TrainConfig, TrainConfigError, family_config, preset
    from pocketlm.train.trainer import train

    with pytest.raises(TrainConfigError, match="unknown preset"):
        preset("huge", 100)
    cfg = family_config(32, 1, 2, vocab_size=100)
    with pytest.raises(TrainConfigError, match="vocab_size"):
        train(TrainConfig(data_dir=str(data_dir), out_dir=str(tmp_path), steps=2, warmup_steps=0), cfg)
    cfg = family_config(32, 1, 2, vocab_size=4096)
    with pytest.raises(TrainConfigError, match="divisible"):
        TrainConfig(batch_size=3).validate(world_size=2)
    with pytest.raises(TrainConfigError, match="max_seq_len"):
        train(TrainConfig(data_dir=str(data_dir), out_dir=str(tmp_path), steps=2, warmup_steps=0,
                          seq_len=1024), cfg)


def test_temporaries_left_by_a_killed_writer_are_removed(tmp_path):
    import torch

    from pocketlm.train.checkpoint import latest_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / ".tmp_step_0000016_99999").mkdir()  # as a SIGKILL during the folder write leaves it
    (ckpts / ".tmp_step_0000016_99999" / "model.safetensors").write_bytes(b"half")
    (ckpts / ".latest.abc123.tmp").write_text("step_00")  # as a SIGKILL during the pointer write leaves it
    save_checkpoint(tmp_path, 24, model, optimizer, {"next_step": 24})
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_0000024"]
    assert latest_checkpoint(tmp_path).name == "step_0000024"
