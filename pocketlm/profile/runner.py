"""Run settings llama-bench style: each `Setting` measured in a fresh Python process (the worker)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from pocketlm.profile.backends import get_backend
from pocketlm.profile.setting import ProfileError, Setting
from pocketlm.runtime import resolve

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def validate(settings: list[Setting]) -> None:
    """Fail fast, with a message naming the fix, before any subprocess starts."""
    if any(s.compile for s in settings) and not any(s.backend == "torch" for s in settings):
        raise ProfileError("--compile applies to the torch backend; add --backend torch or drop --compile")
    refs = {}
    for s in settings:
        s.check_request()
        backend = get_backend(s.backend)
        if s.device.startswith("cuda") and not torch.cuda.is_available():
            raise ProfileError(f"--device {s.device}: torch sees no CUDA device here; use --device cpu")
        if s.model not in refs:
            refs[s.model] = resolve(s.model)
        s.check_fits(refs[s.model].config)
        backend.check(refs[s.model], s)


def worker_command(setting: Setting) -> tuple[list[str], dict[str, str]]:
    """The worker's argv and environment: this pocketlm first on the path, the current directory never
    (`-P`), and the setting's thread count for OpenMP / MKL."""
    env = dict(os.environ)
    inherited = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if os.path.isabs(p)]
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT), *inherited])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if setting.threads else ():
        env[var] = str(setting.threads)
    return [sys.executable, "-P", "-m", "pocketlm.profile.worker", json.dumps(setting.to_dict())], env


def run_setting(setting: Setting, timeout: float | None = None) -> dict:
    """Measure one setting in a fresh Python process; returns its result (or raises ProfileError, or the
    runtime's ModelOpenError, with the worker's one-line message)."""
    from pocketlm.profile.worker import USER_ERRORS

    if not setting.threads:
        setting = dataclasses.replace(setting, threads=torch.get_num_threads())
    argv, env = worker_command(setting)
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    what = f"profiling {setting.model} ({setting.backend}, {setting.dtype})"
    if not lines:
        raise ProfileError(f"{what} crashed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1])
    if "error" in result:
        if result.get("kind") in USER_ERRORS:
            raise USER_ERRORS[result["kind"]](result["error"])
        raise ProfileError(f"{what} failed: {result['error']}\n{proc.stderr[-3000:]}")
    return result


def run_settings(settings: list[Setting], progress: bool = True) -> list[dict]:
    """Validate every setting, then measure each in its own process, in order."""
    validate(settings)
    if not progress:
        return [run_setting(s) for s in settings]
    from rich.progress import Progress

    results = []
    with Progress(transient=True) as bar:
        task = bar.add_task("profiling", total=len(settings))
        for s in settings:
            bar.update(task, description=f"{s.model}: {s.backend} {s.dtype}" + (f" {s.threads}t" if s.threads else ""))
            results.append(run_setting(s))
            bar.advance(task)
    return results


def profile(settings: list[Setting], out_dir: str | Path, progress: bool = True) -> dict:
    """Measure `settings`, write profile.csv (one row per setting and test) and profile.json into `out_dir`.

    Returns {"results": per-setting results, "rows": the table, "csv": path, "json": path}."""
    from pocketlm.profile.report import rows, write_outputs

    results = run_settings(settings, progress=progress)
    return {"results": results, "rows": rows(results), **write_outputs(results, out_dir)}
