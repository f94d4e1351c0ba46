"""The family registry (pocketlm/interop/families/): every family is complete, consistent with
transformers and gguf-py, and lives in its own module only."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import gguf
import pytest
import torch
import transformers

import pocketlm.interop.families as registry
from pocketlm.export.gguf import export_gguf, gguf_tensors, load_gguf_weights, placements
from pocketlm.interop import UnsupportedModelError, config_from_hf, save_hf
from pocketlm.interop.families import FAMILIES, export_family, gguf_arch
from pocketlm.interop.hf_config import hf_config_from
from pocketlm.model import costs
from pocketlm.model.transformer import Transformer
from tests.hf_tiny import TINY, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def _read(name: str):
    return config_from_hf(tiny_config(name).to_dict())


def _block_names(cfg) -> set[str]:
    """pocketlm parameter names of a config, block names made layer-relative."""
    with torch.device("meta"):
        names = Transformer(cfg).state_dict()
    return {re.sub(r"^blocks\.\d+\.", "", n) for n in names}


@pytest.fixture(scope="module")
def pocketlm_names() -> set[str]:
    """Every parameter name some pocketlm model has (the tiny config of each family, one with every bias)."""
    cfgs = [_read(n) for n in TINY]
    cfgs.append(_read("llama").replace(mlp_bias=True, qkv_bias=True, attn_out_bias=True))  # every llama bias
    return set().union(*(_block_names(c) for c in cfgs))


def test_every_module_is_registered_and_every_family_has_a_parity_config():
    """A family module is one file: each module but `base` declares families, and all are registered."""
    declared = set()
    for info in pkgutil.iter_modules(registry.__path__):
        module = importlib.import_module(f"{registry.__name__}.{info.name}")
        if info.name != "base":  # remote_code declares GGUF architectures only
            assert getattr(module, "FAMILIES", None) or getattr(module, "GGUF_ARCHS", None), \
                f"{module.__name__} declares no FAMILIES"
            declared |= {f.model_type for f in getattr(module, "FAMILIES", ())}
    assert declared == FAMILIES.keys()
    assert {tiny_config(n).model_type for n in TINY} == set(FAMILIES)  # each family is in the parity suite


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_family_matches_transformers(model_type):
    """The class written into config.json is transformers' causal-LM class for this model_type."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    family = FAMILIES[model_type]
    assert family.model_type == model_type
    assert MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type] == family.architecture
    assert getattr(transformers, family.architecture).config_class.model_type == model_type


@pytest.mark.parametrize("name", sorted(TINY))
def test_config_round_trip(name):
    """read -> write -> read gives the same ModelConfig, and transformers builds that network from what is written."""
    cfg = _read(name)
    written = hf_config_from(cfg, cfg.extra["hf_model_type"])
    assert config_from_hf(written).to_dict() == cfg.to_dict()
    hf_cfg = transformers.AutoConfig.for_model(**written)
    with torch.device("meta"):
        n_hf = transformers.AutoModelForCausalLM.from_config(hf_cfg).num_parameters()
    assert n_hf == costs.param_counts(cfg)["total"]


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_weight_tables_name_real_parameters(model_type, pocketlm_names):
    family = FAMILIES[model_type]
    names = set(family.top) | set(family.block) | {n for _, parts, _ in family.packed for n in parts}
    assert names <= pocketlm_names, sorted(names - pocketlm_names)
    assert "{i}" in family.layer_prefix
    for layout in family.legacy_experts:
        assert all("{e}" in pattern for pattern in layout[:3])


@pytest.mark.parametrize("arch", registry.GGUF_ARCHS, ids=lambda a: a.arch)
def test_gguf_declarations_match_gguf_py(arch, pocketlm_names):
    """Architecture, tensor names and hyper-parameter keys are the ones gguf-py (llama.cpp's) defines."""
    import gguf

    by_name = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    assert arch.arch in by_name
    allowed = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[by_name[arch.arch]]}
    as_tuple = lambda k: (k,) if isinstance(k, str) else k  # noqa: E731
    for ours, theirs in arch.tensors.items():
        for name in as_tuple(ours):
            assert re.sub(r"^blocks\.\{i\}\.", "", name) in pocketlm_names, name
        for name in as_tuple(theirs):
            assert name.rsplit(".", 1)[0].replace("{i}", "{bid}") in allowed, name
    assert set(arch.transforms) <= set(arch.tensors)
    assert all(hasattr(gguf.GGUFWriter, f"add_{key}") for key in arch.hparams(_read("llama")))


def test_gguf_round_trip_restores_every_weight(tmp_path):
    """Every tiny config llama.cpp can run: F32 GGUF and back gives the same weights."""
    exported = set()
    for name in sorted(TINY):
        cfg = _read(name)
        if gguf_arch(cfg).unsupported(cfg):
            continue
        torch.manual_seed(0)
        model = Transformer(cfg).eval()
        path = export_gguf(model, tmp_path / f"{name}.gguf", "F32")
        placed = {n for p in placements(cfg, gguf_arch(cfg), model.state_dict()) for n in p.src}
        assert placed == set(model.state_dict()) - ({"lm_head.weight"} if cfg.tie_embeddings else set())
        assert set(gguf_tensors(model)) == {t.name for t in gguf.GGUFReader(str(path)).tensors}
        again = Transformer(cfg).eval()
        load_gguf_weights(again, path)
        for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
            assert torch.equal(a, b), (name, k)
        exported.add(name)
    # refused: OPT (no llama.cpp graph), a short window (mistral), constants llama.cpp's graph fixes
    # otherwise (gemma2's query scale, olmoe's kv heads, minicpm3's scales: see test_gguf_families)
    assert set(TINY) - {"opt", "opt_postln", "mistral", "gemma2", "olmoe", "minicpm3"} <= exported


@pytest.mark.parametrize("name", sorted(TINY))
def test_model_with_no_origin_saves_as_a_family_transformers_runs_alike(name, tmp_path):
    """A pocketlm model that never saw HF: the family export_family picks gives transformers' logits,
    or save_hf refuses (a sliding window, for instance, is never written where transformers ignores it)."""
    cfg = _read(name)
    cfg = cfg.replace(extra={})
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    try:
        save_hf(model, tmp_path)
    except UnsupportedModelError as e:
        assert "cannot express" in str(e) and export_family(cfg) in str(e)
        return
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(3, cfg.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max() < 1e-4


def test_drivers_name_no_family():
    """What a family means lives in its module: the generic drivers spell no model_type."""
    for path in ("pocketlm/interop/hf.py", "pocketlm/interop/hf_config.py", "pocketlm/export/gguf.py"):
        lines = (ROOT / path).read_text().splitlines()
        source = "\n".join(line for line in lines if "tokenizer" not in line)  # GGUF's "gpt2" tokenizer model
        named = [t for t in FAMILIES if f'"{t}"' in source or f"'{t}'" in source]
        assert not named, (path, named)
