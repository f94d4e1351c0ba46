"""A llama-bench-style grid: every (backend, dtype, threads) setting measured in a fresh subprocess."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pocketlm.profile.source import DTYPES, ProfileError, resolve

BACKENDS = ("torch", "llamacpp")
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Grid:
    """What to measure. Each (backend, dtype, threads) combination is one subprocess."""

    model: str
    prompts: list[int] = field(default_factory=lambda: [16, 64, 256])
    gen: int = 64
    depths: list[int] = field(default_factory=lambda: [0, 256])
    threads: list[int] = field(default_factory=lambda: [torch.get_num_threads()])
    dtypes: list[str] = field(default_factory=lambda: ["fp32"])
    backends: list[str] = field(default_factory=lambda: ["torch"])
    repeat: int = 5
    warmup: int = 1
    device: str = "cpu"
    group_size: int = 32
    breakdown: bool = False
    seed: int = 0
    skip_unsupported: bool = False  # int8/int4: keep layers the kernels cannot take in float
    pack: bool = True  # fp32/bf16 on CPU: oneDNN-packed weights (pocketlm.model.packing)
    compile: bool = False  # torch backend: time a torch.compile'd model (compile time reported apart)

    def settings(self) -> list[dict]:
        base = {k: v for k, v in asdict(self).items() if k not in ("threads", "dtypes", "backends")}
        return [dict(base, backend=b, dtype=d, threads=t)
                for b, d, t in itertools.product(self.backends, self.dtypes, self.threads)]


def validate(grid: Grid) -> None:
    """Fail fast, with a message naming the fix, before any subprocess starts."""
    from pocketlm.profile.worker import check_setting

    if not grid.prompts or any(p < 1 for p in grid.prompts):
        raise ProfileError("--prompt needs positive token counts, e.g. --prompt 16,64,256")
    if grid.gen < 1 or any(d < 0 for d in grid.depths) or not grid.depths:
        raise ProfileError("--gen must be >= 1 and --depth a list of context depths >= 0, e.g. --depth 0,256")
    if grid.repeat < 1 or grid.warmup < 0 or any(t < 1 for t in grid.threads):
        raise ProfileError("--repeat and --threads must be >= 1, --warmup >= 0")
    for b in grid.backends:
        if b not in BACKENDS:
            raise ProfileError(f"unknown backend {b!r}; choose from {BACKENDS}")
    if grid.compile and "torch" not in grid.backends:
        raise ProfileError("--compile applies to the torch backend; add --backend torch or drop --compile")
    if grid.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ProfileError(f"--device {grid.device}: torch sees no CUDA device here; use --device cpu")
        if "llamacpp" in grid.backends:
            raise ProfileError("the llamacpp backend is measured on CPU here; drop it for --device cuda")
    spec = resolve(grid.model)
    check_setting(spec.config, {"prompts": grid.prompts, "gen": grid.gen, "depths": grid.depths})
    for d in grid.dtypes:
        if "torch" in grid.backends:
            if d not in DTYPES:
                raise ProfileError(f"unknown dtype {d!r} for the torch backend; choose from {DTYPES}")
            if d in ("int8", "int4") and not grid.skip_unsupported:
                check_quantizable(spec.config, d, grid.group_size)
        if "llamacpp" in grid.backends:
            from pocketlm.export.gguf import unsupported_reasons
            from pocketlm.profile.llamacpp import gguf_type, require_llama_cpp

            require_llama_cpp()
            gguf_type(d)
            reasons = unsupported_reasons(spec.config)
            if reasons:
                raise ProfileError(f"{spec.name} cannot run in llama.cpp as a llama-family GGUF: "
                                   + "; ".join(reasons) + ". Use --backend torch.")


def check_quantizable(cfg, scheme: str, group_size: int) -> None:
    """Check every linear layer's shape on a weightless (meta) copy of the model."""
    from pocketlm.compress.quantize import QuantizationError, check_int4, check_int8
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


def run_setting(setting: dict, timeout: float | None = None) -> dict:
    """Measure one setting in a fresh Python process; returns its result (or raises ProfileError)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(setting["threads"])
    proc = subprocess.run([sys.executable, "-m", "pocketlm.profile.worker", json.dumps(setting)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if not lines:
        raise ProfileError(f"profiling {setting['model']} ({setting['backend']}, {setting['dtype']}) crashed "
                           f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1])
    if "error" in result:
        detail = "" if result.get("kind") == "ProfileError" else "\n" + proc.stderr[-3000:]
        raise ProfileError(result["error"] + detail)
    return result


def run_grid(grid: Grid, progress: bool = True) -> list[dict]:
    validate(grid)
    settings = grid.settings()
    results = []
    if not progress:
        return [run_setting(s) for s in settings]
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(f"profiling {grid.model}", total=len(settings))
        for s in settings:
            bar.update(task, description=f"{grid.model}: {s['backend']} {s['dtype']} {s['threads']}t")
            results.append(run_setting(s))
            bar.advance(task)
    return results
