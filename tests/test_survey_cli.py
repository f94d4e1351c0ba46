"""The survey CLI and `pocketlm build`: behaviour through the commands, checked against transformers."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from pocketlm.survey.cli import register
from pocketlm.survey.build import build_model, hf_blocker
from pocketlm.survey.catalog import get_entry

runner = CliRunner()


@pytest.fixture(scope="module")
def app():
    a = typer.Typer()
    register(a)
    return a


def test_list_filters(app):
    r = runner.invoke(app, ["survey", "list", "--attention", "MLA", "--json"])
    assert r.exit_code == 0, r.output
    assert [m["name"] for m in json.loads(r.output)] == ["MiniCPM3-4B"]
    r = runner.invoke(app, ["survey", "list", "--year", "2022", "--max-params", "600M", "--json"])
    names = {m["name"] for m in json.loads(r.output)}
    assert names == {"OPT-125M", "OPT-350M", "Galactica-125M", "BLOOM-560M", "BLOOMZ-560M"}
    r = runner.invoke(app, ["survey", "list", "--norm", "layernorm", "--ffn", "gated", "--json"])
    assert {m["name"] for m in json.loads(r.output)} == {"StableLM-zephyr-3B", "StableLM-2-zephyr-1.6B", "DCLM-1B",
                                                       "OLMo-1B"}
    r = runner.invoke(app, ["survey", "list", "--min-params", "lots"])
    assert r.exit_code == 2 and "135M" in r.output


def test_show_and_unknown_name(app):
    r = runner.invoke(app, ["survey", "show", "MiniCPM-2B-128k"])
    assert r.exit_code == 0 and "2,442,057,984" in r.output and "params check" in r.output
    r = runner.invoke(app, ["survey", "show", "Gemma-3"])
    assert r.exit_code == 2 and "no catalog model named" in r.output


def test_trends_capabilities_classify(app, tmp_path):
    r = runner.invoke(app, ["survey", "trends", "--source", "survey", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "architecture_trends.png").is_file() and (tmp_path / "shares_vs_published.csv").is_file()
    r = runner.invoke(app, ["survey", "capabilities", "--out", str(tmp_path)])
    assert r.exit_code == 0 and (tmp_path / "capabilities.png").is_file()
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True).save_pretrained(tmp_path / "m")
    r = runner.invoke(app, ["survey", "classify", str(tmp_path / "m"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["axes"]["attention"] == "GQA" and out["neighbors"][0]["name"] == "SmolLM-135M"
    assert out["neighbors"][0]["distance"] == 0
    r = runner.invoke(app, ["survey", "classify", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "config.json" in r.output


def test_build_saves_hf_that_transformers_loads(app, tmp_path):
    """The built catalog architecture loads in transformers with the same parameters and logits."""
    from transformers import AutoModelForCausalLM

    name = "Cerebras-GPT-111M"  # the smallest catalog model
    r = runner.invoke(app, ["build", name, "--out", str(tmp_path / "b"), "--seed", "3"])
    assert r.exit_code == 0, r.output
    assert "(hf," in r.output
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "b")).eval()
    assert sum(p.numel() for p in hf.parameters()) == 111_050_496
    ours = build_model(name, seed=3)
    ids = torch.tensor([[5, 17, 300, 42, 7, 999]])
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids)
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4)
    other = build_model(name, seed=4)
    assert not torch.equal(other.embed.weight, ours.embed.weight)


def test_build_refuses_hf_for_layerwise_models(app, tmp_path):
    assert "intermediate_size" in hf_blocker(get_entry("OpenELM-270M"))
    r = runner.invoke(app, ["build", "OpenELM-270M", "--out", str(tmp_path), "--format", "hf"])
    assert r.exit_code == 2 and "native" in r.output
    assert not any(tmp_path.iterdir())
    r = runner.invoke(app, ["build", "RecurrentGemma-2B", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "Griffin" in r.output
