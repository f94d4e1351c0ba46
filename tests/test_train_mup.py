"""µP coordinate check: activation size flat across widths under µP, drifting under standard parametrisation."""

from __future__ import annotations

import pytest
import torch

from pocketlm.data.shards import TokenSplit
from pocketlm.train.batches import eval_windows
from pocketlm.train.config import TrainConfig, family_config
from pocketlm.train.coord_check import coord_check, width_slope
from pocketlm.train.fixtures import bundled_data_dir
from pocketlm.train.mup import mup_config, param_groups
from pocketlm.train.trainer import build_model


@pytest.fixture(scope="module")
def windows() -> torch.Tensor:
    return eval_windows(TokenSplit.open(bundled_data_dir(), "train"), 32, 40)


def test_coordinate_check_flat_under_mup_drifting_under_sp(windows):
    torch.set_num_threads(1)
    widths = [64, 128, 256]
    sp = coord_check(windows, widths, mup=False, steps=4, vocab_size=2048)
    mup = coord_check(windows, widths, mup=True, steps=4, vocab_size=2048)
    for block in ("block0", "block1"):
        assert width_slope(sp, block) > 1.0, sp  # SP: activations grow ~ width^>1 after a few Adam steps
        assert abs(width_slope(mup, block)) < 0.4, mup  # µP: roughly width independent
    assert sp[256]["block1"] > 4 * sp[64]["block1"]
    assert 0.5 < mup[256]["block1"] / mup[64]["block1"] < 2.0


def test_mup_scalings_follow_the_width_multiplier():
    base = family_config(64, 2, 4, vocab_size=256)
    wide = family_config(256, 2, 4, vocab_size=256)
    cfg = mup_config(wide, base_width=64)
    assert cfg.logit_scale == pytest.approx(0.25)
    assert cfg.attn_scale == pytest.approx(16**0.5 / 64)  # 1/d scaling, = 1/sqrt(d) at the base width
    assert mup_config(base, 64).attn_scale == pytest.approx(16**-0.5)
    model = build_model(wide, TrainConfig(mup=True, mup_base_width=64))
    groups = {g["name"]: g for g in param_groups(model, 1e-2, 0.1, mup=True, base_width=64)}
    assert groups["hidden"]["lr"] == pytest.approx(1e-2 / 4) and groups["embedding"]["lr"] == 1e-2
    assert groups["vector"]["weight_decay"] == 0.0
    n_hidden = sum(p.numel() for p in groups["hidden"]["params"])
    assert n_hidden == sum(p.numel() for p in model.blocks.parameters() if p.ndim == 2)
    q = model.blocks[0].attn.q_proj.weight
    assert q.std().item() == pytest.approx(0.02 * (64 / 256) ** 0.5, rel=0.05)  # std ∝ 1/sqrt(fan_in)
