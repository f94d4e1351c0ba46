"""Share of prefill / decode time spent in each kind of module (the survey's latency breakdown).

Forward pre/post hooks on the submodules named in docs/architecture.md time each call; a module's
time excludes hooked modules inside it, so the kinds never double count. Kinds:
embedding, attn_proj (q/k/v/o linears), attention (the rest of attention: RoPE, cache, softmax),
ffn, norm, lm_head, and rest (whatever the forward does outside those modules: masks, residual adds,
sampling). Hooks add a few microseconds per call, so headline latencies come from unhooked runs.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch
from torch import nn

from pocketlm.profile.timing import sync

KINDS = ("embedding", "attn_proj", "attention", "ffn", "norm", "lm_head", "rest")


def module_kind(name: str, module: nn.Module) -> str | None:
    """Breakdown kind of the module called `name` (None: not timed on its own)."""
    parts = name.split(".")
    last = parts[-1]
    if name in ("embed", "pos_embed", "project_in"):
        return "embedding"
    if name in ("lm_head", "project_out"):
        return "lm_head"
    if last.endswith("norm") and "attn" not in parts[:-1] and "mlp" not in parts[:-1]:
        return "norm"
    if len(parts) == 3 and parts[0] == "blocks" and last == "attn":
        return "attention"
    if len(parts) == 4 and parts[2] == "attn" and last.endswith("_proj"):
        return "attn_proj"
    if (len(parts) == 3 and parts[0] == "blocks" and last == "mlp") or name == "shared_mlp":
        return "ffn"
    return None


class ModuleTimer:
    """Install timing hooks on `model`; `.seconds` holds exclusive time per kind."""

    def __init__(self, model: nn.Module, device: str = "cpu"):
        self.device = device
        self.enabled = True
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []  # [kind, start, child_time]
        self._handles = []
        for name, module in model.named_modules():
            kind = module_kind(name, module)
            if kind is not None:
                self._handles.append(module.register_forward_pre_hook(self._pre(kind)))
                self._handles.append(module.register_forward_hook(self._post()))

    def _pre(self, kind: str):
        def hook(module, args):
            if not self.enabled:
                return
            sync(self.device)
            self._stack.append([kind, time.perf_counter(), 0.0])
        return hook

    def _post(self):
        def hook(module, args, output):
            if not self.enabled:
                return
            sync(self.device)
            kind, start, child = self._stack.pop()
            elapsed = time.perf_counter() - start
            self.seconds[kind] += elapsed - child
            if self._stack:
                self._stack[-1][2] += elapsed
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _shares(seconds: dict[str, float], total: float) -> dict:
    named = {k: seconds.get(k, 0.0) for k in KINDS if k != "rest"}
    named["rest"] = max(total - sum(named.values()), 0.0)
    return {"total_ms": total * 1e3, "share": {k: v / total for k, v in named.items()},
            "ms": {k: v * 1e3 for k, v in named.items()}}


@torch.inference_mode()
def time_breakdown(model: nn.Module, n_prompt: int, depth: int, n_gen: int, repeat: int = 3,
                   device: str = "cpu") -> dict:
    """{"prefill": ..., "decode": ...}: per-kind milliseconds and shares of the (hooked) total."""
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (1, n_prompt), device=device)
    model(ids, cache=model.new_cache(1, n_prompt + 1), last_only=True)  # warm
    timer = ModuleTimer(model, device)
    try:
        total = 0.0
        for _ in range(repeat):
            cache = model.new_cache(1, n_prompt + 1)
            sync(device)
            t0 = time.perf_counter()
            model(ids, cache=cache, last_only=True)
            sync(device)
            total += time.perf_counter() - t0
        prefill = _shares(dict(timer.seconds), total)
        prefill["n_prompt"] = n_prompt
        decode_total = 0.0
        for _ in range(repeat):
            cache = model.new_cache(1, depth + n_gen + 1)
            timer.enabled = False  # the context prefill is not part of decode
            if depth:
                model(torch.randint(0, vocab, (1, depth), device=device), cache=cache, last_only=True)
            timer.enabled = True
            if not decode_total:
                timer.seconds.clear()
            tok = ids[:, :1]
            for _ in range(n_gen):
                sync(device)
                t0 = time.perf_counter()
                tok = model(tok, cache=cache, last_only=True)[:, -1].argmax(-1, keepdim=True)
                sync(device)
                decode_total += time.perf_counter() - t0
        decode_seconds = dict(timer.seconds)
    finally:
        timer.remove()
    decode = _shares(decode_seconds, decode_total)
    decode.update({"depth": depth, "n_gen": n_gen})
    return {"prefill": prefill, "decode": decode}
