"""GGUF export: llama.cpp (via llama-cpp-python) runs the exported file and gives pocketlm's logits."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from pocketlm.model.quantize import sqnr_db
from pocketlm.export.gguf import GGUFExportError, export_gguf, load_gguf_weights, unsupported_reasons
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import Transformer
from tests.test_gguf_families import random_model
from tests.llamacpp import llamacpp_logits

IDS = list(range(1, 60, 3))


def _tiny(tie: bool = True, qkv_bias: bool = False) -> Transformer:
    cfg = ModelConfig(vocab_size=512, d_model=128, n_layer=2, n_head=4, n_kv_head=2, intermediate_size=256,
                      max_seq_len=256, tie_embeddings=tie, qkv_bias=qkv_bias, rope_theta=10000.0)
    return random_model(cfg, bias_std=0.02, norm_range=(0.8, 1.2))


def _llama_logits(path) -> torch.Tensor:
    return llamacpp_logits(path, IDS)


def _logits(model: Transformer) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([IDS]))[0]


@pytest.mark.parametrize("qtype,min_db", [("F32", 60), ("F16", 50)])
@pytest.mark.parametrize("tie,qkv_bias", [(True, False), (False, True)])
def test_float_gguf_matches_pocketlm_logits(tmp_path, qtype, min_db, tie, qkv_bias) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (optional extra) is not installed")
    model = _tiny(tie, qkv_bias)
    path = export_gguf(model, tmp_path / f"m_{qtype}.gguf", qtype)
    out = _llama_logits(path)
    ref = _logits(model)
    assert sqnr_db(ref, out) > min_db
    assert (out.argmax(-1) == ref.argmax(-1)).all()


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_K_M"])
def test_quantized_gguf_error_is_the_weight_quantization_error(tmp_path, qtype) -> None:
    """llama.cpp on a quantized file computes what pocketlm computes with that file's weights."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (optional extra) is not installed")
    model = _tiny(tie=False)
    path = export_gguf(model, tmp_path / f"m_{qtype}.gguf", qtype)
    out = _llama_logits(path)
    dequant = copy.deepcopy(model)
    load_gguf_weights(dequant, path)
    ref, ref_q = _logits(model), _logits(dequant)
    # llama.cpp also rounds activations to 8 bits inside quantized dot products: ~40 dB here
    assert sqnr_db(ref_q, out) > 30
    # so its distance from the float model is the weight-quantization noise plus that activation
    # noise (independent noises add in power), not an export bug
    weight_db, act_db = sqnr_db(ref, ref_q), sqnr_db(ref_q, out)
    expected_db = -10 * math.log10(10 ** (-weight_db / 10) + 10 ** (-act_db / 10))
    assert sqnr_db(ref, out) == pytest.approx(expected_db, abs=1.5)
    assert sqnr_db(ref, ref_q) < 60  # the weights really were quantized


def test_q4_0_file_is_smaller_than_f16(tmp_path) -> None:
    model = _tiny()
    f16 = export_gguf(model, tmp_path / "a.gguf", "F16").stat().st_size
    q4 = export_gguf(model, tmp_path / "b.gguf", "Q4_0").stat().st_size
    assert q4 < 0.45 * f16


def test_unsupported_architecture_and_type_give_clear_errors(tmp_path) -> None:
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layer=1, n_head=2, intermediate_size=64, norm="layernorm",
                      ffn_type="standard", activation="gelu")
    with pytest.raises(GGUFExportError, match="matches no llama.cpp architecture.*FFN must be gated"):
        export_gguf(Transformer(cfg), tmp_path / "x.gguf", "F16")
    with pytest.raises(GGUFExportError, match="unknown GGUF type 'Q3_0'"):
        export_gguf(_tiny(), tmp_path / "x.gguf", "Q3_0")
    from pocketlm.runtime.export_cli import export_model

    with pytest.raises(GGUFExportError, match="unknown GGUF type 'Q3_0'"):  # before the model is even resolved
        export_model(str(tmp_path / "no-such-model"), tmp_path / "x.gguf", "q3_0")
    assert not (tmp_path / "x.gguf").exists()


def test_a_family_llama_cpp_cannot_run_names_the_runtimes_that_can(tmp_path) -> None:
    from pocketlm.interop import config_from_hf
    from tests.hf_tiny import tiny_config

    model = Transformer(config_from_hf(tiny_config("opt").to_dict()))
    with pytest.raises(GGUFExportError, match="llama.cpp has no OPT architecture.*transformers.*--backend torch"):
        export_gguf(model, tmp_path / "opt.gguf", "Q4_0")
    assert unsupported_reasons(model.config) and not (tmp_path / "opt.gguf").exists()
    # a window llama.cpp would not apply (Phi-3's is switched off there) is refused, not silently dropped
    phi3 = config_from_hf(tiny_config("phi3").to_dict()).replace(sliding_window=6)
    assert any("sliding-window" in r for r in unsupported_reasons(phi3))


@pytest.mark.parametrize("qtype,main,fallback", [("Q4_0", "Q4_0", "F16"), ("Q8_0", "Q8_0", "F16"),
                                                 ("Q4_K_M", "Q4_K", "F16")])
def test_a_width_the_block_does_not_divide_falls_back_per_tensor(tmp_path, caplog, qtype, main, fallback) -> None:
    """d_model 64 fits 32-blocks, the FFN width 48 does not: ffn_down (rows of 48) falls back, as in llama.cpp."""
    import gguf

    from pocketlm.export.gguf import fallbacks

    if qtype == "Q4_K_M":
        pytest.importorskip("llama_cpp", reason="K-quants use llama.cpp's quantizer (optional extra)")
    cfg = ModelConfig(vocab_size=256, d_model=256, n_layer=1, n_head=4, intermediate_size=48, max_seq_len=64)
    torch.manual_seed(0)
    with caplog.at_level("WARNING"):
        path = export_gguf(Transformer(cfg).eval(), tmp_path / f"m_{qtype}.gguf", qtype)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    assert types["blk.0.ffn_down.weight"] == fallback
    assert fallbacks(path, qtype) == {"blk.0.ffn_down.weight": fallback}
    assert "blk.0.ffn_down.weight" in caplog.text
    if qtype != "Q4_K_M":  # the mix of Q4_K_M keeps some tensors in Q6_K by design
        assert types["blk.0.attn_q.weight"] == main and types["blk.0.ffn_up.weight"] == main


def test_tensor_overrides_are_written_as_given(tmp_path) -> None:
    """Already-quantized blocks (e.g. GPTQ's) go into the file byte for byte, never requantized."""
    import gguf

    model = _tiny()
    name = "blk.0.ffn_up.weight"
    rng = np.random.default_rng(0)
    blocks = gguf.quants.quantize(rng.standard_normal((256, 128)).astype(np.float32), gguf.GGMLQuantizationType.Q4_0)
    path = export_gguf(model, tmp_path / "o.gguf", "Q8_0",
                       tensor_overrides={name: (blocks, gguf.GGMLQuantizationType.Q4_0)})
    t = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == name)
    assert t.tensor_type == gguf.GGMLQuantizationType.Q4_0 and np.array_equal(np.asarray(t.data), blocks)
    with pytest.raises(GGUFExportError, match="holds \\(256, 64\\) Q4_0 values; the model's tensor is \\(256, 128\\)"):
        export_gguf(model, tmp_path / "p.gguf", "Q8_0", tensor_overrides={name: (blocks[:, :36], 2)})
    with pytest.raises(GGUFExportError, match="not a tensor of this model"):
        export_gguf(model, tmp_path / "p.gguf", "Q8_0", tensor_overrides={"blk.9.x.weight": (blocks, 2)})
    with pytest.raises(GGUFExportError, match="requantize"):
        export_gguf(model, tmp_path / "p.gguf", "Q4_K_M", tensor_overrides={name: (blocks, 2)})
    assert not (tmp_path / "p.gguf").exists()


def test_a_fused_model_exports_as_its_unfused_self(tmp_path) -> None:
    model = _tiny()
    plain = export_gguf(model, tmp_path / "a.gguf", "F32").read_bytes()
    model.fuse()
    assert export_gguf(model, tmp_path / "b.gguf", "F32").read_bytes() == plain
    assert model.transforms.fused  # fused again afterwards


def test_export_gguf_command(tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from pocketlm.cli import app

    cfg_path = tmp_path / "model.json"
    _tiny().config.save(cfg_path)
    out = tmp_path / "m.gguf"
    result = CliRunner().invoke(app, ["export", "gguf", str(cfg_path), "--qtype", "Q8_0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    done = json.loads(result.output.strip().splitlines()[-1])
    assert done["architecture"] == "llama" and done["bytes"] == out.stat().st_size and done["fallbacks"] == {}
