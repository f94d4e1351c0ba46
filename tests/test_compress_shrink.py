"""`pocketlm shrink`: prune + distil in rounds; a run killed mid-distillation resumes to exactly the
uninterrupted result; the output loads in transformers with the student's logits; a teacher whose
tokenizer is not the data's is refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers

from pocketlm.train.distill import DistillError
from pocketlm.train.fixtures import trained_preset
from tests.llamacpp import llamacpp_logits
from tests.side_by_side import running_beside

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
STEPS = 16  # per round
KEYS = ("step", "loss", "lr", "grad_norm", "kd", "ce")  # what must repeat exactly (not timings)


def _cmd(teacher: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "pocketlm.cli", "shrink", str(teacher), "--out", str(out), "--target-params", "0.75x",
            "--tokens", str(2 * STEPS * 8 * 64), "--steps", "2", "--batch-size", "8", "--seq-len", "64", "--lr",
            "1e-2", "--calib", "16x64", "--threads", "1", "--no-progress"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _train_rows(run: Path) -> list[dict]:
    log = run / "round2" / "distill" / "distill_log.jsonl"
    rows = [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []
    return [tuple(r[k] for k in KEYS) for r in rows if r["kind"] == "train"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    teacher, _ = trained_preset("micro")
    root = tmp_path_factory.mktemp("shrink")
    full, killed = root / "full", root / "killed"
    with running_beside(_cmd(teacher, full), _env(), ROOT, root / "full.stderr"):  # on the second core
        proc = subprocess.Popen(_cmd(teacher, killed), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 600  # generous: a loaded machine can take minutes to reach round 2
        while time.time() < deadline and proc.poll() is None:
            ckpt = killed / "round2" / "distill" / "checkpoints" / "latest"
            if ckpt.is_file() and len(_train_rows(killed)) >= STEPS // 4 + 2:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        interrupted = len(_train_rows(killed))
        subprocess.run(_cmd(teacher, killed), check=True, env=_env(), cwd=ROOT, capture_output=True, timeout=600)
    return teacher, full, killed, interrupted


def test_shrink_prunes_distils_and_reports(runs):
    _, full, _, _ = runs
    report = json.loads((full / "report.json").read_text())
    assert abs(report["final"]["ratio"] - 0.75) < 0.02
    assert len(report["rounds"]) == 2 and report["final"]["tokens"] == 2 * STEPS * 8 * 64
    for r in report["rounds"]:
        assert r["distilled"]["kl"] < r["pruned"]["kl"]  # distillation moved the pruned student to the teacher
    assert report["rounds"][1]["params"] < report["rounds"][0]["params"] < report["teacher_params"]
    assert (full / "report.md").read_text().count("| 2 |") == 1 and (full / "shrink.png").is_file()


def test_killed_shrink_resumes_to_the_uninterrupted_result(runs):
    _, full, killed, interrupted = runs
    assert 0 < interrupted < STEPS, "the run must be killed inside round 2's distillation"
    assert _train_rows(killed) == _train_rows(full)
    a, b = (json.loads((d / "report.json").read_text()) for d in (full, killed))
    assert a["final"] == b["final"]
    for ra, rb in zip(a["rounds"], b["rounds"]):
        ra["pruning"].pop("seconds"), rb["pruning"].pop("seconds")
        assert ra == rb


def test_shrunk_model_loads_in_transformers_with_identical_logits(runs):
    from pocketlm.interop import load_model

    _, full, _, _ = runs
    student = load_model(full / "model").eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(full / "hf", dtype=torch.float32).eval()
    x = torch.randint(0, student.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(hf(input_ids=x).logits, student(x), atol=1e-5, rtol=1e-5)
    assert transformers.AutoTokenizer.from_pretrained(full / "hf").encode("Once upon a time")


@pytest.mark.skipif(not (SHARED / "tokenizers" / "minimind").is_dir(), reason="../shared tokenizers not present")
def test_teacher_with_a_foreign_tokenizer_is_refused(tmp_path):
    from pocketlm.compress.structured.shrink import ShrinkConfig, shrink

    teacher, _ = trained_preset("micro")
    foreign = tmp_path / "foreign"
    shutil.copytree(teacher, foreign)
    shutil.copy(SHARED / "tokenizers" / "minimind" / "tokenizer.json", foreign / "tokenizer.json")
    with pytest.raises(DistillError, match="tokenizers differ"):
        shrink(foreign, tmp_path / "out", ShrinkConfig(tokens=8 * 64, batch_size=8, seq_len=64, progress=False))
    assert not (tmp_path / "out").exists()


def test_prune_structured_cli_writes_a_model_transformers_loads(tmp_path):
    from typer.testing import CliRunner

    from pocketlm.cli import app
    from pocketlm.interop import load_model

    teacher, _ = trained_preset("micro")
    res = CliRunner().invoke(app, ["prune-structured", str(teacher), "--out", str(tmp_path / "p"), "--target-params",
                                   "0.8x", "--calib", "bundled:12x32", "--max-candidates", "3", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["format"] == "huggingface" and len(report["ranking"]) >= 2
    assert abs(report["ratio"] - 0.8) <= 0.02
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "p", dtype=torch.float32).eval()
    assert sum(p.numel() for p in hf.parameters()) == report["params_after"]
    res = CliRunner().invoke(app, ["prune-structured", str(teacher), "--out", str(tmp_path / "q"), "--n-head", "3"])
    assert res.exit_code != 0 and "choose 1..2" in str(res.exception)
    assert load_model(teacher).config.n_head == 2


def test_shrunk_gguf_runs_in_llama_cpp_with_the_students_logits(runs):
    from pocketlm.interop import load_model
    from pocketlm.model.quantize import sqnr_db

    pytest.importorskip("llama_cpp", reason="llama-cpp-python (optional extra) is not installed")
    _, full, _, _ = runs
    report = json.loads((full / "report.json").read_text())
    assert report["artifacts"].get("gguf"), report["artifacts"]
    student = load_model(full / "model").eval()
    ids = [5, 17, 300, 42, 9, 77, 123, 8]
    out = llamacpp_logits(report["artifacts"]["gguf"], ids)
    with torch.no_grad():
        ref = student(torch.tensor([ids]))[0]
    assert sqnr_db(ref, out) > 50 and (out.argmax(-1) == ref.argmax(-1)).all()  # F16 weights
