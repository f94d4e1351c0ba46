"""FSDP2 in the shared loop, on CPU under gloo (FSDP2 runs there in torch 2.13): two sharded processes
match one unsharded process; a sharded (DCP) checkpoint written by two processes resumes in one;
a rank killed in the middle of a save leaves the previous checkpoint usable; bad input is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pocketlm.train.config import TrainConfig, TrainConfigError
from pocketlm.train.fixtures import bundled_data_dir

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
STEPS = 20


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _train_args(out: Path, micro: int, *extra: str, steps: int = STEPS) -> list[str]:
    return ["-m", "pocketlm.cli", "train", "--preset", "micro", "--data", str(bundled_data_dir()), "--out", str(out),
            "--steps", str(steps), "--batch-size", "8", "--micro-batch", str(micro), "--ckpt-every", str(steps // 2),
            "--eval-every", str(steps // 2), "--threads", "1", "--no-progress", *extra]


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def _exported(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One 2-process FSDP run and one single-process run of the same 20 steps (global batch 8)."""
    root = tmp_path_factory.mktemp("fsdp")
    runs = {"fsdp": root / "fsdp", "single": root / "single"}
    _run(TORCHRUN + ["--nproc_per_node", "2"] + _train_args(runs["fsdp"], 2, "--parallel", "fsdp"))
    _run([sys.executable] + _train_args(runs["single"], 4))
    return runs


def test_two_process_fsdp_matches_one_process(runs):
    fsdp, single = _losses(runs["fsdp"]), _losses(runs["single"])
    assert sorted(fsdp) == sorted(single) == list(range(STEPS))
    assert list(fsdp.values()) == pytest.approx(list(single.values()), rel=1e-4, abs=1e-5)
    assert single[STEPS - 1] < single[0] - 0.5  # it did learn
    ckpt = runs["fsdp"] / "checkpoints" / "step_0000020"
    assert sorted(p.name for p in ckpt.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # sharded, by 2
    w_fsdp, w_single = _exported(runs["fsdp"]), _exported(runs["single"])  # the usual model folder
    assert w_fsdp.keys() == w_single.keys()
    for k in w_fsdp:
        torch.testing.assert_close(w_fsdp[k], w_single[k], rtol=1e-4, atol=1e-5)


def _from_step_10(src: Path, dst: Path) -> Path:
    """A copy of run `src` whose newest checkpoint is the one of step 10."""
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "checkpoints" / "step_0000020")
    (dst / "checkpoints" / "latest").write_text("step_0000010")
    return dst


def test_checkpoint_of_two_processes_resumes_in_one(runs, tmp_path):
    """Resharding load: the step-10 checkpoint of 2 FSDP processes resumed by 1 process, under torchrun
    with FSDP and as a plain process, gives one bit-identical loss curve. Its first loss, computed from the
    restored weights, is the 2-process run's bit for bit; later steps match it to 1e-4 (one process sums
    gradients and the gradient norm in another order than two)."""
    under_torchrun = _from_step_10(runs["fsdp"], tmp_path / "torchrun1")
    plain = _from_step_10(runs["fsdp"], tmp_path / "plain")
    _run(TORCHRUN + ["--nproc_per_node", "1"] + _train_args(under_torchrun, 4, "--parallel", "fsdp"))
    _run([sys.executable] + _train_args(plain, 4))
    resumed, resumed_plain, original = _losses(under_torchrun), _losses(plain), _losses(runs["fsdp"])
    after = list(range(10, STEPS))
    assert [resumed[s] for s in after] == [resumed_plain[s] for s in after]  # bit-identical
    assert resumed[10] == original[10]
    assert [resumed[s] for s in after] == pytest.approx([original[s] for s in after], rel=1e-4, abs=1e-5)
    assert [resumed[s] for s in range(10)] == [original[s] for s in range(10)]  # log kept up to the checkpoint


KILL_RANK_1_MID_SAVE = """
import os, signal, sys
import torch.distributed.checkpoint.filesystem as fs
write = fs.FileSystemWriter.write_data
def write_then_die(self, plan, planner):
    if os.environ["RANK"] == "1" and "step_0000006" in str(self.path):
        os.kill(os.getpid(), signal.SIGKILL)
    return write(self, plan, planner)
fs.FileSystemWriter.write_data = write_then_die
from pocketlm.cli import main
sys.argv = ["pocketlm"] + sys.argv[1:]
main()
"""


def test_rank_killed_mid_save_leaves_the_previous_checkpoint(tmp_path):
    script = tmp_path / "kill_rank1.py"
    script.write_text(KILL_RANK_1_MID_SAVE)
    out = tmp_path / "run"
    args = _train_args(out, 2, "--parallel", "fsdp", steps=6)[2:]  # without "-m pocketlm.cli"
    proc = _run(TORCHRUN + ["--nproc_per_node", "2", str(script)] + args, check=False)
    assert proc.returncode != 0 and "SIGKILL" in proc.stderr
    ckpts = out / "checkpoints"
    assert list(ckpts.glob(".tmp_step_0000006*"))  # the save had begun
    assert (ckpts / "latest").read_text().strip() == "step_0000003"
    assert not (ckpts / "step_0000006").exists()
    assert {"state.json", "rng.pt", ".metadata", "__0_0.distcp", "__1_0.distcp"} <= \
        {p.name for p in (ckpts / "step_0000003").iterdir()}
    _run([sys.executable] + _train_args(out, 4, steps=6))  # the previous checkpoint resumes; the temporaries go
    assert not list(ckpts.glob(".tmp*"))
    assert sorted(_losses(out)) == list(range(6))


def test_fsdp_without_torchrun_is_one_clear_error(tmp_path):
    proc = _run([sys.executable] + _train_args(tmp_path / "x", 4, "--parallel", "fsdp"), check=False)
    assert proc.returncode != 0
    assert "--parallel fsdp" in proc.stderr and "torchrun" in proc.stderr and "Traceback" not in proc.stderr


def test_world_size_not_dividing_the_batch_is_one_clear_error():
    with pytest.raises(TrainConfigError, match=r"global batch 7 must be divisible .* \(2\); use --batch-size 6"):
        TrainConfig(batch_size=7, parallel="fsdp").validate(world_size=2)
    with pytest.raises(TrainConfigError, match="parallel: must be auto, ddp or fsdp"):
        TrainConfig(parallel="zero3").validate()


def test_sharded_checkpoint_of_another_model_is_one_clear_error(runs, tmp_path):
    out = _from_step_10(runs["fsdp"], tmp_path / "other")
    config = tmp_path / "bigger.json"
    cfg = json.loads((out / "model_config.json").read_text())
    config.write_text(json.dumps({**cfg, "d_model": 64}))
    proc = _run([sys.executable] + _train_args(out, 4, "--model-config", str(config)), check=False)
    assert proc.returncode != 0
    assert "different model" in proc.stderr and "--no-resume" in proc.stderr and "Traceback" not in proc.stderr


def test_auto_parallel_choice():
    from pocketlm.train.sharding import FSDP_AUTO_PARAMS, choose_parallel

    assert choose_parallel("auto", 1, 10**9) == "single"
    assert choose_parallel("auto", 2, FSDP_AUTO_PARAMS - 1) == "ddp"
    assert choose_parallel("auto", 2, FSDP_AUTO_PARAMS) == "fsdp"
    assert choose_parallel("ddp", 4, 10**10) == "ddp"


def test_fsdp_distillation_shards_teacher_and_projection_and_matches_one_process(tmp_path):
    from pocketlm.train.fixtures import trained_preset

    teacher, _ = trained_preset("micro")
    args = ["-m", "pocketlm.cli", "distill", "--teacher", str(teacher), "--student", "micro", "--data",
            str(bundled_data_dir()), "--seq-len", "64", "--hidden-weight", "0.5", "--lr", "1e-2", "--steps", "8",
            "--batch-size", "8", "--threads", "1", "--no-progress"]
    _run(TORCHRUN + ["--nproc_per_node", "2"] + args + ["--micro-batch", "2", "--out", str(tmp_path / "fsdp"),
                                                        "--parallel", "fsdp"])
    _run([sys.executable] + args + ["--micro-batch", "4", "--out", str(tmp_path / "single")])

    def rows(run: str) -> list[dict]:
        return [json.loads(line) for line in (tmp_path / run / "distill_log.jsonl").read_text().splitlines()]

    for key in ("loss", "kd", "hidden"):
        assert [r[key] for r in rows("fsdp") if r["kind"] == "train"] == pytest.approx(
            [r[key] for r in rows("single") if r["kind"] == "train"], rel=1e-4, abs=1e-5)
    summary_fsdp, summary_single = rows("fsdp")[-1], rows("single")[-1]  # KL after: teacher run sharded
    assert summary_fsdp["kl_after"] == pytest.approx(summary_single["kl_after"], rel=1e-4)
    for k, w in _exported(tmp_path / "single").items():
        torch.testing.assert_close(_exported(tmp_path / "fsdp")[k], w, rtol=1e-4, atol=1e-5)


def test_fsdp_bf16_compute_with_activation_checkpointing_trains(runs, tmp_path):
    out = tmp_path / "bf16"
    _run(TORCHRUN + ["--nproc_per_node", "2"] + _train_args(out, 2, "--parallel", "fsdp", "--fsdp-bf16",
                                                            "--activation-checkpointing"))
    bf16, fp32 = _losses(out), _losses(runs["fsdp"])
    assert bf16 != fp32  # bf16 compute changes the numbers ...
    assert list(bf16.values()) == pytest.approx(list(fp32.values()), abs=0.05)  # ... not the training
    assert {w.dtype for w in _exported(out).values()} == {torch.float32}  # fp32 master weights
