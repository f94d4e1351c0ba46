"""Merge methods against hand-computed values, the driver's behaviour on real HF directories
(every family pocketlm loads, MoE included), DARE's statistics, and one clear error per bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers as T
from safetensors.torch import load_file

from pocketlm.compress.merge import MergeError, merge, methods, parse_recipe
from pocketlm.compress.merge.linear import linear
from pocketlm.compress.merge.model_stock import model_stock
from pocketlm.compress.merge.slerp import slerp_pair
from pocketlm.compress.merge.sparsify import drop_random, rescale_l1, trim_magnitude
from pocketlm.compress.merge.task_arithmetic import task_vector_merge
from pocketlm.compress.merge.writer import SafetensorsStream
from pocketlm.interop import load_model
from tests.hf_tiny import TINY
from tests.merge_fixtures import hf_models
from tests.side_by_side import run_side_by_side


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("merge")


def _models(root, family="llama", k=3):
    return [str(p) for p in hf_models(root, family, k)]


def _recipe(text: str, **models) -> object:
    return parse_recipe(text.format(**models))


# ---- the per-tensor functions ------------------------------------------------------------------------

def test_linear_is_the_weighted_mean():
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    torch.testing.assert_close(linear([a, b], weight=[1.0, 3.0]), (a + 3 * b) / 4)
    torch.testing.assert_close(linear([a, b], weight=[1.0, 3.0], normalize=False), a + 3 * b)
    with pytest.raises(ValueError, match="sum to 0"):
        linear([a, b], weight=[1.0, -1.0])


def test_slerp_endpoints_sphere_and_colinear_fallback():
    a, b = torch.randn(64), torch.randn(64)
    b = b / b.norm() * a.norm()
    torch.testing.assert_close(slerp_pair(a, b, 0.0), a)
    torch.testing.assert_close(slerp_pair(a, b, 1.0), b)
    for t in (0.25, 0.5, 0.9):
        assert slerp_pair(a, b, t).norm().item() == pytest.approx(a.norm().item(), rel=1e-5)
    # the midpoint bisects the angle: equal angles to both endpoints
    mid = slerp_pair(a, b, 0.5)
    cos = lambda x, y: float(x @ y / (x.norm() * y.norm()))  # noqa: E731
    assert cos(mid, a) == pytest.approx(cos(mid, b), abs=1e-6)
    # colinear inputs: plain linear interpolation (no division by sin 0)
    torch.testing.assert_close(slerp_pair(a, 2 * a, 0.5), 1.5 * a)


def test_ties_by_hand():
    base = torch.zeros(4)
    m1 = torch.tensor([1.0, -2.0, 0.1, 3.0])
    m2 = torch.tensor([-3.0, -1.0, 0.2, 1.0])
    # density 0.5 keeps the 2 largest |δ| of each: m1 -> [0,-2,0,3], m2 -> [-3,-1,0,0]
    # elected signs (sum): [-3 -> -, -3 -> -, 0 -> +, 3 -> +]; disjoint mean over agreeing entries
    out = task_vector_merge([m1, m2], base, weight=[1.0, 1.0], density=[0.5, 0.5], sparsify="magnitude",
                            consensus="sum", normalize=True)
    torch.testing.assert_close(out, torch.tensor([-3.0, -1.5, 0.0, 3.0]))
    assert trim_magnitude(m1, 0.5).count_nonzero() == 2


def test_task_arithmetic_by_hand():
    base = torch.tensor([1.0, 1.0])
    out = task_vector_merge([torch.tensor([2.0, 0.0]), torch.tensor([1.0, 3.0])], base, weight=[1.0, 0.5], scale=2.0)
    torch.testing.assert_close(out, base + 2 * (torch.tensor([1.0, -1.0]) + 0.5 * torch.tensor([0.0, 2.0])))


def test_dare_statistics_and_rescale():
    delta = torch.randn(200_000)
    gen = torch.Generator().manual_seed(0)
    kept = drop_random(delta, 0.3, gen)
    n = delta.numel()
    frac = kept.count_nonzero().item() / n
    assert abs(frac - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n)  # binomial, 4 sigma
    rescaled = rescale_l1(kept, delta)
    assert rescaled.abs().sum().item() == pytest.approx(delta.abs().sum().item(), rel=1e-5)
    # the L1 rule is the paper's 1/p in expectation: the factor is within a few sigma of 1/0.3
    factor = (rescaled[kept != 0] / kept[kept != 0]).mean().item()
    assert factor == pytest.approx(1 / 0.3, rel=0.02)
    # unbiased: the mean of rescaled drops over many seeds approaches the original
    small = torch.randn(50)
    mean = torch.stack([drop_random(small, 0.5, torch.Generator().manual_seed(s)) / 0.5 for s in range(4000)]).mean(0)
    assert (mean - small).abs().max().item() < 5 * small.abs().max().item() / math.sqrt(4000)


def test_model_stock_limits():
    base = torch.zeros(2, 8)
    a = torch.zeros(2, 8)
    a[:, 0] = 1
    b = torch.zeros(2, 8)
    b[:, 1] = 1
    torch.testing.assert_close(model_stock([a, b], base), base)  # orthogonal task vectors: t = 0
    torch.testing.assert_close(model_stock([a, a.clone()], base), a)  # identical: t = 1


def test_writer_round_trips_through_safetensors(tmp_path):
    tensors = {"a": torch.randn(3, 4).bfloat16(), "b": torch.arange(5), "empty": torch.zeros(0, 2), "c": torch.randn(7)}
    s = SafetensorsStream(tmp_path / "x.safetensors", [(k, tuple(v.shape), v.dtype) for k, v in tensors.items()])
    for k, v in tensors.items():
        s.write(k, v)
    s.close()
    back = load_file(tmp_path / "x.safetensors")
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v)


def test_every_method_registered_with_a_reference():
    ms = methods()
    assert {"linear", "slerp", "task_arithmetic", "ties", "dare_linear", "dare_ties", "model_stock",
            "passthrough"} <= set(ms)
    assert all(m.reference_url.startswith("https://") for m in ms.values())


# ---- the driver on Hugging Face directories ----------------------------------------------------------

LINEAR_AB = ("merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: 1}}}}\n"
             "  - {{model: {b}, parameters: {{weight: 1}}}}\n")
SELF_RECIPES = {
    "linear": "merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: 0.3}}}}\n"
              "  - {{model: {a}, parameters: {{weight: 0.7}}}}\n",
    "slerp": "merge_method: slerp\nbase_model: {a}\nparameters: {{t: 0.4}}\nslices:\n  - sources:\n"
             "      - {{model: {a}, layer_range: [0, 2]}}\n      - {{model: {b}, layer_range: [0, 2]}}\n",
    "ties": "merge_method: ties\nbase_model: {a}\nmodels:\n"
            "  - {{model: {b}, parameters: {{weight: 1, density: 0.5}}}}\n",
}


@pytest.mark.parametrize("method", sorted(SELF_RECIPES))
def test_merging_a_model_with_itself_returns_it(root, method, tmp_path):
    m = _models(root)
    same = tmp_path / "copy"
    import shutil

    shutil.copytree(m[0], same)
    merge(_recipe(SELF_RECIPES[method], a=m[0], b=same), tmp_path / "out")
    a, b = load_file(f"{m[0]}/model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", sorted(TINY))
def test_every_family_merges_and_loads(root, family, tmp_path):
    """Linear merge of two models of each family: pocketlm and transformers load the result with
    equal logits, and the tensors are the weighted mean (MoE experts included)."""
    m = _models(root, family, 2)
    out = tmp_path / "m"
    merge(_recipe("merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: 1}}}}\n"
                  "  - {{model: {b}, parameters: {{weight: 3}}}}\n", a=m[0], b=m[1]), out)
    ours = load_model(out)
    ref = T.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([[1, 5, 9, 2, 7, 3]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), ref(ids).logits, atol=1e-4, rtol=1e-4)
    sa, sb, so = load_model(m[0]).state_dict(), load_model(m[1]).state_dict(), ours.state_dict()
    for k in so:
        torch.testing.assert_close(so[k], (sa[k] + 3 * sb[k]) / 4, atol=1e-6, rtol=0)


def test_dare_is_reproducible_by_seed(root, tmp_path):
    m = _models(root)
    text = ("merge_method: dare_ties\nbase_model: {a}\nmodels:\n"
            "  - {{model: {b}, parameters: {{weight: 1, density: 0.3}}}}\n"
            "  - {{model: {c}, parameters: {{weight: 1, density: 0.3}}}}\n")
    for name, seed in (("x", 1), ("y", 1), ("z", 2)):
        merge(_recipe(text, a=m[0], b=m[1], c=m[2]), tmp_path / name, seed=seed)
    x, y, z = (load_file(tmp_path / n / "model.safetensors") for n in "xyz")
    assert all(torch.equal(x[k], y[k]) for k in x)
    assert not all(torch.equal(x[k], z[k]) for k in x)
    # the kept fraction of the merged task vector: 1 - (1-p)^2 entries have at least one survivor
    base = load_file(f"{m[0]}/model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    changed = (x[name] != base[name]).float().mean().item()
    assert changed == pytest.approx(1 - 0.7 ** 2, abs=0.03)


def test_output_is_sharded_indexed_and_carded(root, tmp_path):
    m = _models(root)
    text = LINEAR_AB
    recipe = _recipe(text, a=m[0], b=m[1])
    merge(recipe, tmp_path / "out", shard_bytes=100_000)
    files = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert len(files) > 1 and (tmp_path / "out" / "model.safetensors.index.json").is_file()
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(files)
    T.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert recipe.text.strip() in card and "linear" in card
    assert (tmp_path / "out" / "mergekit_config.yml").read_text() == recipe.text


def test_depth_upscaling_renumbers_layers(root, tmp_path):
    m = _models(root, "gemma2")
    text = ("merge_method: passthrough\nslices:\n  - sources: [{{model: {a}, layer_range: [0, 2]}}]\n"
            "  - sources: [{{model: {b}, layer_range: [0, 2]}}]\n")
    merge(_recipe(text, a=m[0], b=m[1]), tmp_path / "up")
    cfg = json.loads((tmp_path / "up" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 4 and len(cfg["layer_types"]) == 4
    up, a, b = (load_file(p) for p in (tmp_path / "up" / "model.safetensors", f"{m[0]}/model.safetensors",
                                       f"{m[1]}/model.safetensors"))
    assert torch.equal(up["model.layers.3.mlp.up_proj.weight"], b["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(up["model.layers.0.mlp.up_proj.weight"], a["model.layers.0.mlp.up_proj.weight"])
    assert load_model(tmp_path / "up").config.n_layer == 4


def test_failed_merge_leaves_nothing(root, tmp_path, monkeypatch):
    m = _models(root)
    from pocketlm.compress.merge import stream

    calls = {"n": 0}
    real = stream.merge_tensor

    def boom(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk on fire")
        return real(*a, **k)

    monkeypatch.setattr(stream, "merge_tensor", boom)
    text = LINEAR_AB
    with pytest.raises(RuntimeError, match="disk on fire"):
        merge(_recipe(text, a=m[0], b=m[1]), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# ---- bad input: one clear error each -----------------------------------------------------------------

def _bad(root, tmp_path, text: str, match: str, **extra) -> None:
    m = _models(root)
    with pytest.raises(MergeError, match=match):
        merge(parse_recipe(text.format(a=m[0], b=m[1], c=m[2], **extra)), tmp_path / "out")


def test_error_unknown_method(root, tmp_path):
    _bad(root, tmp_path, "merge_method: frankenmerge\nmodels: [{{model: {a}}}]\n", "frankenmerge.*choose one of")


def test_error_missing_base(root, tmp_path):
    _bad(root, tmp_path, "merge_method: ties\nmodels:\n  - {{model: {a}, parameters: {{weight: 1}}}}\n",
         "ties needs a base_model")


def test_error_unsupported_fields_named(root, tmp_path):
    _bad(root, tmp_path, "merge_method: linear\nmodules: {{}}\n", "'modules' is not supported")
    _bad(root, tmp_path, "merge_method: linear\ntokenizer_source: union\nmodels: [{{model: {a}}}]\n", "union")
    _bad(root, tmp_path, "merge_method: linear\nmodels: [{{model: {a}}}]\nresidual_weight: 1\n",
         r"unsupported field\(s\) \['residual_weight'\]")
    _bad(root, tmp_path, "merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{wieght: 1}}}}\n",
         r"\['wieght'\] are not used by linear")


def test_error_weights_that_do_not_sum(root, tmp_path):
    _bad(root, tmp_path, "merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: 1}}}}\n"
         "  - {{model: {b}, parameters: {{weight: -1}}}}\n", "weights sum to 0")


def test_error_missing_weight(root, tmp_path):
    _bad(root, tmp_path, "merge_method: linear\nmodels:\n  - {{model: {a}}}\n  - {{model: {b}}}\n",
         "'weight' is required")


def test_error_mismatched_architectures(root, tmp_path):
    q = _models(root, "qwen2", 1)[0]
    _bad(root, tmp_path, "merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: 1}}}}\n"
         "  - {{model: {q}, parameters: {{weight: 1}}}}\n", "different architectures", q=q)


def test_error_mismatched_shapes(root, tmp_path):
    cfg = T.LlamaConfig(**{**TINY["llama"][1], "intermediate_size": 80})
    odd = tmp_path / "odd"
    T.AutoModelForCausalLM.from_config(cfg).save_pretrained(odd)
    _bad(root, tmp_path, "merge_method: passthrough\nslices:\n  - sources: [{{model: {a}, layer_range: [0, 1]}}]\n"
         "  - sources: [{{model: {odd}, layer_range: [0, 1]}}]\n", "different architectures", odd=odd)


def test_error_tokenizers_differ(root, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    m = _models(root)
    dirs = []
    for i, vocab in enumerate(({"a": 0, "b": 1, "<unk>": 2}, {"a": 0, "c": 1, "<unk>": 2})):
        d = tmp_path / f"tok{i}"
        import shutil

        shutil.copytree(m[i], d)
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        T.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(d)
        dirs.append(d)
    with pytest.raises(MergeError, match="tokenizers differ"):
        merge(parse_recipe(f"merge_method: linear\nmodels:\n  - {{model: {dirs[0]}, parameters: {{weight: 1}}}}\n"
                           f"  - {{model: {dirs[1]}, parameters: {{weight: 1}}}}\n"), tmp_path / "out")


def test_error_output_exists(root, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    _bad(root, tmp_path, "merge_method: linear\nmodels: [{{model: {a}, parameters: {{weight: 1}}}}]\n",
         "exists and is not empty")


def test_cli_merge_and_upcycle(root, tmp_path):
    import subprocess
    import sys

    m = _models(root)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(SELF_RECIPES["ties"].format(a=m[0], b=m[1]))
    cli = [sys.executable, "-m", "pocketlm.cli"]
    run = lambda *a: subprocess.run([*cli, *a], capture_output=True, text=True, timeout=300)  # noqa: E731
    out, up = run_side_by_side([[*cli, "merge", str(recipe), "--out", str(tmp_path / "merged"), "--json"],
                                [*cli, "upcycle", m[0], "--out", str(tmp_path / "moe"), "--experts", "4", "--top-k",
                                 "1"]], timeout=300)  # independent: side by side
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["method"] == "ties" and (tmp_path / "merged" / "model.safetensors").is_file()
    again = run("merge", str(recipe), "--out", str(tmp_path / "merged"))
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--overwrite" in again.stderr
    assert up.returncode == 0, up.stderr
    report = json.loads(up.stdout)
    assert report["format"] == "hf" and report["moe"]["params_active"] < report["moe"]["params_total"]
    assert json.loads((tmp_path / "moe" / "config.json").read_text())["model_type"] == "mixtral"
