"""The root command: `info` on a catalog name and on a model directory, and one-line user errors."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from pocketlm.interop import save_native
from pocketlm.model import costs
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import Transformer


def _pocketlm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pocketlm.cli", *args], capture_output=True, text=True, timeout=120)


def test_info_json_matches_analytic_costs(tmp_path):
    cfg = ModelConfig(vocab_size=300, d_model=64, n_layer=2, n_head=4, n_kv_head=1, intermediate_size=96)
    save_native(Transformer(cfg), tmp_path)
    out = _pocketlm("info", str(tmp_path), "--json", "--context", "128")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["axes"]["attention"] == "MQA"
    assert info["costs"]["params_total"] == costs.param_counts(cfg)["total"]
    assert info["costs"]["kv_cache_mib_bf16"] * 2**20 == costs.kv_cache_bytes(cfg, 128, 2)


def test_info_on_catalog_name():
    out = _pocketlm("info", "SmolLM-135M", "--json")
    assert out.returncode == 0, out.stderr
    # 49152 x 576 embedding (tied) + 30 blocks x 3,540,096 + a 576-wide final norm
    assert json.loads(out.stdout)["costs"]["params_total"] == 28_311_552 + 30 * 3_540_096 + 576


def test_user_error_is_one_line_without_traceback():
    out = _pocketlm("info", "NoSuchModel")
    assert out.returncode == 2
    assert out.stderr.startswith("error: NoSuchModel") and "Traceback" not in out.stderr
