"""GGUF export: llama.cpp (via llama-cpp-python) runs the exported file and gives pocketlm's logits."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from pocketlm.model.quantize import sqnr_db
from pocketlm.export.gguf import GGUFExportError, export_gguf, load_gguf_weights
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import Transformer

IDS = list(range(1, 60, 3))


def _tiny(tie: bool = True, qkv_bias: bool = False) -> Transformer:
    cfg = ModelConfig(vocab_size=512, d_model=128, n_layer=2, n_head=4, n_kv_head=2, intermediate_size=256,
                      max_seq_len=256, tie_embeddings=tie, qkv_bias=qkv_bias, rope_theta=10000.0)
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.02)
            elif "norm" in name:
                p.uniform_(0.8, 1.2)
    return model


def _llama_logits(path) -> torch.Tensor:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (optional extra) is not installed")
    llm = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=1)
    try:
        llm.eval(IDS)
        return torch.tensor(np.array(llm.scores[: len(IDS)]))
    finally:
        llm.close()


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
    with pytest.raises(GGUFExportError, match="plain RMSNorm.*gated SiLU|RMSNorm"):
        export_gguf(Transformer(cfg), tmp_path / "x.gguf", "F16")
    with pytest.raises(GGUFExportError, match="unknown GGUF type 'Q3_0'"):
        export_gguf(_tiny(), tmp_path / "x.gguf", "Q3_0")
    assert not (tmp_path / "x.gguf").exists()
