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
from tests.conftest import micro_distill_args, micro_train_args
from tests.side_by_side import run_side_by_side

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
STEPS = 20


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _train_args(out: Path, micro: int, *extra: str, steps: int = STEPS) -> list[str]:
    return micro_train_args(bundled_data_dir(), out, micro, *extra, steps=steps)


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
def runs(tmp_path_factory, single_process_micro_runs) -> dict:
    """One 2-process FSDP run and one single-process run (shared with the DDP tests; read only) of the same
    20 steps (global batch 8); beside the FSDP run, the same run in bf16 with activation checkpointing and
    `--parallel fsdp` without torchrun (each torchrun binds only ports the OS picks, so two at once is safe)."""
    root = tmp_path_factory.mktemp("fsdp")
    runs = {"fsdp": root / "fsdp", "bf16": root / "bf16", "single": single_process_micro_runs["train"]}
    fsdp, bf16, runs["without_torchrun"] = run_side_by_side([
        TORCHRUN + ["--nproc_per_node", "2"] + _train_args(runs["fsdp"], 2, "--parallel", "fsdp"),
        TORCHRUN + ["--nproc_per_node", "2"] + _train_args(runs["bf16"], 2, "--parallel", "fsdp", "--fsdp-bf16",
                                                           "--activation-checkpointing"),
        [sys.executable] + _train_args(root / "x", 4, "--parallel", "fsdp")], _env(), ROOT, timeout=600)
    for proc in (fsdp, bf16):
        assert proc.returncode == 0, proc.stderr[-3000:]
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
    one_rank = TORCHRUN + ["--nproc_per_node", "1"] + _train_args(under_torchrun, 4, "--parallel", "fsdp")
    for proc in run_side_by_side([one_rank, [sys.executable] + _train_args(plain, 4)], _env(), ROOT, timeout=300):
        assert proc.returncode == 0, proc.stderr[-3000:]
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


def test_fsdp_without_torchrun_is_one_clear_error(runs):
    proc = runs["without_torchrun"]
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


def test_fsdp_distillation_shards_teacher_and_projection_and_matches_one_process(single_process_micro_runs,
                                                                               tmp_path):
    from pocketlm.train.fixtures import trained_preset

    teacher, _ = trained_preset("micro")
    fsdp, single = tmp_path / "fsdp", single_process_micro_runs["distill"]  # the reference: 12 steps, micro-batch 4
    _run(TORCHRUN + ["--nproc_per_node", "2"] + micro_distill_args(teacher, bundled_data_dir(), fsdp, 2,
                                                                   "--parallel", "fsdp"))

    def rows(run: Path) -> list[dict]:
        return [json.loads(line) for line in (run / "distill_log.jsonl").read_text().splitlines()]

    for key in ("loss", "kd", "hidden"):
        assert [r[key] for r in rows(fsdp) if r["kind"] == "train"] == pytest.approx(
            [r[key] for r in rows(single) if r["kind"] == "train"], rel=1e-4, abs=1e-5)
    summary_fsdp, summary_single = rows(fsdp)[-1], rows(single)[-1]  # KL after: teacher run sharded
    assert summary_fsdp["kl_after"] == pytest.approx(summary_single["kl_after"], rel=1e-4)
    for k, w in _exported(single).items():
        torch.testing.assert_close(_exported(fsdp)[k], w, rtol=1e-4, atol=1e-5)


def test_fsdp_bf16_compute_with_activation_checkpointing_trains(runs):
    out = runs["bf16"]
    bf16, fp32 = _losses(out), _losses(runs["fsdp"])
    assert bf16 != fp32  # bf16 compute changes the numbers ...
    assert list(bf16.values()) == pytest.approx(list(fp32.values()), abs=0.05)  # ... not the training
    assert {w.dtype for w in _exported(out).values()} == {torch.float32}  # fp32 master weights
