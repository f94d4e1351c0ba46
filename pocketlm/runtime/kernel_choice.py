"""Per-device kernel choice: time each candidate path for the model's own linear shapes, keep the fastest.

Which matmul wins at batch 1 depends on the CPU: oneDNN's prepacked linear halves fp32 decode on
one AMD EPYC and loses 12% on an AVX-512 Xeon (issue 18). So nothing is hard-coded: for every
distinct (precision, in, out) shape a decode step runs, the candidates are timed once on random
weights of that shape, with enough copies cycled to fall out of cache (a decode step reads every
weight from memory once), and the fastest is used. Decisions are cached in
`<cache root>/kernels.json` keyed by the machine (CPU model, CPU flags, thread count, torch
version), so the second open pays nothing; another CPU, thread count or torch re-times.

Candidates
- float (fp32 / bf16): `linear` (nn.Linear, torch's default), `transposed` (W^T held contiguous,
  `TransposedLinear`), `mkldnn` (oneDNN-prepacked, `PackedLinear`). A tied LM head shares the
  embedding's storage under `linear` and `transposed`; `mkldnn` needs a second copy of the
  matrix, so there it must win by `COPY_MARGIN` to be chosen.
- int8 / int4 weight-only layers with bf16 activations: the kernel on `bf16` or `fp32` activations
  (the scales follow losslessly).
- pocketlm's own AVX-512 batch-1 kernels (`pocketlm.model.cpu_gemv`, `CpuGemvLinear`), where they
  build on this machine: `gemv` for fp32, bf16 and int4, and for int8 `gemv_vnni` (activations
  quantized per block of 32, VNNI dot products) and `gemv_fma` (fp32 FMA on widened weights). Float
  `gemv` reads the layer's own weights (a tied head keeps one matrix); `gemv_tiled` (fp32, bf16, int8)
  and int4's `gemv` hold a 16-row-interleaved copy. A tied fp32 head is not offered `gemv_tiled` (the
  embedding reads the plain matrix; a second copy would cost issue 18's fp32 peak-RSS target); a tied
  bf16 head is, as a copying path beside `mkldnn` under the same `COPY_MARGIN` rule (the native decode
  step reads a tiled head, not a oneDNN-packed one).
  The machine key carries the kernels' build key (source hash, compiler, CPU flags), so a changed
  kernel re-times every shape; without a compiler they are simply not candidates.
Compiled paths are not timed here (compiling costs minutes); `pocketlm profile --compile` compiles
whatever was chosen.

The decode step itself is a choice too (`choose_decode`): once the linears have their paths, a few
batch-1 decode steps of the eager model and of pocketlm's native step (`model/native_decode.py`,
one C call per token, where it covers the model) are timed on the model itself, interleaved, and
the faster is recorded in `model.transforms.decode` (what `generate` and `pocketlm profile` run),
cached in the same file under the same machine key by a digest of the model's shape and kernels.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import platform
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from pocketlm.model import cpu_gemv
from pocketlm.model.cpu_gemv import CpuGemvLinear
from pocketlm.model.linears import (INT_LINEARS, Int4Linear, Int8Linear, PackedLinear, TransposedLinear,
                                     replace_linears)
from pocketlm.model.relayout import owns_storage
from pocketlm.model.transformer import Transformer
from pocketlm.utils import atomic_write_text

FLOAT_PATHS = ("linear", "transposed", "mkldnn")
INT_PATHS = ("bf16", "fp32")
GEMV_PATHS = {"gemv": ("f32", "bf16", "i4"), "gemv_tiled": ("f32t", "bf16t", "i8t"), "gemv_vnni": ("i8v",),
              "gemv_fma": ("i8f",)}  # path -> its cpu_gemv kernels
SHARING_PATHS = ("linear", "transposed", "gemv")  # a tied head on these keeps one matrix
COPYING_PATHS = ("mkldnn", "gemv_tiled")  # ... and on these holds a second (gemv_tiled: bf16 only, see paths)
COLD_BYTES = 64 << 20  # cycle weight copies until this much is read per pass: out of cache, as in decode
MAX_COPIES = 16
ROUNDS = 7  # candidates interleaved round by round; each keeps its fastest round (load only adds time)
HOPELESS = 5.0  # a candidate this many times slower than the fastest on its first call is not timed further
COPY_MARGIN = 0.10  # a tied head takes a path that copies its matrix only if it is this much faster
CACHE_VERSION = 3  # 3: a tied bf16 head may take gemv_tiled (older decisions never timed it)

Timer = Callable[[dict[str, Callable[[], None]]], dict[str, float]]


@dataclasses.dataclass(frozen=True)
class LinearShape:
    """What a kernel decision depends on besides the machine."""

    kind: str  # fp32 | bf16 | int8 | int4
    in_features: int
    out_features: int
    group_size: int | None = None  # int4
    tied: bool = False  # an LM head sharing the embedding matrix

    @property
    def key(self) -> str:
        group = f"/g{self.group_size}" if self.group_size else ""
        return f"{self.kind}{group}:{self.in_features}x{self.out_features}" + (":tied" if self.tied else "")

    @property
    def paths(self) -> tuple[str, ...]:
        base = INT_PATHS if self.kind in ("int8", "int4") else FLOAT_PATHS
        native = tuple(p for p, kernels in GEMV_PATHS.items() if set(kernels) & set(cpu_gemv.kernels_for(self.kind)))
        return base + tuple(p for p in native if not (self.tied and self.kind == "fp32" and p == "gemv_tiled"))


# ---------------------------------------------------------------------------------------------
# the machine key
# ---------------------------------------------------------------------------------------------


def machine_key(threads: int | None = None) -> dict[str, str | int]:
    """What makes kernel timings comparable: CPU model, a digest of its flags, threads, torch version,
    and the build of pocketlm's own kernels (its key, or "none" where they do not build)."""
    model, flags = _cpu_identity()
    return {"cpu": model, "flags": hashlib.sha1(" ".join(sorted(flags)).encode()).hexdigest()[:16],
            "threads": threads or torch.get_num_threads(), "torch": torch.__version__,
            "gemv": cpu_gemv.build_id()}


def _cpu_identity() -> tuple[str, list[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), []
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    model = fields.get("model name") or fields.get("Model") or platform.machine()
    return model, (fields.get("flags") or fields.get("Features") or "").split()


def _machine_id(machine: dict) -> str:
    return hashlib.sha1(json.dumps(machine, sort_keys=True).encode()).hexdigest()[:16]


def default_cache_path() -> Path:
    from pocketlm.utils import cache_root

    return cache_root() / "kernels.json"


class KernelCache:
    """Decisions per machine in one JSON file: {machine id: {"machine": key, "choices": {shape: entry}}}."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_cache_path()

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return {"version": CACHE_VERSION, "machines": {}}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return {"version": CACHE_VERSION, "machines": {}}
        return data

    def lookup(self, machine: dict, shape_key: str) -> dict | None:
        entry = self._read()["machines"].get(_machine_id(machine), {})
        return entry.get("choices", {}).get(shape_key)

    def store(self, machine: dict, decisions: dict[str, dict]) -> None:
        data = self._read()
        entry = data["machines"].setdefault(_machine_id(machine), {"machine": machine, "choices": {}})
        entry["choices"].update(decisions)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True))


# ---------------------------------------------------------------------------------------------
# candidates and timing
# ---------------------------------------------------------------------------------------------


def build_layer(linear: nn.Module, path: str, tied: bool = False, reuse: bool = False) -> nn.Module:
    """`linear` (an nn.Linear or an integer layer) running on `path`; integer layers change in place
    (except on a `gemv*` path, which gives a new layer). `reuse`: `gemv_tiled` may tile the layer's own
    weight storage in place (the layer is consumed; `apply_plan` passes it for layers nothing else reads)."""
    if path in GEMV_PATHS:
        return CpuGemvLinear.from_layer(linear, _gemv_kernel(linear, path), reuse=reuse and not tied)
    if isinstance(linear, INT_LINEARS):
        linear.set_compute_dtype(torch.float32 if path == "fp32" else torch.bfloat16)
        return linear
    if path == "linear":
        return linear
    if path == "transposed":
        return TransposedLinear(linear, share=tied)
    if path == "mkldnn":
        return PackedLinear(linear)
    raise ValueError(f"unknown kernel path {path!r}; choose from {FLOAT_PATHS}, {INT_PATHS} or {tuple(GEMV_PATHS)}")


def _gemv_kernel(linear: nn.Module, path: str) -> str:
    if isinstance(linear, Int8Linear):
        return {"gemv_vnni": "i8v", "gemv_fma": "i8f", "gemv_tiled": "i8t"}[path]
    if isinstance(linear, Int4Linear):
        return "i4"
    return ("f32" if linear.weight.dtype == torch.float32 else "bf16") + ("t" if path == "gemv_tiled" else "")


def _random_layer(shape: LinearShape, generator: torch.Generator) -> nn.Module:
    n, k = shape.out_features, shape.in_features
    if shape.kind == "int8":
        q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=generator)
        return Int8Linear(q, torch.rand(n, generator=generator) / 127)
    if shape.kind == "int4":
        q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=generator)
        g = k // shape.group_size
        return Int4Linear(q, torch.rand(n, g, generator=generator) / 8, torch.zeros(n, g), shape.group_size)
    linear = nn.Linear(k, n, bias=False, dtype=_FLOAT[shape.kind])
    with torch.no_grad():
        linear.weight.copy_(torch.randn(n, k, generator=generator))
    return linear


_FLOAT = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _layer_bytes(shape: LinearShape) -> int:
    per = {"fp32": 4, "bf16": 2, "int8": 1, "int4": 0.5}[shape.kind]
    return max(1, int(shape.in_features * shape.out_features * per))


def candidate_calls(shape: LinearShape) -> dict[str, Callable[[], None]]:
    """One batch-1 pass over enough random copies of `shape` to be out of cache, per candidate path."""
    copies = max(1, min(MAX_COPIES, math.ceil(COLD_BYTES / _layer_bytes(shape))))
    generator = torch.Generator().manual_seed(0)
    act = torch.bfloat16 if shape.kind in ("int8", "int4") else _FLOAT[shape.kind]
    x = torch.randn(1, 1, shape.in_features, generator=generator).to(act)
    calls = {}
    for path in shape.paths:
        one = _random_layer(shape, generator)  # copies in their own memory: the values need not differ
        layers = [build_layer(copy.deepcopy(one), path) for _ in range(copies)]

        def run(layers=layers) -> None:
            for layer in layers:
                layer(x)

        calls[path] = run
    return calls


def time_calls(calls: dict[str, Callable[[], None]], rounds: int = ROUNDS) -> dict[str, float]:
    """Seconds of each call's fastest round; calls alternate within every round so load hits all alike.

    Each call runs twice first (first calls build kernels); one whose second run takes over
    `HOPELESS`x the fastest (a reference kernel) keeps that time and is not timed further."""
    with torch.inference_mode():
        warm = {}
        for name, call in calls.items():
            call()
            t0 = time.perf_counter()
            call()
            warm[name] = time.perf_counter() - t0
        hopeless = {name for name, t in warm.items() if t > HOPELESS * min(warm.values())}
        best = {name: warm[name] if name in hopeless else math.inf for name in calls}
        for _ in range(rounds):
            for name, call in calls.items():
                if name in hopeless:
                    continue
                t0 = time.perf_counter()
                call()
                best[name] = min(best[name], time.perf_counter() - t0)
    return best


def decide(shape: LinearShape, timer: Timer | None = None) -> dict:
    """Time `shape`'s candidates once; the cache entry {"path", "seconds"} (seconds per pass over the copies)."""
    seconds = (timer or time_calls)(candidate_calls(shape))
    if shape.tied:  # linear / transposed / gemv share the embedding's storage; mkldnn, gemv_tiled copy it
        sharing = min((p for p in SHARING_PATHS if p in seconds), key=seconds.get)
        copying = min((p for p in COPYING_PATHS if p in seconds), key=seconds.get)
        path = copying if seconds[copying] * (1 + COPY_MARGIN) < seconds[sharing] else sharing
    else:
        path = min(seconds, key=seconds.get)
    return {"path": path, "seconds": {p: round(t, 9) for p, t in seconds.items()}}


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------


def kernel_shapes(model: Transformer) -> dict[str, LinearShape]:
    """Each linear layer of `model` (fused as it will run) by name, with the shape its decision is keyed by."""
    dtype = model.embed.weight.dtype
    tied = model.config.tie_embeddings
    q = model.transforms.quantization
    shapes = {}
    for name, layer in model.named_modules():
        if isinstance(layer, Int8Linear):
            kind, group = "int8", None
        elif isinstance(layer, Int4Linear):
            kind, group = "int4", layer.group_size
        elif isinstance(layer, nn.Linear) and dtype in (torch.float32, torch.bfloat16):
            kind, group = ("fp32" if layer.weight.dtype == torch.float32 else "bf16"), None
            if layer.weight.dtype not in _FLOAT.values():
                continue
        else:
            continue
        if kind in ("int8", "int4") and (q is None or layer.compute_dtype != torch.bfloat16):
            continue  # only bf16 scales move to fp32 and back losslessly
        is_tied = tied and name == "lm_head" and isinstance(layer, nn.Linear) and layer.weight is model.embed.weight
        shapes[name] = LinearShape(kind, layer.in_features, layer.out_features, group, is_tied)
    return shapes


@torch.no_grad()
def choose_kernels(model: Transformer, cache: KernelCache | None = None, machine: dict | None = None,
                   timer: Timer | None = None, refresh: bool = False) -> dict[str, str]:
    """Put every linear of `model` on the fastest path for this machine (in place); {shape key: path}.

    Fuses q/k/v and gate/up first (one matmul each, as a decode step runs them). Shapes without a
    decision for `machine` (default: this one, `machine_key()`) are timed with `timer` and cached;
    `refresh` re-times every shape."""
    model.eval().fuse()
    shapes = kernel_shapes(model)
    plan = plan_shapes(shapes.values(), cache, machine, timer, refresh)
    apply_plan(model, {name: plan[s.key] for name, s in shapes.items()}, shapes)
    return plan


def plan_shapes(shapes, cache: KernelCache | None = None, machine: dict | None = None, timer: Timer | None = None,
                refresh: bool = False) -> dict[str, str]:
    """{shape key: path} for `shapes` (LinearShape), cached or timed now and cached; touches no model.

    `runtime.open_model` runs it on a weightless (meta) copy before the weights exist, so the
    candidates' timing copies are freed before the model is built."""
    cache = cache or KernelCache()
    machine = machine or machine_key()
    plan, new = {}, {}
    for shape in {s.key: s for s in shapes}.values():
        entry = None if refresh else cache.lookup(machine, shape.key)
        if entry is None or entry.get("path") not in shape.paths:
            entry = new[shape.key] = decide(shape, timer)
        plan[shape.key] = entry["path"]
    if new:
        cache.store(machine, new)
    return plan


def apply_plan(model: Transformer, paths: dict[str, str], shapes: dict[str, LinearShape] | None = None) -> None:
    """Put the linears named in `paths` on their path (in place) and record it in `model.transforms`.

    A layer whose weight no other module or tensor holds is consumed: `gemv_tiled` writes its tiled
    layout over the layer's own storage (no second copy during the swap, issue 18's load peak)."""
    shapes = shapes or kernel_shapes(model)
    holders = Counter(id(t) for m in model.modules() for t in (*m.parameters(False), *m.buffers(False)))

    def convert(name: str, linear: nn.Module) -> nn.Module:
        if name not in paths:
            return linear
        weight = getattr(linear, "weight", getattr(linear, "qweight", None))
        sole = weight is not None and holders[id(weight)] == 1 and owns_storage(weight)  # may be tiled in place
        return build_layer(linear, paths[name], tied=shapes[name].tied if name in shapes else False, reuse=sole)

    model.swap_linears(convert)
    replace_linears(model, convert, kinds=INT_LINEARS)  # integer layers are not nn.Linear: set them here
    kernels = tuple(sorted({(shapes[n].key, p) for n, p in paths.items() if n in shapes}))
    moved = any(p in ("transposed", "mkldnn", *GEMV_PATHS) for p in paths.values())
    model.transforms = dataclasses.replace(model.transforms, packed=model.transforms.packed or moved,
                                           kernels=kernels)


def kernel_summary(model: Transformer) -> dict[str, str]:
    """{shape key: path} as `model.transforms` records it (empty: the default layers, nothing chosen)."""
    return dict(model.transforms.kernels)


DECODE_STEPS = ("eager", "native")
DECODE_PROBE = (16, 4)  # the timed decode steps: context depth, steps per round


def decode_key(model: Transformer) -> str:
    """What a decode-step decision depends on besides the machine: the model's shape, dtype and kernels."""
    cfg = dataclasses.asdict(model.config)
    cfg.pop("name", None)
    parts = [cfg, str(model.embed.weight.dtype), list(model.transforms.kernels), repr(model.transforms.quantization)]
    return "decode/" + hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def decode_calls(model: Transformer) -> dict[str, Callable[[], None]]:
    """One timed round per decode step: `DECODE_PROBE` steps on a prefilled cache of each runner."""
    from pocketlm.model.native_decode import native_decoder

    depth, steps = DECODE_PROBE
    ids = torch.randint(0, model.config.vocab_size, (1, depth + 1), generator=torch.Generator().manual_seed(0))

    def call_for(run) -> Callable[[], None]:
        def call() -> None:
            cache = run.new_cache(1, depth + steps + 1)
            run(ids[:, :depth], cache=cache, last_only=True)
            for _ in range(steps):
                run(ids[:, depth:], cache=cache, last_only=True)
        return call

    return {"eager": call_for(model), "native": call_for(native_decoder(model))}  # the decoder generate reuses


@torch.no_grad()
def choose_decode(model: Transformer, cache: KernelCache | None = None, machine: dict | None = None,
                  timer: Timer | None = None, refresh: bool = False, force: str | None = None) -> dict:
    """Record in `model.transforms.decode` the faster batch-1 decode step on this machine; its entry
    {"step", "seconds"} (timed now or cached), or {"step": "eager", "reason"} where the native step
    does not cover the model. `force` ("eager" | "native") skips the timing (native still checked)."""
    from pocketlm.model.native_decode import NativeDecodeError, native_unsupported

    if force not in (None, *DECODE_STEPS):
        raise ValueError(f"unknown decode step {force!r}; choose from {DECODE_STEPS} (or None: timed)")
    reason = None if force == "eager" else native_unsupported(model)
    if reason and force == "native":
        raise NativeDecodeError(f"the native decode step does not cover {reason}; decode this model eagerly")
    if force or reason:
        entry = {"step": force or "eager", **({"reason": reason} if reason else {})}
    else:
        cache, machine, key = cache or KernelCache(), machine or machine_key(), decode_key(model)
        entry = None if refresh else cache.lookup(machine, key)
        if entry is None or entry.get("step") not in DECODE_STEPS:
            seconds = (timer or time_calls)(decode_calls(model))
            entry = {"step": min(seconds, key=seconds.get), "seconds": {k: round(v, 6) for k, v in seconds.items()}}
            cache.store(machine, {key: entry})
    model.transforms = dataclasses.replace(model.transforms, decode=entry["step"])
    return entry


def plain_paths(model: Transformer) -> dict[str, str]:
    """The path each linear runs on without a choice: nn.Linear, integer kernels on their stored compute dtype."""
    out = {}
    for name, shape in kernel_shapes(model).items():
        out[name] = "linear" if shape.kind in _FLOAT else "bf16"
    return out


__all__ = ["GEMV_PATHS", "KernelCache", "LinearShape", "apply_plan", "choose_decode", "choose_kernels", "decide",
           "decode_key", "kernel_shapes",
           "kernel_summary", "machine_key", "plain_paths", "plan_shapes", "time_calls"]
