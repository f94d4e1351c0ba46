"""Quantized models as saveable steps: pocketlm checkpoints hold the integers and load them without
re-quantizing; MoE experts are quantized per expert; save guards refuse what a format cannot hold."""

from __future__ import annotations

import copy
import json
import time

import pytest
import torch
import transformers as T
from safetensors import safe_open

from pocketlm.model.quantize import QuantizationError, grids, quantize_int4, quantize_model, rtn, rtn_linear, sqnr_db
from pocketlm.export.gguf import export_gguf
from pocketlm.interop import load_model, save_hf, save_native
from pocketlm.model.config import ModelConfig
from pocketlm.model.linears import INT_LINEARS, Int4Linear
from pocketlm.model.packing import pack_for_cpu
from pocketlm.model.transformer import Experts, Transformer, UnsavableModelError
from pocketlm.runtime import ModelOpenError, open_model
from tests.hf_tiny import tiny_config

IDS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(3))


def _model(**changes) -> Transformer:
    cfg = dict(vocab_size=128, d_model=64, n_layer=2, n_head=4, n_kv_head=2, intermediate_size=96, max_seq_len=64,
               tie_embeddings=True)
    torch.manual_seed(0)
    return Transformer(ModelConfig(**{**cfg, **changes})).eval()


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    out = {}
    for family in ("mixtral", "qwen2_moe"):
        torch.manual_seed(0)
        out[family] = tmp_path_factory.mktemp(family)
        T.AutoModelForCausalLM.from_config(tiny_config(family)).save_pretrained(out[family])
    return out


def _forbid_quantizing(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("loading re-quantized a weight")

    for module, name in ((grids, "quantize_int8"), (grids, "quantize_int4"), (grids, "round_to_grid"),
                         (rtn, "round_to_grid")):
        monkeypatch.setattr(module, name, refuse)


@pytest.mark.parametrize("shape", [(16, 64), (1040, 96), (2064, 64)])
def test_int4_codes_read_back_from_the_kernel_layout(shape) -> None:
    """The portable codes saved from an Int4Linear are exactly the codes the quantizer chose."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(shape[1], shape[0], bias=False)
    q, _, _ = quantize_int4(lin.weight, 32)
    assert torch.equal(rtn_linear(lin, "int4", 32).codes(), q)


@pytest.mark.parametrize("scheme,group_size", [("int8", None), ("int4", 32), ("int4", 64)])
def test_quantized_checkpoint_reloads_identically_without_requantizing(tmp_path, monkeypatch, scheme,
                                                                        group_size) -> None:
    model = quantize_model(_model(intermediate_size=128).to(torch.bfloat16), scheme, group_size or 32)
    with torch.inference_mode():
        ref = model(IDS)
    t0 = time.perf_counter()
    save_native(model, tmp_path)
    save_s = time.perf_counter() - t0
    meta = json.loads((tmp_path / "pocketlm.json").read_text())["transforms"]
    assert meta["fused"] and meta["quantization"]["scheme"] == scheme
    assert meta["quantization"]["group_size"] == group_size and meta["quantization"]["method"] == "rtn"
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("blocks.0.attn.qkv.qweight").dtype == (torch.int8 if scheme == "int8" else torch.uint8)
    assert "embed.weight" in keys and "lm_head.qweight" in keys  # tied: the head's integers, the float table

    _forbid_quantizing(monkeypatch)
    t0 = time.perf_counter()
    back = open_model(tmp_path)  # no precision: the stored one
    load_s = time.perf_counter() - t0
    print(f"\n{scheme} g{group_size}: save {save_s * 1e3:.0f} ms, load {load_s * 1e3:.0f} ms")
    assert back.transforms == model.transforms
    assert isinstance(back.lm_head, INT_LINEARS) and type(back.embed) is torch.nn.Embedding
    with torch.inference_mode():
        assert torch.equal(back(IDS), ref)
    assert torch.equal(open_model(tmp_path, scheme)(IDS), ref)


def test_quantized_checkpoint_refuses_another_precision(tmp_path) -> None:
    save_native(quantize_model(_model().to(torch.bfloat16), "int4", 32), tmp_path)
    with pytest.raises(ModelOpenError, match="holds int4 weights.*open the float model"):
        open_model(tmp_path, "int8")
    with pytest.raises(ModelOpenError, match="groups of 32, not 64"):
        open_model(tmp_path, "int4", group_size=64)


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_moe_experts_are_quantized_per_expert(tmp_path, hf_dirs, family, scheme) -> None:
    model = load_model(hf_dirs[family], dtype=torch.bfloat16).eval()
    original = copy.deepcopy(model)
    with torch.inference_mode():
        ref = model(IDS)
    quantize_model(model, scheme, 32, skip_unsupported=True)
    float_layers = set(model.transforms.float_layers)
    left_float = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert left_float == float_layers  # every float leftover is declared
    assert not any(".experts." in n for n in float_layers)
    if scheme == "int4":  # the 4-wide router (and qwen2_moe's 1-wide shared gate) do not fit the kernel
        assert any(n.endswith("router") for n in float_layers)
    pairs = [(m, original.get_submodule(n)) for n, m in model.named_modules() if isinstance(m, Experts)]
    assert pairs
    for quantized, float_experts in pairs:  # expert e holds the RTN of its own matrices
        assert quantized.gate_up_proj is None
        for layers, stacked in ((quantized.gate_up, float_experts.gate_up_proj),
                                (quantized.down, float_experts.down_proj)):
            for e, layer in enumerate(layers):
                alone = rtn_linear(_linear_of(stacked[e]), scheme)
                assert torch.equal(layer.qweight, alone.qweight)
    with torch.inference_mode():
        out = model(IDS)
    assert sqnr_db(ref, out) > (25 if scheme == "int8" else 8)
    save_native(model, tmp_path)
    with torch.inference_mode():
        assert torch.equal(load_model(tmp_path, dtype=None)(IDS), out)


def _linear_of(weight: torch.Tensor) -> torch.nn.Linear:
    lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    lin.weight = torch.nn.Parameter(weight.detach().clone())
    return lin


def test_an_expert_the_kernel_cannot_take_is_refused_by_name() -> None:
    model = _model(n_experts=4, moe_intermediate_size=48, tie_embeddings=False)
    with pytest.raises(QuantizationError, match=r"'blocks\.0\.mlp\.experts\.down\.0'.*in_features=48.*use int8"):
        quantize_model(model, "int4", 32, skip=["router"])
    quantize_model(model, "int8")  # int8 takes every expert
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())


def test_fuse_and_unfuse_keep_the_function_and_the_saved_names(tmp_path) -> None:
    model = _model(qkv_bias=True, mlp_bias=True)
    keys = set(model.state_dict())
    with torch.no_grad():
        ref = model(IDS)
        model.fuse()
        assert model.transforms.fused and model.blocks[0].attn.q_proj is None
        assert torch.allclose(model(IDS), ref, atol=1e-6)
        save_native(model, tmp_path / "fused")  # the native format keeps the fused layout
        assert torch.allclose(load_model(tmp_path / "fused")(IDS), model(IDS), atol=0)
        with pytest.raises(UnsavableModelError, match=r"call model.unfuse\(\)"):
            save_hf(model, tmp_path / "hf")
        model.unfuse()
        assert set(model.state_dict()) == keys and torch.allclose(model(IDS), ref, atol=1e-6)


def test_savers_refuse_packed_and_quantized_models_clearly(tmp_path) -> None:
    packed = pack_for_cpu(_model())
    for save in (lambda: save_native(packed, tmp_path / "n"), lambda: save_hf(packed, tmp_path / "h"),
                 lambda: export_gguf(packed, tmp_path / "m.gguf")):
        with pytest.raises(UnsavableModelError, match="save the model before packing"):
            save()
    quantized = quantize_model(_model(), "int4", 32)
    with pytest.raises(UnsavableModelError, match="int4 weight-only.*save_native"):
        save_hf(quantized, tmp_path / "h")
    with pytest.raises(UnsavableModelError, match="GGUF quantizes on export"):
        export_gguf(quantized, tmp_path / "m.gguf")
    assert not any(tmp_path.iterdir())


def test_a_crash_while_saving_leaves_no_checkpoint_that_looks_complete(tmp_path, monkeypatch) -> None:
    from pocketlm.interop import native

    def crash(state, path, metadata=None):
        open(path, "wb").write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(native, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_native(quantize_model(_model(), "int8"), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_kernel_layers_hold_only_their_kernels_layout() -> None:
    """No second copy of the weights: an Int4Linear holds 4 bits a weight plus a scale and zero a group."""
    layer = rtn_linear(torch.nn.Linear(256, 128, bias=False), "int4", 32)
    assert isinstance(layer, Int4Linear)
    assert layer.weight_bytes() == 128 * 256 // 2 + 2 * 2 * 128 * 256 // 32
