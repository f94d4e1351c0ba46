"""`pocketlm profile --compile`: a torch.compile'd model computes what the eager one does, and the
grid reports its compile time apart from the timings."""

from __future__ import annotations

import json

import pytest
import torch

from pocketlm.model.quantize import quantize_model
from pocketlm.model.config import ModelConfig
from pocketlm.model.packing import pack_for_cpu
from pocketlm.model.transformer import Transformer
from pocketlm.profile.runner import run_settings, validate
from pocketlm.profile.setting import ProfileError, Setting
from pocketlm.profile.timing import compile_model

CFG = ModelConfig(vocab_size=512, d_model=128, n_layer=2, n_head=4, n_kv_head=2, intermediate_size=256,
                  max_seq_len=128, name="tiny-llama")


def _logits(model, tokens: torch.Tensor, prompt: int) -> torch.Tensor:
    """Prefill `prompt` tokens, then feed the rest one at a time; logits of every step."""
    cache = model.new_cache(1, tokens.shape[1])
    out = [model(tokens[:, :prompt], cache=cache, last_only=True)]
    for i in range(prompt, tokens.shape[1] - 1):
        out.append(model(tokens[:, i:i + 1], cache=cache, last_only=True))
    return torch.cat(out, dim=1).float()


@pytest.mark.parametrize("weights, atol", [("fp32 packed", 1e-4), ("int4", 3e-2)])
def test_compiled_model_matches_eager(weights, atol) -> None:
    torch.manual_seed(0)
    model = Transformer(CFG).eval()
    model = pack_for_cpu(model) if weights == "fp32 packed" else quantize_model(model.to(torch.bfloat16), "int4")
    tokens = torch.randint(0, CFG.vocab_size, (1, 24))
    with torch.inference_mode():
        compiled, seconds = compile_model(model, n_prompt=12, longest=24, device="cpu")
        eager, fused = _logits(model, tokens, 12), _logits(compiled, tokens, 12)
    assert seconds > 0
    assert eager.shape == fused.shape == (1, 12, CFG.vocab_size)
    torch.testing.assert_close(fused, eager, atol=atol, rtol=0)


def test_grid_reports_compile_time_apart(tmp_path) -> None:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(CFG.to_dict()))
    (result,) = run_settings([Setting(str(path), threads=1, prompts=(8,), gen=4, depths=(0, 8), repeat=2,
                                      compile=True)], progress=False)
    assert result["compile_s"] > 0
    assert [d["depth"] for d in result["decode"]] == [0, 8]
    # a (re)compile costs about a third of compile_s (three graphs); a step that hid one would show it
    slowest = max(t["max_ms"] for t in result["prefill"] + result["decode"]) * 1e-3
    assert slowest < result["compile_s"] / 10, (slowest, result["compile_s"])
    with pytest.raises(ProfileError, match="--compile applies to the torch backend"):
        validate([Setting(str(path), backend="llamacpp", prompts=(8,), gen=4, depths=(0,), compile=True)])
