"""The survey catalog: every entry rebuilds as a ModelConfig whose exact parameter count matches the official one."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from pocketlm.model.config import ModelConfig
from pocketlm.model.costs import param_counts
from pocketlm.survey.catalog import (CatalogError, entry_to_config, get_entry, load_catalog, params_match,
                                     parse_count, published_tolerance)

ENTRIES = load_catalog()
BUILDABLE = [e for e in ENTRIES if e.buildable]


def analytic_params(cfg: ModelConfig) -> int:
    """Parameter count written from the HF modelling code of each family, independent of pocketlm.costs."""
    d = cfg.d_model

    def norm(n: int) -> int:
        if not cfg.norm_affine:
            return 0
        return n * (2 if cfg.norm == "layernorm" and cfg.norm_bias else 1)

    width = cfg.embed_proj_dim or d
    total = cfg.vocab_size * width
    if cfg.positions == "learned":
        total += (cfg.max_seq_len + cfg.learned_pos_offset) * d
    if cfg.embed_proj_dim:
        total += 2 * cfg.embed_proj_dim * d
    total += norm(d) * (int(cfg.embed_norm) + int(cfg.final_norm))
    for i in range(cfg.n_stored_layers):
        h, kv = cfg.heads(i), cfg.kv_heads(i)
        if cfg.attention == "mla":
            qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
            a = d * cfg.q_lora_rank + norm(cfg.q_lora_rank) + cfg.q_lora_rank * h * qk
            a += d * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) + norm(cfg.kv_lora_rank)
            a += cfg.kv_lora_rank * h * (cfg.qk_nope_head_dim + cfg.v_head_dim) + h * cfg.v_head_dim * d
        else:
            hd = cfg.dim_head
            a = d * (h + 2 * kv) * hd + h * hd * d
            a += (h + 2 * kv) * hd * cfg.qkv_bias + d * cfg.attn_out_bias
            a += {"none": 0, "head": 2 * norm(hd), "full": norm(h * hd) + norm(kv * hd)}[cfg.qk_norm]
        f = cfg.ffn_dim(i)
        if cfg.ffn_type == "gated":
            mlp = 3 * d * f + (2 * f + d) * cfg.mlp_bias
        else:
            mlp = 2 * d * f + (f + d) * cfg.mlp_bias
        if cfg.shared_ffn and i > 0:
            mlp = 0
        n_norms = 1 if cfg.parallel_shared_norm else {"pre": 2, "post": 2, "post_sublayer": 2, "sandwich": 4}[
            cfg.norm_placement]
        total += a + mlp + n_norms * norm(d)
    if not cfg.tie_embeddings:
        total += cfg.vocab_size * width
    return total + cfg.vocab_size * cfg.lm_head_bias


def test_membership_and_uncertain_slots():
    m = Counter(e.membership for e in ENTRIES)
    assert m == {"C": 56, "S": 6, "X": 7}
    assert {e.name for e in ENTRIES if e.membership == "S"} == {
        "Qwen2.5-0.5B", "Qwen2.5-1.5B", "Qwen2.5-3B", "Hare-1.1B", "OLMo-1B", "H2O-Danube2-1.8B"}


def test_only_non_transformers_or_unconfigured_are_unbuildable():
    assert {e.name for e in ENTRIES if not e.buildable} == {"RecurrentGemma-2B", "Hare-1.1B"}
    with pytest.raises(CatalogError, match="Griffin"):
        entry_to_config(get_entry("RecurrentGemma-2B"))


@pytest.mark.parametrize("entry", BUILDABLE, ids=lambda e: e.name)
def test_parameter_count_matches_official(entry):
    cfg = entry_to_config(entry)
    counts = param_counts(cfg)
    assert counts["total"] == analytic_params(cfg)
    ok, why = params_match(entry, counts)
    assert ok, why


def test_params_notes_are_not_stale():
    """A params_note must explain a real gap (> 0.5 % and outside the published rounding) or a size-class name."""
    for e in BUILDABLE:
        if not e.params_note:
            continue
        built = param_counts(entry_to_config(e))[e.params_official_counts]
        assert built != e.params_official, e.name


def test_exact_published_counts_are_reproduced_exactly():
    # counts published to the unit (model cards, papers' tables) are reproduced to the unit
    for name in ("Pythia-160M", "Pythia-2.8B", "BLOOM-560M", "StableLM-zephyr-3B", "MiniCPM-1B", "MiniCPM-2B-128k"):
        e = get_entry(name)
        assert param_counts(entry_to_config(e))[e.params_official_counts] == e.params_official, name
    assert published_tolerance(get_entry("OPT-1.3B")) == pytest.approx(0.05e9)


META_BUILD = ["OPT-350M", "Galactica-125M", "BLOOM-560M", "Pythia-160M", "Cerebras-GPT-256M", "Phi-2",
              "StableLM-2-zephyr-1.6B", "MobiLlama-0.5B", "Gemma-2B", "Gemma-2-2B", "MiniCPM3-4B", "MiniCPM-1B",
              "OpenELM-270M", "DCLM-1B", "OLMo-1B", "Qwen2-0.5B", "Llama-3.2-1B", "GPT2"]


@pytest.mark.parametrize("name", META_BUILD)
def test_transformer_on_meta_device_has_the_counted_parameters(name):
    from pocketlm.model.transformer import Transformer

    cfg = entry_to_config(get_entry(name))
    with torch.device("meta"):
        model = Transformer(cfg)
    assert sum(p.numel() for p in model.parameters()) == param_counts(cfg)["total"]


def test_openelm_layerwise_lists_follow_the_published_config():
    # num_query_heads / num_kv_heads as published in OpenELM-270M's config.json (copy: TinyPixel/OpenELM-270M)
    q = [12] * 5 + [16] * 7 + [20] * 4
    kv = [3] * 5 + [4] * 7 + [5] * 4
    cfg = entry_to_config(get_entry("OpenELM-270M"))
    assert cfg.n_head == q and cfg.n_kv_head == kv and cfg.attention_kind == "GQA"
    # FFN widths: make_divisible(multiplier * 1280, 256) over linspace(0.5, 4.0, 16) rounded to 2 decimals
    mult = [round(v, 2) for v in np.linspace(0.5, 4.0, 16)]
    expect = [max(256, int(m * 1280 + 128) // 256 * 256) for m in mult]
    expect = [w + 256 if w < 0.9 * m * 1280 else w for w, m in zip(expect, mult)]
    assert cfg.intermediate_size == expect


def test_lookup_errors_name_the_fix(tmp_path):
    assert get_entry("smollm-135m").name == "SmolLM-135M"
    assert get_entry("HuggingFaceTB/SmolLM-135M").name == "SmolLM-135M"
    with pytest.raises(CatalogError, match="Did you mean: smollm|SmolLM"):
        get_entry("smolm-135")
    with pytest.raises(CatalogError, match="135M, 1.5B"):
        parse_count("lots")
    assert parse_count("1.5B") == 1.5e9 and parse_count("135M") == 135e6
    bad = tmp_path / "c.yaml"
    bad.write_text("- just a list\n")
    with pytest.raises(CatalogError, match="entries"):
        load_catalog(bad)
    bad.write_text("entries:\n- name: X\n  organization: o\n")
    with pytest.raises(CatalogError, match="neither a config"):
        load_catalog(bad)


def test_every_row_names_its_source():
    for e in ENTRIES:
        assert e.verified_from and e.params_source, e.name
