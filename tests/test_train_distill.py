"""Distillation lowers the student's KL to the teacher; divergences match torch's definitions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pocketlm.data.tokenizer import TextTokenizer
from pocketlm.train.config import TrainConfig, family_config
from pocketlm.train.distill import (DistillConfig, DistillError, cache_teacher_topk, check_tokenizers_match,
                                    distill, divergence_loss)
from pocketlm.train.fixtures import bundled_data_dir
from pocketlm.train.trainer import build_model, train

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    data = bundled_data_dir()
    out = tmp_path_factory.mktemp("teacher")
    tcfg = TrainConfig(data_dir=str(data), out_dir=str(out), steps=80, batch_size=8, seq_len=64, lr=1e-2,
                       warmup_steps=5, eval_every=80, ckpt_every=80, progress=False)
    teacher = train(tcfg, family_config(64, 2, 4, 2048, name="teacher")).model.eval()
    return data, teacher


def _student_run(data, out, **dk) -> TrainConfig:
    return TrainConfig(data_dir=str(data), out_dir=str(out), steps=40, batch_size=8, seq_len=64, lr=1e-2,
                       warmup_steps=4, schedule="cosine", eval_windows=16, progress=False)


def test_distillation_lowers_kl_to_teacher_more_than_plain_training(setup, tmp_path):
    data, teacher = setup
    cfg = family_config(32, 2, 2, 2048, name="student")
    tcfg = _student_run(data, tmp_path / "kd")
    kd = distill(teacher, build_model(cfg, tcfg), tcfg, DistillConfig("forward_kl", temperature=1.0, alpha=0.9))
    ce = distill(teacher, build_model(cfg, tcfg), _student_run(data, tmp_path / "ce"), DistillConfig(alpha=0.0))
    assert kd.kl_before == pytest.approx(ce.kl_before)  # same initial student
    assert kd.kl_after < 0.5 * kd.kl_before
    assert kd.kl_after < ce.kl_after  # the KD term, not just language modelling, pulls it to the teacher
    rows = [json.loads(x) for x in (tmp_path / "kd" / "distill_log.jsonl").read_text().splitlines()]
    assert rows[-1]["kind"] == "summary" and rows[-1]["kl_after"] == kd.kl_after


def test_cached_topk_teacher_logits_match_live_topk(setup, tmp_path):
    data, teacher = setup
    cfg = family_config(32, 2, 2, 2048)
    tcfg = _student_run(data, tmp_path / "live")
    tcfg.steps = 10
    live = distill(teacher, build_model(cfg, tcfg), tcfg, DistillConfig("js", top_k=16))
    cache = cache_teacher_topk(teacher, str(data), tcfg, 16, tmp_path / "teacher_top16.safetensors")
    tcfg.out_dir = str(tmp_path / "cached")
    cached = distill(teacher, build_model(cfg, tcfg), tcfg, DistillConfig("js", top_k=16, teacher_cache=str(cache)))
    assert cached.kl_after == pytest.approx(live.kl_after, rel=2e-2)
    tcfg.steps = 11
    with pytest.raises(DistillError, match="steps"):
        distill(teacher, build_model(cfg, tcfg), tcfg, DistillConfig(teacher_cache=str(cache)))


def test_hidden_state_loss_through_projection_when_widths_differ(setup, tmp_path):
    data, teacher = setup
    tcfg = _student_run(data, tmp_path)
    tcfg.steps = 25
    res = distill(teacher, build_model(family_config(32, 2, 2, 2048), tcfg), tcfg,
                  DistillConfig("reverse_kl", hidden_weight=1.0))
    rows = [json.loads(x) for x in (tmp_path / "distill_log.jsonl").read_text().splitlines()][:-1]
    assert rows[-1]["hidden"] < rows[0]["hidden"]
    assert res.kl_after < res.kl_before


def test_divergences_match_their_definitions():
    torch.manual_seed(0)
    s, t = torch.randn(3, 5, 11), torch.randn(3, 5, 11)
    ref_fwd = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1).mean()
    assert divergence_loss(s, t, "forward_kl") == pytest.approx(float(ref_fwd), rel=1e-5)
    assert divergence_loss(s, t, "reverse_kl") == pytest.approx(float(divergence_loss(t, s, "forward_kl")), rel=1e-5)
    js = divergence_loss(s, t, "js")
    assert js == pytest.approx(float(divergence_loss(t, s, "js")), rel=1e-5) and 0 < js < torch.log(torch.tensor(2.0))
    t2 = divergence_loss(s, t, "forward_kl", temperature=2.0)
    ref2 = F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), log_target=True,
                    reduction="none").sum(-1).mean()
    assert t2 == pytest.approx(4 * float(ref2), rel=1e-5)
    top = t.topk(11, dim=-1)  # top-k with k = vocab is the full distribution
    assert divergence_loss(s, (top.values, top.indices), "forward_kl") == pytest.approx(float(ref_fwd), rel=1e-5)


@pytest.mark.skipif(not (SHARED / "tokenizers" / "minimind").is_dir(), reason="../shared tokenizers not present")
def test_different_tokenizers_are_refused():
    ours = TextTokenizer.load(bundled_data_dir() / "tokenizer.json")
    other = TextTokenizer.load(SHARED / "tokenizers" / "minimind" / "tokenizer.json")
    with pytest.raises(DistillError, match="tokenizers differ.*--tokenizer"):
        check_tokenizers_match(ours, other, 2048, 6400)
    check_tokenizers_match(ours, ours, 2048, 2048)
    with pytest.raises(DistillError, match="vocab_size"):
        check_tokenizers_match(ours, ours, 2048, 4096)


def test_distill_cli_runs_and_refuses_a_foreign_tokenizer(tmp_path):
    import shutil

    from typer.testing import CliRunner

    from pocketlm.cli import app
    from pocketlm.train.fixtures import trained_preset

    teacher_dir, _ = trained_preset("micro")
    args = ["distill", "--teacher", str(teacher_dir), "--student", "micro", "--steps", "4", "--batch-size", "4",
            "--seq-len", "32", "--threads", "1", "--no-progress", "--top-k", "8",
            "--cache-teacher", str(tmp_path / "top8.safetensors")]
    res = CliRunner().invoke(app, args + ["--out", str(tmp_path / "kd")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "top8.safetensors").is_file() and (tmp_path / "kd" / "model" / "pocketlm.json").is_file()
    if not (SHARED / "tokenizers" / "minimind").is_dir():
        pytest.skip("../shared tokenizers not present")
    foreign = tmp_path / "foreign_teacher"
    shutil.copytree(teacher_dir, foreign)
    shutil.copy(SHARED / "tokenizers" / "minimind" / "tokenizer.json", foreign / "tokenizer.json")
    res = CliRunner().invoke(app, ["distill", "--teacher", str(foreign), "--student", "micro", "--steps", "2",
                                   "--out", str(tmp_path / "bad"), "--no-progress"])
    assert res.exit_code != 0 and isinstance(res.exception, DistillError)
    assert "tokenizers differ" in str(res.exception)
