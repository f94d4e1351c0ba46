"""Atomic, exactly resumable training checkpoints.

Layout: <run>/checkpoints/step_XXXXXXX/{model.safetensors, optimizer.pt, state.json} and
<run>/checkpoints/latest naming the newest complete one. A checkpoint folder is written under a
temporary name and renamed into place; `latest` is replaced atomically afterwards, so a crash at any
moment leaves the previous checkpoint usable. A run directory has one writer: temporaries that a
killed writer left behind are removed before the next checkpoint is written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from pocketlm.utils import atomic_write_text


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed; the message says why and what to do."""


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict, keep: int = 2, extra_modules: dict[str, torch.nn.Module] | None = None) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(root)
    name = f"step_{step:07d}"
    tmp = root / f".tmp_{name}_{os.getpid()}"
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    for key, module in (extra_modules or {}).items():
        save_model(module, str(tmp / f"{key}.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    for f in tmp.iterdir():  # make the data durable before the rename publishes it
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    atomic_write_text(root / "latest", name)
    done = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Delete half-written checkpoint folders and `latest` pointers left by a killed writer."""
    stale = list(Path(root).glob(".tmp_step_*")) + list(Path(root).glob(".latest.*.tmp"))
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / "state.json").is_file():
        raise CheckpointError(f"{pointer} names {path.name}, which is incomplete; delete {pointer} "
                              "to resume from scratch")
    return path


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    extra_modules: dict[str, torch.nn.Module] | None = None) -> dict:
    """Restore model, optimizer and RNG from `path`; return its state.json."""
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=True)
    for key, module in (extra_modules or {}).items():
        load_model(module, str(path / f"{key}.safetensors"))
    blob = torch.load(path / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    torch.set_rng_state(blob["torch_rng"])
    return json.loads((path / "state.json").read_text())
