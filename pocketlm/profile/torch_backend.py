"""The torch backend: pocketlm's own runtime, opened by `pocketlm.runtime.open_model` at the setting's
precision (packed fp32/bf16, weight-only int8/int4), optionally torch.compile'd."""

from __future__ import annotations

import dataclasses
import gc
import time

import torch

from pocketlm.model.config import ModelConfig
from pocketlm.profile.setting import ProfileError, Setting
from pocketlm.runtime import PRECISIONS, ModelRef, open_model, release_memory

WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.gguf")


class TorchBackend:
    name = "torch"

    def check(self, ref: ModelRef, setting: Setting) -> None:
        if setting.dtype not in PRECISIONS:
            raise ProfileError(f"unknown dtype {setting.dtype!r} for the torch backend; choose from {PRECISIONS}")
        if setting.dtype in ("int8", "int4") and not setting.skip_unsupported:
            check_quantizable(ref.config, setting.dtype, setting.group_size)
        if setting.draft:
            from pocketlm.profile.speculative import check_draft
            from pocketlm.runtime import resolve

            check_draft(ref, resolve(setting.draft), setting.longest, setting.k)

    def measure(self, ref: ModelRef, setting: Setting) -> dict:
        from pocketlm.profile.breakdown import time_breakdown
        from pocketlm.profile.memory import account_memory, tensor_bytes
        from pocketlm.profile.system import peak_rss_bytes, reset_peak_rss, rss_bytes
        from pocketlm.profile.timing import compile_model, time_decode, time_prefill

        device, longest = setting.device, setting.longest
        warm_runtime(ref, setting)
        rss_base = rss_bytes()
        t0 = time.perf_counter()
        model = _open(ref, setting, setting.dtype, skip_unsupported=setting.skip_unsupported)
        result = {"load_s": time.perf_counter() - t0, "load_peak_rss_bytes": peak_rss_bytes(),
                  "float_layers": list(model.transforms.float_layers), "packed": model.transforms.packed,
                  "kernels": kernel_paths(model, setting)}
        result["memory"] = account_memory(model, rss_base, longest, max(setting.prompts), device)
        weights = tensor_bytes(model)
        on_disk = disk_bytes(ref)
        result["disk_bytes"] = on_disk if on_disk is not None else weights
        result["disk_bytes_kind"] = "files" if on_disk is not None else "tensor bytes (random weights, not saved)"
        reset_peak_rss()
        repeat, warmup = setting.repeat, setting.warmup
        timed = model
        result["decode_step"] = "compiled flat" if setting.compile else model.transforms.decode
        if model.transforms.decode == "native" and not setting.compile:
            from pocketlm.model.native_decode import native_decoder

            timed = native_decoder(model)
        if setting.compile:
            timed, result["compile_s"] = compile_model(model, max(setting.prompts), longest, device)
            warmup = max(warmup, 1)  # a size equal to a weight's may still specialize once ("duck sizing")
        result["prefill"] = [time_prefill(timed, n, repeat, warmup, device) for n in setting.prompts]
        result["decode"] = [time_decode(timed, d, setting.gen, repeat, warmup, device) for d in setting.depths]
        result["run_peak_rss_bytes"] = peak_rss_bytes()  # with --compile, includes the compiler's memory
        if setting.compile:
            result["compile_s"] = max(result["compile_s"], getattr(timed, "compile_s", 0.0))
            result["compiled_step"] = "flat" if hasattr(timed, "compile_s") else "module"
        if setting.breakdown:  # on the eager model: its hooks need module boundaries
            result["breakdown"] = time_breakdown(model, max(setting.prompts), setting.depths[0],
                                                 min(setting.gen, 16), repeat=2, device=device)
        result["weight_bytes_per_token"] = weights  # a decode step reads every weight once
        if setting.draft:
            from pocketlm.profile.speculative import time_speculative
            from pocketlm.runtime import resolve

            draft = _open(resolve(setting.draft), setting, setting.dtype, skip_unsupported=True)
            result["speculative"] = time_speculative(model, draft, setting.depths[0], setting.gen, setting.k,
                                                     repeat, warmup)
        return result


def kernel_paths(model, setting: Setting) -> dict[str, str]:
    """{shape key: path} each linear ran on: the per-device choice, or what --pack / --no-pack forced."""
    from pocketlm.runtime.kernel_choice import kernel_shapes, kernel_summary

    chosen = kernel_summary(model)
    if chosen:
        return chosen
    if model.transforms.packed:  # --pack: every float linear oneDNN-packed (no nn.Linear left to key)
        return {"all float linears": "mkldnn"}
    return {s.key: "linear" if s.kind in ("fp32", "bf16") else "bf16" for s in kernel_shapes(model).values()}


def _open(ref: ModelRef, setting: Setting, precision: str, skip_unsupported: bool):
    return open_model(ref, precision, setting.device, pack=setting.pack, group_size=setting.group_size,
                      skip_unsupported=skip_unsupported, seed=setting.seed, decode_step=setting.decode_step)


def check_quantizable(cfg: ModelConfig, scheme: str, group_size: int) -> None:
    """Check every linear layer's shape on a weightless (meta) copy of the model."""
    from pocketlm.model.quantize import QuantizationError, check_int4, check_int8
    from pocketlm.model.transformer import Transformer

    with torch.device("meta"):
        model = Transformer(cfg)
    try:
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Linear):
                check_int8(name, m) if scheme == "int8" else check_int4(name, m, group_size)
    except QuantizationError as e:
        raise ProfileError(f"{cfg.name or 'model'} cannot take {scheme}: {e} "
                           "(--skip-unsupported keeps such layers in float)") from e


def one_layer(cfg: ModelConfig) -> ModelConfig:
    """The same architecture with a single block: what warm-up runs."""
    changes = {"n_layer": cfg.block_repeat}
    for fld in ("n_head", "n_kv_head", "intermediate_size", "layer_window"):
        value = getattr(cfg, fld)
        if isinstance(value, list):
            changes[fld] = value[:1]
    if cfg.n_experts:
        changes["first_dense_layers"] = 0
    return cfg.replace(**changes)


def warm_runtime(ref: ModelRef, setting: Setting) -> None:
    """Run a one-block copy of the model once, then free it.

    The first call of each kernel maps library code and allocates runtime buffers (tens of MB of
    RSS that do not grow with the model); doing that here keeps them out of the model's accounting.
    """
    small = dataclasses.replace(ref, config=one_layer(ref.config), kind="config")
    model = _open(small, setting, setting.dtype, skip_unsupported=True)
    n = max(setting.prompts)
    with torch.inference_mode():
        cache = model.new_cache(1, n + 2)
        ids = torch.randint(0, small.config.vocab_size, (1, n), device=setting.device)
        model(ids, cache=cache, last_only=True)
        model(ids[:, :1], cache=cache, last_only=True).argmax(-1)
    del model, cache
    if ref.kind == "checkpoint":  # the loader's own one-off cost (library code, readers): load once
        from pocketlm.interop import load_model

        del_me = load_model(ref.path)
        del del_me
    gc.collect()
    release_memory()


def disk_bytes(ref: ModelRef) -> int | None:
    """Bytes of a checkpoint's weight files; None for random-weight (catalog / config) models."""
    if ref.kind != "checkpoint" or ref.path is None:
        return None
    return sum(f.stat().st_size for pattern in WEIGHT_FILES for f in ref.path.glob(pattern))
