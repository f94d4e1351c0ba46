"""Malformed model configs: a pocketlm ModelConfig JSON and a Hugging Face config.json, field by field.

Each case runs `pocketlm info` in-process on the broken file and expects one error line naming the
file and the field; the valid files are accepted.
"""

from __future__ import annotations

import math

import pytest

from tests.fuzz.conftest import assert_refused, run_cli, write_json

NAN, INF = math.nan, math.inf

BASE = dict(vocab_size=64, d_model=32, n_layer=2, n_head=4, n_kv_head=2, intermediate_size=48, max_seq_len=64)

# (field, bad value): every value is wrong for the field (type, sign, range, or a contradiction)
POCKETLM_CASES = [
    *[("vocab_size", v) for v in (0, -5, "many", 1.5, None, True, 10**9)],
    *[("d_model", v) for v in (0, -1, "64", 64.0, None, 10**7)],
    *[("n_layer", v) for v in (0, -3, "two", 2.5, None, 10**7)],
    *[("n_head", v) for v in (0, -4, "4", [], [4, 4, 4], 3)],
    *[("n_kv_head", v) for v in (0, 3, "2", -2)],
    *[("max_seq_len", v) for v in (0, -1, "long", None, 2.0)],
    *[("norm_eps", v) for v in (NAN, -1e-5, 0, "small", None, INF)],
    *[("rope_theta", v) for v in (0, -1.0, INF, "big", NAN)],
    *[("rotary_fraction", v) for v in (0, 1.5, NAN)],
    *[("intermediate_size", v) for v in (0, -1, "x", [48])],
    *[("activation", v) for v in ("swish2", 3)],
    ("norm", "batchnorm"), ("positions", "sinusoidal"), ("ffn_type", "moe"), ("attention", "flash"),
    ("qk_norm", "layer"), ("norm_placement", "middle"),
    *[("qkv_bias", v) for v in ("yes", 1)], ("tie_embeddings", "false"),
    *[("block_repeat", v) for v in (0, 3)],
    *[("sliding_window", v) for v in (0, -1)],
    *[("attn_scale", v) for v in (NAN, -1.0)], ("logit_scale", INF), ("embed_scale", NAN),
    ("residual_scale", "1"), ("attn_logit_softcap", 0), ("clip_qkv", -8.0),
    *[("rope_scaling", v) for v in ("linear", {"rope_type": "weird"})],
    *[("layer_window", v) for v in ([True], "yes")],
    ("extra", []), ("name", 5), ("head_dim", 0), ("head_dim", "8"), ("embed_proj_dim", -1),
    ("n_experts", -1), ("top_k", -1), ("first_dense_layers", "1"),
]


@pytest.mark.parametrize("field,value", POCKETLM_CASES, ids=[f"{f}={v!r}" for f, v in POCKETLM_CASES])
def test_pocketlm_config_field(tmp_path, field, value) -> None:
    path = write_json(tmp_path / "model.json", {**BASE, field: value})
    assert_refused(*run_cli("info", path), "model.json", field)


def test_moe_top_k_above_experts(tmp_path) -> None:
    path = write_json(tmp_path / "moe.json", {**BASE, "n_experts": 4, "top_k": 5})
    assert_refused(*run_cli("info", path), "moe.json", "top_k")


def test_unknown_field_is_named(tmp_path) -> None:
    path = write_json(tmp_path / "typo.json", {**BASE, "n_layers": 2})
    assert_refused(*run_cli("info", path), "typo.json", "n_layers")


BROKEN_FILES = {
    "list": "[1, 2]", "null": "null", "string": '"llama"', "number": "7", "invalid": "{\"d_model\": 3",
    "empty": "", "trailing_comma": '{"d_model": 32,}', "deep": "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("kind", sorted(BROKEN_FILES))
def test_broken_config_file(tmp_path, kind) -> None:
    path = write_json(tmp_path / f"{kind}.json", BROKEN_FILES[kind])
    assert_refused(*run_cli("info", path), f"{kind}.json")


def test_binary_config_file(tmp_path) -> None:
    path = tmp_path / "garbage.json"
    path.write_bytes(bytes(range(256)) * 4)
    assert_refused(*run_cli("info", path), "garbage.json")


def test_valid_pocketlm_config_is_accepted(tmp_path) -> None:
    code, text = run_cli("info", write_json(tmp_path / "ok.json", BASE), "--json")
    assert code == 0, text


HF_CASES = [
    *[("num_hidden_layers", v) for v in ("two", 2.5, None, 0, -1, 10**7)],
    *[("hidden_size", v) for v in (64.5, None, 0, "64", -64)],
    *[("num_attention_heads", v) for v in (0, 3, None, -4)],
    *[("num_key_value_heads", v) for v in (3, 0)],
    *[("intermediate_size", v) for v in (0, "x", None)],
    *[("vocab_size", v) for v in (0, None, -1)],
    *[("max_position_embeddings", v) for v in (0, -1)],
    *[("rms_norm_eps", v) for v in (NAN, -1.0, "x")],
    *[("model_type", v) for v in ("nonexistent", ["llama"], None, 5)],
    ("tie_word_embeddings", "yes"),
]


@pytest.mark.parametrize("field,value", HF_CASES, ids=[f"{f}={v!r}" for f, v in HF_CASES])
def test_hf_config_field(tmp_path, hf_tiny_config, field, value) -> None:
    write_json(tmp_path / "m" / "config.json", {**hf_tiny_config, field: value})
    assert_refused(*run_cli("info", tmp_path / "m"), "config.json")


@pytest.mark.parametrize("kind", sorted(BROKEN_FILES))
def test_broken_hf_config_json(tmp_path, kind) -> None:
    write_json(tmp_path / "m" / "config.json", BROKEN_FILES[kind])
    assert_refused(*run_cli("info", tmp_path / "m"), "config.json")


def test_valid_hf_config_is_accepted(tmp_path, hf_tiny_config) -> None:
    write_json(tmp_path / "m" / "config.json", hf_tiny_config)
    code, text = run_cli("info", tmp_path / "m", "--json")
    assert code == 0, text


def test_catalog_name_is_accepted() -> None:
    code, text = run_cli("info", "SmolLM-135M", "--json")
    assert code == 0, text


CLASSIFY_CASES = HF_CASES[::3]  # `survey classify` reads the same config.json through the same checks


@pytest.mark.parametrize("field,value", CLASSIFY_CASES, ids=[f"{f}={v!r}" for f, v in CLASSIFY_CASES])
def test_classify_hf_config_field(tmp_path, hf_tiny_config, field, value) -> None:
    write_json(tmp_path / "m" / "config.json", {**hf_tiny_config, field: value})
    code, text = run_cli("survey", "classify", tmp_path / "m")
    if field == "model_type":  # an unknown family is classified from generic keys (documented, approximate)
        assert code in (0, 2) and "Traceback" not in text
    else:
        assert_refused(code, text, "config.json")


@pytest.mark.parametrize("kind", ["list", "null", "invalid", "deep"])
def test_classify_broken_config_json(tmp_path, kind) -> None:
    write_json(tmp_path / "m" / "config.json", BROKEN_FILES[kind])
    assert_refused(*run_cli("survey", "classify", tmp_path / "m"), "config.json")
