"""What the runtime holds while it opens a model: no second copy of a tied head, no layer kept past its
replacement, kernel timing before the weights exist, no compiler imported for placeholders.

Nothing here reads RSS (load and allocator noise would make it flaky): storages, byte counts,
references and imported modules are exact. The RSS figures are benchmarks/bench_decode_memory.py's."""

from __future__ import annotations

import subprocess
import sys
import weakref

import torch
from torch import nn

from pocketlm.model.cpu_gemv import CpuGemvLinear
from pocketlm.model.linears import TransposedLinear, fused_linear, replace_linears
from pocketlm.model.relayout import owns_storage, transpose_releasing
from pocketlm.model.transformer import Transformer, _embedding
from pocketlm.profile.memory import tensor_bytes
from pocketlm.runtime import kernel_choice as kc
from pocketlm.runtime import open_model
from tests.test_kernel_choice import tied_dir  # noqa: F401 (fixture: a tiny tied qwen2 directory)
from tests.threads import one_thread  # noqa: F401 (autouse)

IDS = torch.arange(3, 35).reshape(2, 16) % 128
TINY = dict(name="tiny", vocab_size=512, d_model=64, n_layer=2, n_head=4, n_kv_head=2, intermediate_size=128,
            max_seq_len=64)


def test_embedding_draws_torch_s_numbers() -> None:
    torch.manual_seed(3)
    ref = nn.Embedding(50, 8).weight.detach().clone()
    after_ref = torch.rand(4)
    torch.manual_seed(3)
    ours = _embedding(50, 8).weight.detach()
    assert torch.equal(ours, ref) and torch.equal(torch.rand(4), after_ref)  # same values, same RNG state after


def test_fused_linear_is_the_parts_side_by_side() -> None:
    parts = [nn.Linear(6, n, bias=b) for n, b in ((4, True), (2, False), (3, True))]
    fused = fused_linear(parts)
    assert torch.equal(fused.weight, torch.cat([p.weight for p in parts]))
    assert torch.equal(fused.bias, torch.cat([parts[0].bias, torch.zeros(2), parts[2].bias]))
    assert fused.splits == [4, 2, 3] and fused.weight.requires_grad and fused.weight.device.type == "cpu"
    x = torch.randn(5, 6)
    assert torch.equal(fused(x), torch.nn.functional.linear(x, fused.weight, fused.bias))


def test_replace_linears_frees_each_layer_before_converting_the_next() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 4))
    gone: list[weakref.ref] = []

    def convert(name: str, linear: nn.Linear) -> nn.Module:
        assert all(ref() is None for ref in gone), "a replaced layer is still alive"
        gone.append(weakref.ref(linear))
        return TransposedLinear(linear)

    replace_linears(model, convert)
    assert len(gone) == 3 and all(isinstance(model[i], TransposedLinear) for i in (0, 2, 3))


def test_open_model_times_kernels_before_loading_and_stores_the_tied_head_once(tied_dir, tmp_path,
                                                                                monkeypatch) -> None:
    import pocketlm.interop as interop

    events: list[str] = []
    load = interop.load_model
    monkeypatch.setattr(interop, "load_model", lambda *a, **k: (events.append("load"), load(*a, **k))[1])
    monkeypatch.setattr(kc, "time_calls", lambda calls: (events.append("decode" if "native" in calls else "time"),
                                                         {p: (0.5 if p == "transposed" else 1.0) for p in calls})[1])
    monkeypatch.setenv("POCKETLM_CACHE", str(tmp_path))
    model = open_model(tied_dir, "fp32", pack=None)
    if "decode" in events:  # the decode-step choice times the loaded model itself (kernel_choice.choose_decode)
        assert events[-1] == "decode"
        events.pop()
    assert events.count("load") == 1 and "time" in events and events[-1] == "load"  # every kernel timing before the weights
    assert set(kc.kernel_summary(model).values()) == {"transposed"}
    plain = open_model(tied_dir, "fp32")
    assert model.lm_head.weight_t.untyped_storage().data_ptr() == model.embed.weight.untyped_storage().data_ptr()
    assert tensor_bytes(model) == tensor_bytes(plain)  # the tied matrix held once, as in the plain layout
    with torch.inference_mode():
        torch.testing.assert_close(model(IDS), plain(IDS), atol=1e-5, rtol=1e-5)
    events.clear()
    open_model(tied_dir, "fp32", pack=None)
    assert events == ["load"]  # the second open reads every decision from the cache


def test_placeholders_and_eager_packed_layers_import_no_compiler() -> None:
    code = """
import sys, torch
from pocketlm.model.linears import PackedLinear
from pocketlm.model.transformer import Transformer
from pocketlm.runtime import resolve
with torch.device("meta"):
    Transformer(resolve("SmolLM-135M").config).fuse()
with torch.inference_mode():
    PackedLinear(torch.nn.Linear(8, 4))(torch.randn(1, 8))
print(sorted(m for m in ("torch._dynamo", "sympy") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _allocated_shapes(build) -> list[tuple[int, ...]]:
    """The shape of every tensor a factory op (empty, zeros, ...) allocates in memory while `build()` runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    shapes = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not any(isinstance(a, torch.Tensor) for a in args) and isinstance(out, torch.Tensor) \
                    and out.device.type != "meta":
                shapes.append(tuple(out.shape))
            return out

    with Record():
        build()
    return shapes


def test_a_tied_head_is_built_without_a_matrix_of_its_own() -> None:
    from pocketlm.model.config import ModelConfig

    cfg = ModelConfig(**TINY, tie_embeddings=True)
    torch.manual_seed(0)
    assert _allocated_shapes(lambda: Transformer(cfg)).count((512, 64)) == 1  # the embedding only (main: two)
    torch.manual_seed(0)
    tied, after_tied = Transformer(cfg), torch.rand(3)
    torch.manual_seed(0)
    untied, after_untied = Transformer(cfg.replace(tie_embeddings=False)), torch.rand(3)
    assert tied.lm_head.weight is tied.embed.weight
    # the same random draws as nn.Linear then tying: the untied head's numbers land in the shared matrix
    assert torch.equal(tied.embed.weight, untied.lm_head.weight) and torch.equal(after_tied, after_untied)
    assert torch.equal(tied.blocks[1].mlp.down_proj.weight, untied.blocks[1].mlp.down_proj.weight)


def test_tiled_layers_are_rearranged_in_their_own_storage() -> None:
    from pocketlm.model.config import ModelConfig

    torch.manual_seed(0)
    model = Transformer(ModelConfig(**TINY, tie_embeddings=True)).eval().fuse()
    kept = model.blocks[0].attn.qkv.weight.detach()  # held elsewhere: that layer must be copied, not consumed
    kept_values = kept.clone()
    plain = {n: (m.weight.data_ptr(), m.weight.detach().clone()) for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and n != "lm_head"}
    kc.apply_plan(model, dict.fromkeys(kc.kernel_shapes(model), "gemv_tiled"))
    for name, (ptr, weight) in plain.items():
        layer = model.get_submodule(name)
        assert isinstance(layer, CpuGemvLinear) and layer.kernel == "f32t"
        assert torch.equal(layer.weight, weight.view(-1, 16, weight.shape[1]).transpose(1, 2).unsqueeze(-1))
        assert (layer.weight.data_ptr() == ptr) == (name != "blocks.0.attn.qkv"), name  # in place unless shared
    assert torch.equal(kept, kept_values)
    assert model.embed.weight.is_contiguous()  # a tied fp32 head is never tiled: the embedding stays plain


def test_transposing_a_matrix_hands_its_copied_rows_back() -> None:
    w = torch.randn(4096, 576)
    want = w.t().contiguous()
    assert owns_storage(w) and torch.equal(transpose_releasing(w), want)
    if sys.platform.startswith("linux"):  # released pages read as zeros: the original is gone as the copy grew
        assert (w == 0).float().mean() > 0.99
    shared = torch.randn(4096, 576)
    view = shared[:8]
    before = shared.clone()
    assert not owns_storage(shared) and torch.equal(transpose_releasing(shared), before.t())
    assert torch.equal(shared, before) and view.shape == (8, 576)  # another tensor reads it: left intact
