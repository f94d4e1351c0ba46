"""Measure one setting (model, backend, dtype, threads) in this process; run as a fresh subprocess by
`pocketlm.profile.runner` so memory figures start clean.

    python -m pocketlm.profile.worker '<setting json>'   # last stdout line: the result JSON
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import torch

from pocketlm.profile.source import ProfileError


def one_layer(cfg):
    """The same architecture with a single block: what warm-up runs."""
    changes = {"n_layer": cfg.block_repeat}
    for fld in ("n_head", "n_kv_head", "intermediate_size", "layer_window"):
        value = getattr(cfg, fld)
        if isinstance(value, list):
            changes[fld] = value[:1]
    if cfg.n_experts:
        changes["first_dense_layers"] = 0
    return cfg.replace(**changes)


def warm_runtime(spec, setting: dict) -> None:
    """Run a one-block copy of the model once, then free it.

    The first call of each kernel maps library code and allocates runtime buffers (tens of MB of
    RSS that do not grow with the model); doing that here keeps them out of the model's accounting.
    """
    import dataclasses
    import gc

    from pocketlm.profile.source import build_model, malloc_trim

    device = setting.get("device", "cpu")
    small = dataclasses.replace(spec, config=one_layer(spec.config), kind="config")
    model = build_model(small, setting["dtype"] if setting["backend"] == "torch" else "bf16", device,
                        group_size=setting.get("group_size", 32), skip_unsupported=True,
                        pack=setting.get("pack", True))
    n = max(setting["prompts"])
    with torch.inference_mode():
        cache = model.new_cache(1, n + 2)
        ids = torch.randint(0, small.config.vocab_size, (1, n), device=device)
        model(ids, cache=cache, last_only=True)
        model(ids[:, :1], cache=cache, last_only=True).argmax(-1)
    del model, cache
    if spec.kind == "checkpoint":  # the loader's own one-off cost (library code, readers): load once
        from pocketlm.interop import load_model

        del_me = load_model(spec.path)
        del del_me
    gc.collect()
    malloc_trim()


def check_setting(cfg, setting: dict) -> None:
    """Raise ProfileError for requests the model cannot serve (before any measuring)."""
    ctx = cfg.max_seq_len
    longest = max(setting["prompts"] + [d + setting["gen"] for d in setting["depths"]])
    if longest > ctx:
        raise ProfileError(
            f"{cfg.name or 'model'}: a context of {longest} tokens (longest prompt, or depth + gen) exceeds "
            f"the model's context length {ctx} (max_seq_len); use shorter --prompt / --depth / --gen.")


def model_info(cfg) -> dict:
    info = {"name": cfg.name, "attention": cfg.attention_kind, "n_layer": cfg.n_layer, "d_model": cfg.d_model,
            "vocab_size": cfg.vocab_size, "max_seq_len": cfg.max_seq_len}
    try:
        from pocketlm.model import costs

        counts = costs.param_counts(cfg)
        info.update({"params": counts["total"], "params_non_embedding": counts["non_embedding"],
                     "params_active": counts.get("active", counts["total"])})
    except ImportError:
        pass
    return info


def run_torch(setting: dict) -> dict:
    from pocketlm.profile.breakdown import time_breakdown
    from pocketlm.profile.memory import account_memory, tensor_bytes
    from pocketlm.profile.source import build_model, disk_bytes, resolve
    from pocketlm.profile.system import peak_rss_bytes, reset_peak_rss, rss_bytes
    from pocketlm.profile.timing import compile_model, time_decode, time_prefill

    device = setting.get("device", "cpu")
    spec = resolve(setting["model"])
    check_setting(spec.config, setting)
    warm_runtime(spec, setting)
    rss_base = rss_bytes()
    t0 = time.perf_counter()
    model = build_model(spec, setting["dtype"], device, seed=setting.get("seed", 0),
                        group_size=setting.get("group_size", 32),
                        skip_unsupported=setting.get("skip_unsupported", False), pack=setting.get("pack", True))
    load_s = time.perf_counter() - t0
    load_peak = peak_rss_bytes()
    info = model_info(spec.config)
    if "params" not in info:
        info["params"] = sum(p.numel() for p in model.parameters())
    result = {"model_info": info, "load_s": load_s, "load_peak_rss_bytes": load_peak,
              "float_layers": list(model.transforms.float_layers), "packed": model.transforms.packed}
    longest = max(setting["prompts"] + [d + setting["gen"] for d in setting["depths"]])
    result["memory"] = account_memory(model, rss_base, longest, max(setting["prompts"]), device)
    weights = tensor_bytes(model)
    on_disk = disk_bytes(spec.path) if spec.kind == "checkpoint" else None
    result["disk_bytes"] = on_disk if on_disk is not None else weights
    result["disk_bytes_kind"] = "files" if on_disk is not None else "tensor bytes (random weights, not saved)"
    reset_peak_rss()
    r, w = setting["repeat"], setting["warmup"]
    timed = model
    if setting.get("compile"):
        timed, result["compile_s"] = compile_model(model, max(setting["prompts"]), longest, device)
        w = max(w, 1)  # a size equal to a weight's may still specialize once ("duck sizing"): warm it up
    result["prefill"] = [time_prefill(timed, n, r, w, device) for n in setting["prompts"]]
    result["decode"] = [time_decode(timed, d, setting["gen"], r, w, device) for d in setting["depths"]]
    result["run_peak_rss_bytes"] = peak_rss_bytes()  # with --compile, includes the compiler's memory
    if setting.get("breakdown"):
        result["breakdown"] = time_breakdown(model, max(setting["prompts"]), setting["depths"][0],
                                             min(setting["gen"], 16), repeat=2, device=device)
    result["weight_bytes_per_token"] = weights  # a decode step reads every weight once
    return result


def run(setting: dict) -> dict:
    from pocketlm.profile.system import system_info

    threads = int(setting["threads"])
    torch.set_num_threads(threads)
    started = time.time()
    if setting["backend"] == "torch":
        result = run_torch(setting)
    elif setting["backend"] == "llamacpp":
        from pocketlm.profile.llamacpp import run_llamacpp

        result = run_llamacpp(setting)
    else:
        raise ProfileError(f"unknown backend {setting['backend']!r}; choose torch or llamacpp")
    result["setting"] = setting
    result["system"] = system_info(setting.get("device", "cpu"))
    result["system"]["threads"] = threads
    result["wall_s"] = time.time() - started
    return result


def main(argv: list[str]) -> int:
    setting = json.loads(argv[1] if len(argv) > 1 else sys.stdin.read())
    try:
        result = run(setting)
    except ProfileError as e:
        print(json.dumps({"error": str(e), "kind": "ProfileError"}))
        return 2
    except Exception as e:  # report, with the traceback on stderr, and let the parent decide
        traceback.print_exc()
        print(json.dumps({"error": f"{type(e).__name__}: {e}", "kind": type(e).__name__}))
        return 3
    sys.stdout.flush()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main(sys.argv))
