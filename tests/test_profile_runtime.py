"""Latency measurement, the breakdown, the grid / CLI output, compare, and bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import Transformer
from pocketlm.profile.breakdown import KINDS, time_breakdown
from pocketlm.profile.runner import PACKAGE_ROOT, run_settings, validate
from pocketlm.profile.setting import ProfileError, Setting
from pocketlm.profile.timing import time_decode
from pocketlm.runtime import ModelOpenError


def _llama(d_model: int, n_layer: int, **kw) -> ModelConfig:
    base = dict(vocab_size=2048, d_model=d_model, n_layer=n_layer, n_head=max(d_model // 64, 1),
                n_kv_head=max(d_model // 128, 1), intermediate_size=int(d_model * 8 / 3) // 32 * 32,
                max_seq_len=256, name=f"llama-{d_model}x{n_layer}")
    base.update(kw)
    return ModelConfig(**base)


def _write(cfg: ModelConfig, path: Path) -> str:
    path.write_text(json.dumps(cfg.to_dict()))
    return str(path)


def test_decode_latency_grows_with_size_across_three_sizes() -> None:
    torch.set_num_threads(1)
    latencies = []
    for d, layers in [(128, 2), (384, 4), (1024, 8)]:  # ~0.7M, ~8M, ~107M non-embedding params
        model = Transformer(_llama(d, layers)).eval()
        latencies.append(time_decode(model, depth=16, n_gen=12, repeat=2, warmup=1)["median_ms"])
    assert latencies[0] < latencies[1] < latencies[2], latencies


def test_breakdown_shares_sum_to_one_and_follow_the_ffn_width() -> None:
    torch.set_num_threads(1)
    shares = []
    for width in (256, 2048):
        model = Transformer(_llama(256, 2, intermediate_size=width)).eval()
        b = time_breakdown(model, n_prompt=64, depth=8, n_gen=6, repeat=2)
        for phase in ("prefill", "decode"):
            assert set(b[phase]["share"]) == set(KINDS)
            assert sum(b[phase]["share"].values()) == pytest.approx(1.0, abs=1e-6)
        shares.append(b["prefill"]["share"]["ffn"])
        assert not model.blocks[0].mlp._forward_hooks  # hooks removed
    assert shares[1] > shares[0]


def test_grid_cli_writes_table_csv_and_machine_readable_last_line(tmp_path) -> None:
    model = _write(_llama(128, 2), tmp_path / "m.json")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "pocketlm.cli", "profile", model, "--prompt", "8,32", "--gen", "4",
         "--depth", "0,16", "--dtype", "fp32,int8", "--threads", "1", "--repeat", "2", "--out", str(out)],
        capture_output=True, text=True, cwd=PACKAGE_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = last["rows"]
    assert len(rows) == 2 * (2 + 2)  # 2 dtypes x (2 prefill + 2 decode tests)
    assert {r["test"] for r in rows} == {"pp8", "pp32", "tg4@d0", "tg4@d16"}
    assert all(r["median_ms"] > 0 and r["tok_s"] > 0 for r in rows)
    int8_w = next(r["weights_mb"] for r in rows if r["dtype"] == "int8")
    fp32_w = next(r["weights_mb"] for r in rows if r["dtype"] == "fp32")
    assert int8_w < 0.6 * fp32_w  # int8 weights (embedding kept bf16) are far smaller
    assert (out / "profile.csv").read_text().count("\n") == len(rows) + 1
    full = json.loads((out / "profile.json").read_text())
    assert full["results"][0]["system"]["torch"] == torch.__version__


def test_compare_mha_vs_gqa_kv_cache_ratio(tmp_path) -> None:
    from pocketlm.profile.landscape import compare

    mha = _write(_llama(256, 2, n_head=4, n_kv_head=4, name="mha"), tmp_path / "mha.json")
    gqa = _write(_llama(256, 2, n_head=4, n_kv_head=1, name="gqa"), tmp_path / "gqa.json")
    summary = compare([mha, gqa], dtype="fp32", prompt=16, gen=4, depth=16, threads=1, repeat=1,
                      out_dir=tmp_path / "cmp")
    mha_p, gqa_p = summary["points"]
    assert mha_p["kv_cache_mb"] == pytest.approx(4 * gqa_p["kv_cache_mb"], rel=1e-6)
    assert Path(summary["figure"]).stat().st_size > 10_000


def test_bad_inputs_give_clear_errors(tmp_path) -> None:
    with pytest.raises(ModelOpenError, match="no such directory"):
        validate([Setting(str(tmp_path / "missing_model_dir"))])
    with pytest.raises(ModelOpenError, match="no catalog model named 'SmolLM-136M'.*SmolLM-135M"):
        validate([Setting("SmolLM-136M")])
    short = _write(_llama(128, 2, max_seq_len=64), tmp_path / "short.json")
    with pytest.raises(ProfileError, match="exceeds the model's context length 64"):
        validate([Setting(short, prompts=(128,), depths=(0,), gen=4)])
    odd = _write(_llama(96, 2, n_head=2, n_kv_head=1, intermediate_size=256), tmp_path / "odd.json")
    with pytest.raises(ProfileError, match="in_features=96, not divisible by group_size=64.*group_size in \\[32\\]"):
        validate([Setting(odd, dtype="int4", prompts=(8,), depths=(0,), gen=2, group_size=64)])
    tiny = dict(prompts=(8,), depths=(0,), gen=2)
    with pytest.raises(ProfileError, match="unknown dtype 'int3'"):
        validate([Setting(short, dtype="int3", **tiny)])
    with pytest.raises(ProfileError, match="unknown backend"):
        validate([Setting(short, backend="onnx", **tiny)])
    with pytest.raises(ProfileError, match="--prompt needs positive token counts"):
        validate([Setting(short, prompts=(0,), depths=(0,), gen=2)])
    with pytest.raises(ProfileError, match="unknown field\\(s\\) \\['dtypes'\\]"):
        Setting.from_dict({"model": short, "dtypes": ["fp32"]})


def test_cli_reports_bad_input_without_a_traceback(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pocketlm.cli", "profile", str(tmp_path / "nope")],
                          capture_output=True, text=True, cwd=PACKAGE_ROOT, timeout=120)
    assert proc.returncode == 2
    assert "no such directory" in proc.stderr and "Traceback" not in proc.stderr


def test_llamacpp_backend_measures_a_gguf_export(tmp_path) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (optional extra) is not installed")
    model = _write(_llama(128, 2), tmp_path / "m.json")
    results = run_settings([Setting(model, backend="llamacpp", dtype="int4", threads=1, prompts=(16,), gen=4,
                                    depths=(8,), repeat=1, warmup=0)], progress=False)
    r = results[0]
    assert r["gguf_type"] == "Q4_0" and r["disk_bytes"] > 0
    assert r["prefill"][0]["median_ms"] > 0 and r["decode"][0]["tok_s"] > 0
    odd = _write(_llama(128, 2, norm="layernorm"), tmp_path / "ln.json")
    with pytest.raises(ProfileError, match="cannot run in llama.cpp: .*LayerNorm bias"):
        validate([Setting(odd, backend="llamacpp", prompts=(8,), depths=(0,), gen=2)])
