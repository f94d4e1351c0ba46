"""`classify` on HF configs of the core families, the catalog's own configs, and custom-code configs."""

from __future__ import annotations

import json

import pytest

from pocketlm.survey.catalog import CatalogError, entry_to_config, load_catalog
from pocketlm.survey.classify import classify

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=1000, max_position_embeddings=128)


def _hf(cls_name: str, **kw) -> dict:
    cls = getattr(transformers, cls_name)
    return cls(**kw).to_dict()


# (config class, kwargs, expected axes)
CASES = [
    ("LlamaConfig", dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, **TINY),
     dict(attention="GQA", ffn_type="gated", activation="silu", norm="rmsnorm", positions="rope")),
    ("Qwen2Config", dict(hidden_size=64, intermediate_size=320, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=1, **TINY),
     dict(attention="MQA", ffn_type="gated", activation="silu", norm="rmsnorm", positions="rope")),
    ("GemmaConfig", dict(hidden_size=64, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=1, head_dim=16, **TINY),
     dict(attention="MQA", ffn_type="gated", activation="gelu_tanh", norm="rmsnorm", ffn_ratio=8.0)),
    ("Gemma2Config", dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=16, **TINY),
     dict(attention="GQA", ffn_type="gated", activation="gelu_tanh", norm="rmsnorm", ffn_ratio=4.0)),
    ("GPTNeoXConfig", dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, **TINY),
     dict(attention="MHA", ffn_type="standard", activation="gelu", norm="layernorm", positions="rope")),
    ("OPTConfig", dict(hidden_size=64, ffn_dim=256, num_hidden_layers=2, num_attention_heads=4,
                       word_embed_proj_dim=64, **TINY),
     dict(attention="MHA", ffn_type="standard", activation="relu", norm="layernorm", positions="learned")),
    ("BloomConfig", dict(hidden_size=64, n_layer=2, n_head=4, vocab_size=1000),
     dict(attention="MHA", ffn_type="standard", activation="gelu_tanh", norm="layernorm", positions="alibi")),
    ("PhiConfig", dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, **TINY),
     dict(attention="MHA", ffn_type="standard", activation="gelu_tanh", norm="layernorm", positions="rope")),
    ("GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, vocab_size=1000, n_positions=128),
     dict(attention="MHA", ffn_type="standard", activation="gelu_tanh", norm="layernorm", positions="learned")),
    ("StableLmConfig", dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=4, **TINY),
     dict(attention="MHA", ffn_type="gated", activation="silu", norm="layernorm")),
    ("Phi3Config", dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=4, pad_token_id=0, **TINY),
     dict(attention="MHA", ffn_type="gated", activation="silu", norm="rmsnorm")),
    ("OlmoConfig", dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                        pad_token_id=0, **TINY),
     dict(attention="MHA", ffn_type="gated", activation="silu", norm="layernorm")),
]


@pytest.mark.parametrize("cls_name,kwargs,expected", CASES, ids=[c[0] for c in CASES])
def test_core_family_axes(tmp_path, cls_name, kwargs, expected):
    (tmp_path / "config.json").write_text(json.dumps(_hf(cls_name, **kwargs)))
    c = classify(tmp_path)  # a model directory
    got = c.axes.to_dict()
    for key, value in expected.items():
        assert got[key] == value, (cls_name, key, got[key])
    assert c.axes.params and len(c.neighbors) == 5
    assert [n.distance for n in c.neighbors] == sorted(n.distance for n in c.neighbors)


def test_catalog_configs_find_themselves():
    """An exported catalog architecture is classified at distance 0 from its own entry."""
    from pocketlm.interop import config_from_hf
    from pocketlm.interop.hf import export_family
    from pocketlm.interop.hf_config import hf_config_from

    checked = 0
    for e in load_catalog():
        if not e.buildable:
            continue
        cfg = entry_to_config(e)
        hf = hf_config_from(cfg, export_family(cfg))
        back = config_from_hf(hf)
        if param_total(back) != param_total(cfg):
            continue  # family cannot express it exactly (layer-wise widths, shared FFN, MiniCPM scalings)
        c = classify(hf, k=8)
        assert e.name in [n.name for n in c.neighbors if n.distance == 0], (e.name, c.neighbors[:3])
        checked += 1
    assert checked >= 45


def param_total(cfg) -> int:
    from pocketlm.model.costs import param_counts

    return param_counts(cfg)["total"]


def test_custom_code_config_falls_back_to_generic_keys(tmp_path):
    openelm_like = {"model_type": "openelm", "model_dim": 1280, "num_query_heads": [12, 16, 20],
                    "num_kv_heads": [3, 4, 5], "ffn_multipliers": [0.5, 2.0, 4.0], "ffn_with_glu": True,
                    "activation_fn_name": "swish", "normalization_layer_name": "rms_norm", "vocab_size": 32000,
                    "rope_freq_constant": 10000, "share_input_output_layers": True}
    c = classify(openelm_like)
    assert "generic" in c.source
    a = c.axes
    assert (a.attention, a.ffn_type, a.ffn_ratio, a.activation, a.norm) == ("GQA", "gated", "layer-wise", "silu",
                                                                            "rmsnorm")
    assert c.neighbors[0].name.startswith("OpenELM")


def test_bad_inputs(tmp_path):
    with pytest.raises(CatalogError, match="no config.json"):
        classify(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CatalogError, match="not valid JSON"):
        classify(tmp_path / "config.json")
