"""Bad checkpoints give one clear error naming the file or tensor and the fix."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from pocketlm.interop import CheckpointError, UnsupportedModelError, load_model, save_hf, save_native
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import Transformer
from tests.hf_tiny import tiny_config


@pytest.fixture()
def llama_dir(tmp_path):
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(tiny_config("llama")).save_pretrained(tmp_path)
    return tmp_path


def test_unknown_model_type(llama_dir):
    cfg = json.loads((llama_dir / "config.json").read_text())
    cfg["model_type"] = "openelm"
    (llama_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="'openelm' is not supported; supported families: .*llama"):
        load_model(llama_dir)


def test_missing_tensor(llama_dir):
    f = llama_dir / "model.safetensors"
    state = load_file(f)
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, f)
    with pytest.raises(CheckpointError, match=r"missing.*blocks\.1\.mlp\.up_proj\.weight"):
        load_model(llama_dir)


def test_wrong_shape(llama_dir):
    f = llama_dir / "model.safetensors"
    state = load_file(f)
    state["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(48, 64)
    save_file(state, f)
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.k_proj\.weight.*\(48, 64\).*\(32, 64\)"):
        load_model(llama_dir)


def test_truncated_safetensors(llama_dir):
    f = llama_dir / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file.*truncated"):
        load_model(llama_dir)


def test_config_contradicts_weights(llama_dir):
    cfg = json.loads((llama_dir / "config.json").read_text())
    cfg["num_hidden_layers"] = 1
    (llama_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="not used by a llama model.*model.layers.1"):
        load_model(llama_dir)


def test_missing_path_and_missing_config(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or directory"):
        load_model(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path)


def test_legacy_bin_loads_with_weights_only(llama_dir, tmp_path):
    state = load_file(llama_dir / "model.safetensors")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text((llama_dir / "config.json").read_text())
    torch.save(state, legacy / "pytorch_model.bin")
    a, b = load_model(llama_dir), load_model(legacy)
    ids = torch.randint(0, 128, (1, 8))
    assert torch.equal(a(ids), b(ids))


def test_legacy_per_expert_mixtral_checkpoint(tmp_path):
    """transformers<5 stored Mixtral experts one by one (w1/w3/w2): they are stacked on load."""
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(tiny_config("mixtral")).eval()
    hf.save_pretrained(tmp_path / "new")
    state = load_file(tmp_path / "new" / "model.safetensors")
    legacy = {}
    for k, v in state.items():
        if ".mlp.experts.gate_up_proj" in k:
            p = k.replace("mlp.experts.gate_up_proj", "block_sparse_moe.experts.{e}.")
            for e in range(v.shape[0]):
                gate, up = v[e].chunk(2)
                legacy[p.format(e=e) + "w1.weight"], legacy[p.format(e=e) + "w3.weight"] = gate, up
        elif ".mlp.experts.down_proj" in k:
            for e in range(v.shape[0]):
                legacy[k.replace("mlp.experts.down_proj", f"block_sparse_moe.experts.{e}.w2.weight")] = v[e]
        elif ".mlp.gate.weight" in k:
            legacy[k.replace("mlp.gate", "block_sparse_moe.gate")] = v
        else:
            legacy[k] = v
    (tmp_path / "old").mkdir()
    save_file({k: v.contiguous() for k, v in legacy.items()}, tmp_path / "old" / "model.safetensors")
    (tmp_path / "old" / "config.json").write_text((tmp_path / "new" / "config.json").read_text())
    ids = torch.randint(0, 128, (1, 9))
    with torch.no_grad():
        assert (load_model(tmp_path / "old")(ids) - hf(ids).logits).abs().max() < 1e-4


def test_native_roundtrip_and_hf_refusal(tmp_path):
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layer=4, n_head=4, intermediate_size=48, block_repeat=2)
    model = Transformer(cfg).eval()
    save_native(model, tmp_path / "native")
    again = load_model(tmp_path / "native")
    ids = torch.randint(0, 64, (2, 7))
    assert torch.equal(model(ids), again(ids))
    with pytest.raises(UnsupportedModelError, match="block_repeat=2.*save_native"):
        save_hf(model, tmp_path / "hf")


def test_native_truncated(tmp_path):
    model = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layer=2, n_head=4, intermediate_size=48))
    save_native(model, tmp_path)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(tmp_path)


def test_trained_pocketlm_model_exports_to_transformers(tmp_path):
    """A model built in pocketlm (no HF origin) saves as the closest family and transformers agrees."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layer=2, n_head=4, n_kv_head=2, intermediate_size=48,
                      qk_norm="head", tie_embeddings=False)
    model = Transformer(cfg).eval()
    save_hf(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "qwen3"
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max() < 1e-4
