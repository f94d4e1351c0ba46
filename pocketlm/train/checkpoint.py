"""Atomic, exactly resumable training checkpoints.

Layout: <run>/checkpoints/step_XXXXXXX/{model.safetensors, optimizer.pt, state.json} and
<run>/checkpoints/latest naming the newest complete one. Runs sharded with FSDP write the model and
optimizer with torch's distributed checkpoint (DCP) instead: every process writes its own shards
(`__R_0.distcp`, `.metadata`, then `rng.pt` and `state.json`), and any number of processes, one
included, loads them back (DCP reshards on load). A checkpoint folder is written under a
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
    return _publish(tmp, root, name, keep)


def _publish(tmp: Path, root: Path, name: str, keep: int) -> Path:
    """fsync the files of `tmp`, rename it to `root/name`, point `latest` at it, drop all but `keep`."""
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


def is_sharded(path: Path) -> bool:
    """Whether the checkpoint folder `path` was written with DCP (by an FSDP run)."""
    return (Path(path) / ".metadata").is_file()


def save_sharded_checkpoint(run_dir: Path, step: int, net: torch.nn.Module, optimizer: torch.optim.Optimizer,
                            state: dict, rank: int, keep: int = 2) -> Path | None:
    """Every process: write `net`'s and `optimizer`'s shards with DCP into one temporary folder; rank 0
    then adds the RNG state and state.json and publishes the folder (returns its path; None elsewhere).
    A process killed at any moment leaves the temporary folder unpublished and the previous checkpoint
    as `latest`."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root = Path(run_dir) / "checkpoints"
    name = f"step_{step:07d}"
    tmp = root / f".tmp_{name}_sharded"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(root)
        tmp.mkdir()
    dist.barrier()
    model_state, optim_state = get_state_dict(net, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp))
    final = None
    if rank == 0:
        torch.save({"torch_rng": torch.get_rng_state()}, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        final = _publish(tmp, root, name, keep)
    dist.barrier()
    return final


def load_sharded_checkpoint(path: Path, net: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore `net` (plain, DDP or FSDP, in any number of processes) and `optimizer` from the DCP
    checkpoint `path`; return its state.json."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(net, optimizer)
    wanted = {"model": model_state, "optimizer": optim_state}
    try:
        dcp.load(wanted, checkpoint_id=str(path))
    except Exception as e:  # DCP names the first tensor it cannot place; say what to do
        raise CheckpointError(f"{path}: does not fit this model and optimizer ({str(e).splitlines()[0][:300]}); "
                              "resume with the model it was written for, or use a new --out folder") from e
    set_state_dict(net, optimizer, model_state_dict=wanted["model"], optim_state_dict=wanted["optimizer"])
    torch.set_rng_state(torch.load(Path(path) / "rng.pt", weights_only=True)["torch_rng"])
    return json.loads((Path(path) / "state.json").read_text())


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
