"""The measurement request (`Setting`) and the worker process that runs it: defaults in one place, the
JSON round trip, the current directory kept off the worker's path, and user errors as one line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pocketlm.model.config import ModelConfig
from pocketlm.profile.runner import run_setting, worker_command
from pocketlm.profile.setting import ProfileError, Setting, grid
from pocketlm.runtime import ModelOpenError

CFG = ModelConfig(vocab_size=512, d_model=96, n_layer=1, n_head=2, n_kv_head=1, intermediate_size=256,
                  max_seq_len=64, name="tiny")


def _config(tmp_path: Path) -> str:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(CFG.to_dict()))
    return str(path)


def test_setting_round_trips_through_json_and_grids_like_llama_bench() -> None:
    base = Setting("m", prompts=[8, 32], depths=[0, 16], gen=4)
    assert Setting.from_dict(json.loads(json.dumps(base.to_dict()))) == base
    assert base.prompts == (8, 32) and base.longest == 32
    assert dataclasses.replace(base, depths=(40,)).longest == 44  # depth + gen
    settings = grid(base, ["torch", "llamacpp"], ["fp32", "int4"], [1, 2])
    assert len(settings) == 8 and len(set(settings)) == 8
    assert [(s.backend, s.dtype, s.threads) for s in settings[:3]] == [("torch", "fp32", 1), ("torch", "fp32", 2),
                                                                     ("torch", "int4", 1)]
    assert grid(base) == [base]  # empty axes keep the base's values


def test_worker_never_imports_from_the_current_directory(tmp_path, monkeypatch) -> None:
    marker = tmp_path / "hostile-ran"
    hostile = tmp_path / "cwd"
    hostile.mkdir()
    (hostile / "json.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit('hostile json.py')\n")
    monkeypatch.chdir(hostile)
    argv, env = worker_command(Setting("m", threads=1))
    assert "-P" in argv[:3] and "" not in env["PYTHONPATH"].split(":")
    result = run_setting(Setting(_config(tmp_path), threads=1, prompts=(8,), gen=2, depths=(0,), repeat=1,
                                 warmup=0), timeout=240)
    assert not marker.exists()
    assert result["prefill"][0]["median_ms"] > 0 and result["setting"]["threads"] == 1


def test_user_errors_in_the_worker_reach_the_parent_as_one_line(tmp_path) -> None:
    odd = _config(tmp_path)  # d_model 96: not divisible by int4 group size 64
    with pytest.raises(ModelOpenError, match="cannot be quantized to int4") as err:
        run_setting(Setting(odd, dtype="int4", group_size=64, threads=1, prompts=(8,), gen=2, depths=(0,),
                            repeat=1, warmup=0), timeout=240)
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)
    with pytest.raises(ProfileError, match="exceeds the model's context length 64") as err:
        run_setting(Setting(odd, threads=1, prompts=(128,), gen=2, depths=(0,)), timeout=240)
    assert "\n" not in str(err.value)
