"""Parity with mergekit 0.1.5: the same YAML recipe, run by mergekit and by pocketlm, on tiny random
Hugging Face models, gives the same tensors (max |Δ| ≤ 1e-6). Skipped when mergekit is absent
(install the `mergekit` extra: pip install -c constraints.txt -e .[mergekit])."""

from __future__ import annotations

import logging

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pocketlm.compress.merge import merge, parse_recipe
from pocketlm.interop import load_model
from tests.merge_fixtures import hf_models

mergekit = pytest.importorskip("mergekit", reason="mergekit not installed (the parity reference; extra 'mergekit')")

RECIPES = {
    "linear": """
merge_method: linear
models:
  - {{model: {m0}, parameters: {{weight: 0.5}}}}
  - {{model: {m1}, parameters: {{weight: 0.3}}}}
  - {{model: {m2}, parameters: {{weight: [0.1, 0.6]}}}}
""",
    "linear_unnormalized": """
merge_method: linear
parameters: {{normalize: false}}
models:
  - {{model: {m0}, parameters: {{weight: 0.6}}}}
  - {{model: {m1}, parameters: {{weight: [{{filter: mlp, value: 0.1}}, {{value: 0.4}}]}}}}
""",
    "slerp": """
slices:
  - sources:
      - {{model: {m0}, layer_range: [0, 2]}}
      - {{model: {m1}, layer_range: [0, 2]}}
merge_method: slerp
base_model: {m0}
parameters:
  t:
    - {{filter: self_attn, value: [0, 0.5, 0.3, 0.7, 1]}}
    - {{filter: mlp, value: [1, 0.5, 0.7, 0.3, 0]}}
    - value: 0.5
dtype: float32
""",
    "task_arithmetic": """
merge_method: task_arithmetic
base_model: {m0}
models:
  - {{model: {m1}, parameters: {{weight: 0.8}}}}
  - {{model: {m2}, parameters: {{weight: -0.3}}}}
parameters: {{lambda: 0.9}}
""",
    "ties": """
merge_method: ties
base_model: {m0}
models:
  - {{model: {m1}, parameters: {{weight: 0.7, density: 0.5}}}}
  - model: {m2}
    parameters:
      weight: [0.2, 0.9]
      density: [{{filter: self_attn, value: 0.3}}, {{value: 0.8}}]
parameters: {{lambda: 1.1}}
""",
    "model_stock": """
merge_method: model_stock
base_model: {m0}
models:
  - model: {m1}
  - model: {m2}
""",
    "model_stock_filterwise": """
merge_method: model_stock
base_model: {m0}
parameters: {{filter_wise: true}}
models:
  - model: {m1}
  - model: {m2}
""",
    "passthrough_upscale": """
merge_method: passthrough
slices:
  - sources: [{{model: {m0}, layer_range: [0, 2]}}]
  - sources: [{{model: {m1}, layer_range: [1, 2]}}]
  - sources: [{{model: {m2}, layer_range: [0, 1]}}]
""",
}
# every family mergekit 0.1.5 has an architecture for, among those pocketlm loads (gpt_neox fails in
# mergekit itself: it requires the attention.masked_bias buffers transformers 5 no longer saves)
FAMILIES = ["qwen2", "gpt2", "phi3", "gemma2", "stablelm", "olmo2", "phi", "bloom", "opt", "mixtral", "olmoe"]


def run_mergekit(text: str, out) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    logging.getLogger("mergekit").setLevel(logging.ERROR)
    run_merge(MergeConfiguration.model_validate(yaml.safe_load(text)), str(out),
              MergeOptions(quiet=True, copy_tokenizer=False, write_model_card=False))


def assert_same_model(ours, theirs) -> None:
    """Tensor-by-tensor equality; MoE layouts (mergekit writes per-expert tensors) compared after
    pocketlm reads both directories into its own layout."""
    a, b = load_file(ours / "model.safetensors"), load_file(theirs / "model.safetensors")
    if set(a) == set(b):
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
        return
    sa, sb = load_model(ours).state_dict(), load_model(theirs).state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=1e-6, rtol=0, msg=k)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("merge_parity")


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_llama_every_method_matches_mergekit(root, name):
    m = hf_models(root, "llama")
    text = RECIPES[name].format(m0=m[0], m1=m[1], m2=m[2])
    ours, theirs = root / f"pl_{name}", root / f"mk_{name}"
    merge(parse_recipe(text), ours, overwrite=True)
    run_mergekit(text, theirs)
    assert_same_model(ours, theirs)
    assert load_model(ours).config.n_layer == (3 + 1 if name == "passthrough_upscale" else 2)


@pytest.mark.parametrize("family", FAMILIES)
def test_families_ties_and_slerp_match_mergekit(root, family):
    m = hf_models(root, family)
    for name in ("ties", "slerp"):
        text = RECIPES[name].format(m0=m[0], m1=m[1], m2=m[2])
        ours, theirs = root / f"pl_{family}_{name}", root / f"mk_{family}_{name}"
        merge(parse_recipe(text), ours, overwrite=True)
        run_mergekit(text, theirs)
        assert_same_model(ours, theirs)
