"""Memory accounting: KV cache against the analytic count, and the parts against RSS growth."""

from __future__ import annotations

import json

import pytest
import torch

from pocketlm.model import costs
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import Transformer
from pocketlm.profile.memory import allocator_peak_bytes, tensor_bytes
from pocketlm.profile.runner import run_setting
from pocketlm.profile.setting import Setting
from pocketlm.profile.system import rss_bytes
from pocketlm.runtime import release_memory


def _cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=4096, d_model=256, n_layer=4, n_head=8, n_kv_head=2, intermediate_size=768,
                max_seq_len=4096, name="tiny-llama")
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("dtype,nbytes", [(torch.float32, 4), (torch.bfloat16, 2)])
def test_kv_cache_memory_equals_analytic_bytes(dtype, nbytes) -> None:
    cfg = _cfg()
    model = Transformer(cfg).to(dtype)
    ctx = 65536  # large enough that allocator noise (0.3-2.9 MB seen in full runs) stays inside 3%
    analytic = costs.kv_cache_bytes(cfg, ctx, dtype_bytes=nbytes)
    model.new_cache(1, 16)  # first call may load lazy code paths; keep that out of the measurement
    grown = []
    for _ in range(3):  # other threads only ever add to RSS, so the smallest growth is the cache's own
        release_memory()  # hand freed heap back to the OS so the new cache must fault in fresh pages
        before = rss_bytes()
        cache = model.new_cache(1, ctx)
        grown.append(rss_bytes() - before)  # what the OS charged for it (pages are zero-filled, so touched)
        assert cache.nbytes() == analytic
        slots = sum(layer.slot_pos.numel() * 8 for layer in cache.layers)  # cache bookkeeping
        del cache
    assert min(grown) == pytest.approx(analytic + slots, rel=0.03)


def test_weights_are_counted_once_when_tied() -> None:
    cfg = _cfg(tie_embeddings=True)
    model = Transformer(cfg)
    assert tensor_bytes(model) == costs.weight_bytes(cfg, bits=32)


def test_allocator_peak_sees_a_known_temporary() -> None:
    def work():
        a = torch.ones(1024, 1024)  # 4 MiB
        b = a * 2  # another 4 MiB while a is alive
        return float(b.sum())

    peak = allocator_peak_bytes(work)
    assert 8 * 2**20 <= peak < 9 * 2**20


def test_accounting_sums_to_rss_growth_in_a_fresh_process(tmp_path) -> None:
    cfg = _cfg(vocab_size=8192, d_model=384, n_layer=6, n_head=6, n_kv_head=2, intermediate_size=1024,
               max_seq_len=1024)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(cfg.to_dict()))
    setting = Setting(str(path), threads=1, prompts=(256,), gen=4, depths=(512,), repeat=1, warmup=0, pack=True)
    result = run_setting(setting, timeout=240)
    mem = result["memory"]
    # packed for CPU inference: the tied LM head holds its own packed copy of the embedding
    head_copy = cfg.vocab_size * cfg.d_model * 4 if result["packed"] and cfg.tie_embeddings else 0
    assert mem["weights_bytes"] == costs.weight_bytes(cfg, bits=32) + head_copy
    analytic_kv = costs.kv_cache_bytes(cfg, 516, dtype_bytes=4)
    assert mem["kv_cache_bytes"] == analytic_kv
    # measured in the fresh process as RSS growth when the cache was allocated
    assert mem["rss_kv_cache_bytes"] == pytest.approx(analytic_kv + cfg.n_layer * 516 * 8, rel=0.03)
    parts = mem["weights_bytes"] + mem["kv_cache_bytes"] + mem["activation_bytes"]
    assert mem["activation_bytes"] > 0
    assert abs(mem["rss_growth_bytes"] - parts) <= 0.10 * mem["rss_growth_bytes"]
