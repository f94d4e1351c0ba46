"""The demo section profiles a saved model in fp32, int8 and int4 and reports it."""

from __future__ import annotations

from pathlib import Path

import torch

from pocketlm.interop import save_native
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import Transformer
from pocketlm.profile.demo import demo_section


def test_demo_section_profiles_the_model(tmp_path) -> None:
    torch.manual_seed(0)
    # 344 is not a multiple of 16: some FFN layers must stay float, and the section says so
    cfg = ModelConfig(vocab_size=512, d_model=128, n_layer=2, n_head=4, n_kv_head=2, intermediate_size=344,
                      max_seq_len=256, name="demo-tiny")
    model_dir = save_native(Transformer(cfg), tmp_path / "model")
    out = demo_section(Path(model_dir), tmp_path / "profile")
    assert set(out) == {"title", "markdown", "metrics"}
    m = out["metrics"]
    for d in ("fp32", "int8", "int4"):
        assert m[f"{d}_decode_ms"] > 0 and m[f"{d}_prefill64_ms"] > 0
    assert m["int4_weights_mb"] < m["fp32_weights_mb"]
    assert m["int4_float_layers"] > 0 and "kept in float" in out["markdown"]
    assert (tmp_path / "profile" / "profile.csv").exists()
