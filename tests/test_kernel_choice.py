"""runtime.kernel_choice: every candidate path computes what the plain path computes, the choice follows
the measured times, and the cached decisions belong to one machine (CPU, flags, threads, torch).

Timings are never asserted here: the choice is driven by an injected timer with fixed numbers."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from pocketlm.model.linears import Int4Linear, Int8Linear, PackedLinear, TransposedLinear
from pocketlm.runtime import kernel_choice as kc
from pocketlm.runtime import open_model
from tests.hf_tiny import tiny_config
from tests.threads import one_thread  # noqa: F401 (autouse)

IDS = torch.arange(3, 35).reshape(2, 16) % 128
TOL = {"fp32": 1e-5, "bf16": 3e-2, "int8": 3e-2, "int4": 3e-2}
LAYER_OF = {"linear": torch.nn.Linear, "transposed": TransposedLinear, "mkldnn": PackedLinear}



@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("qwen2")  # tied embeddings, q/k/v biases
    torch.manual_seed(0)
    T.AutoModelForCausalLM.from_config(tiny_config("qwen2")).save_pretrained(d)
    return d


def fixed_timer(fastest: str, calls: list | None = None, margin: float = 0.5):
    """A timer that makes `fastest` win by `margin` (relative), recording each timing request."""
    def timer(candidates):
        if calls is not None:
            calls.append(sorted(candidates))
        return {p: (1.0 - margin if p == fastest else 1.0) for p in candidates}
    return timer


def _close(a: torch.Tensor, b: torch.Tensor, precision: str) -> None:
    a, b = a.float(), b.float()
    err = (a - b).abs().max() / b.abs().max()
    assert err <= TOL[precision], f"{precision}: relative error {err:.2e}"


@pytest.mark.parametrize("precision,paths", [("fp32", kc.FLOAT_PATHS), ("bf16", kc.FLOAT_PATHS),
                                             ("int8", kc.INT_PATHS), ("int4", kc.INT_PATHS)])
def test_every_path_computes_the_plain_logits(tied_dir, precision, paths) -> None:
    with torch.inference_mode():
        plain = open_model(tied_dir, precision)
        ref = plain(IDS)
        for path in paths:
            model = open_model(tied_dir, precision).fuse()
            kc.apply_plan(model, dict.fromkeys(kc.kernel_shapes(model), path))
            _close(model(IDS), ref, precision)
            assert {p for _, p in model.transforms.kernels} == {path}


def test_tied_head_transposed_keeps_one_matrix(tied_dir) -> None:
    model = open_model(tied_dir, "fp32")
    with torch.inference_mode():
        ref = model(IDS)
    kc.apply_plan(model.fuse(), dict.fromkeys(kc.kernel_shapes(model), "transposed"))
    head = model.lm_head
    assert isinstance(head, TransposedLinear)
    assert model.embed.weight.data_ptr() == head.weight_t.data_ptr()  # the embedding reads the same storage
    with torch.inference_mode():
        assert torch.allclose(model(IDS), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fastest", kc.FLOAT_PATHS)
def test_automatic_choice_follows_the_timer_and_keeps_the_logits(tied_dir, tmp_path, fastest) -> None:
    cache = kc.KernelCache(tmp_path / "kernels.json")
    with torch.inference_mode():
        ref = open_model(tied_dir, "fp32")(IDS)
        model = open_model(tied_dir, "fp32")
        plan = kc.choose_kernels(model, cache, timer=fixed_timer(fastest))
        _close(model(IDS), ref, "fp32")
    assert set(plan.values()) == {fastest}
    assert isinstance(model.blocks[0].mlp.down_proj, LAYER_OF[fastest])
    assert isinstance(model.blocks[0].mlp.gate_up, LAYER_OF[fastest])  # fused first, as a decode step runs
    assert kc.kernel_summary(model) == plan


@pytest.mark.parametrize("precision,layer", [("int8", Int8Linear), ("int4", Int4Linear)])
def test_integer_layers_choose_their_compute_dtype(tied_dir, tmp_path, precision, layer) -> None:
    cache = kc.KernelCache(tmp_path / "kernels.json")
    with torch.inference_mode():
        ref = open_model(tied_dir, precision)(IDS)
        model = open_model(tied_dir, precision)
        plan = kc.choose_kernels(model, cache, timer=fixed_timer("fp32"))
        _close(model(IDS), ref, precision)
    assert set(plan.values()) == {"fp32"}
    ints = [m for m in model.modules() if isinstance(m, layer)]
    assert ints and all(m.compute_dtype == torch.float32 for m in ints)


def test_second_open_pays_nothing_and_another_machine_retimes(tied_dir, tmp_path) -> None:
    cache = kc.KernelCache(tmp_path / "kernels.json")
    here = kc.machine_key()
    calls: list = []
    first = kc.choose_kernels(open_model(tied_dir, "fp32"), cache, here, timer=fixed_timer("transposed", calls))
    n_shapes = len(calls)
    assert n_shapes == len(first) >= 4  # qkv, o, gate_up, down, head: each distinct shape timed once
    assert kc.choose_kernels(open_model(tied_dir, "fp32"), cache, here, timer=fixed_timer("mkldnn", calls)) == first
    assert len(calls) == n_shapes  # all from the cache
    for change in ({"cpu": "Some Other CPU"}, {"flags": "0" * 16}, {"threads": here["threads"] + 1},
                   {"torch": "0.0.0"}):
        before = len(calls)
        other = kc.choose_kernels(open_model(tied_dir, "fp32"), cache, {**here, **change},
                                  timer=fixed_timer("mkldnn", calls))
        assert len(calls) == before + n_shapes, change  # another machine: every shape timed again
        assert set(other.values()) == {"mkldnn"}
    assert kc.choose_kernels(open_model(tied_dir, "fp32"), cache, here, timer=fixed_timer("mkldnn", calls)) == first


def test_machine_key_names_what_timings_depend_on() -> None:
    key = kc.machine_key(threads=3)
    assert key["threads"] == 3 and key["torch"] == torch.__version__ and key["cpu"] and len(key["flags"]) == 16


@pytest.mark.parametrize("margin,expected", [(0.05, "linear"), (0.3, "mkldnn")])
def test_tied_head_copies_its_matrix_only_for_a_clear_win(margin, expected) -> None:
    shape = kc.LinearShape("fp32", 64, 128, tied=True)
    timer = lambda calls: {"linear": 1.0, "transposed": 1.2, "mkldnn": 1.0 - margin}  # noqa: E731
    assert kc.decide(shape, timer)["path"] == expected
    assert kc.decide(kc.LinearShape("fp32", 64, 128), timer)["path"] == "mkldnn"


def test_open_model_pack_none_uses_the_cached_choice(tied_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("POCKETLM_CACHE", str(tmp_path))
    monkeypatch.setattr(kc, "time_calls", fixed_timer("transposed"))
    model = open_model(tied_dir, "fp32", pack=None)
    assert (tmp_path / "kernels.json").is_file()
    assert set(kc.kernel_summary(model).values()) == {"transposed"} and model.packed
    with torch.inference_mode():
        _close(model(IDS), open_model(tied_dir, "fp32")(IDS), "fp32")


def test_a_corrupt_cache_is_timed_again(tmp_path) -> None:
    path = tmp_path / "kernels.json"
    path.write_text("{not json")
    cache = kc.KernelCache(path)
    assert cache.lookup(kc.machine_key(), "fp32:64x64") is None
    cache.store(kc.machine_key(), {"fp32:64x64": {"path": "linear", "seconds": {}}})
    assert cache.lookup(kc.machine_key(), "fp32:64x64")["path"] == "linear"


def test_an_unknown_path_names_every_path() -> None:
    with pytest.raises(ValueError, match=r"unknown kernel path 'simd'.*mkldnn.*fp32.*gemv_tiled"):
        kc.build_layer(torch.nn.Linear(4, 4), "simd")
