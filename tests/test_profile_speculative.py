"""`pocketlm profile TARGET --draft SMALL`: the worker times speculative decoding beside the target alone,
reports the acceptance rate and speedup, checks the outputs equal, and refuses a draft of another vocabulary.
Timings are reported, never asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pocketlm.model.config import ModelConfig
from pocketlm.profile.runner import run_setting, validate
from pocketlm.profile.setting import ProfileError, Setting

CFG = ModelConfig(vocab_size=256, d_model=64, n_layer=2, n_head=2, n_kv_head=1, intermediate_size=128,
                  max_seq_len=128, name="target", tie_embeddings=False)  # tied random models repeat a token


def _write(tmp_path: Path, cfg: ModelConfig, name: str) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg.replace(name=name).to_dict()))
    return str(path)


def test_profile_reports_acceptance_and_speedup(tmp_path) -> None:
    target = _write(tmp_path, CFG, "target")
    draft = _write(tmp_path, CFG.replace(n_layer=1, intermediate_size=96), "draft")  # other weights
    for small, always in ((draft, False), (target, True)):  # the target as its own draft keeps every token
        setting = Setting(target, threads=1, prompts=(8,), gen=12, depths=(8,), repeat=1, warmup=0, pack=False,
                          draft=small, k=3)
        validate([setting])
        spec = run_setting(setting, timeout=240)["speculative"]
        assert spec["same_output"] and spec["new_tokens"] == 12 and spec["speedup"] > 0
        assert 0 <= spec["acceptance_rate"] <= 1 and (spec["acceptance_rate"] == 1.0) == always
        if always:
            assert spec["tokens_per_target_forward"] == 12 / 3  # rounds of 3 drafts + 1, the last one shorter


def test_a_draft_of_another_vocabulary_is_refused(tmp_path) -> None:
    target = _write(tmp_path, CFG, "target")
    other = _write(tmp_path, CFG.replace(vocab_size=300), "other")
    with pytest.raises(ProfileError, match="vocabulary"):
        validate([Setting(target, prompts=(8,), depths=(8,), gen=8, draft=other)])
    with pytest.raises(ProfileError, match="--k"):
        validate([Setting(target, prompts=(8,), depths=(8,), gen=8, draft=target, k=0)])
