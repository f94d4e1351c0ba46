"""The pretraining loop: AdamW, accumulation, clipping, schedules, two-stage mixture, DDP, resume."""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from pocketlm.data.shards import TokenSplit, read_manifest
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import Transformer
from pocketlm.train.batches import BatchSampler, eval_windows
from pocketlm.train.checkpoint import (latest_checkpoint, load_checkpoint, remove_stale_temporaries,
                                       save_checkpoint)
from pocketlm.train.config import TrainConfig, TrainConfigError
from pocketlm.train.metrics import measured_matmul_flops, plot_loss_curve, read_log, train_flops_per_token
from pocketlm.train.mup import mup_config, mup_init_, param_groups
from pocketlm.train.schedule import decay_start_step, lr_multiplier
from pocketlm.utils import atomic_write_text


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    tokens: int
    final_val_loss: float
    tokens_per_s: float
    mfu: float
    log_path: Path
    plot_path: Path | None
    model: Transformer


def build_model(model_cfg: ModelConfig, tcfg: TrainConfig) -> Transformer:
    """A freshly initialised Transformer (seeded); µP config + init when tcfg.mup."""
    torch.manual_seed(tcfg.seed)
    if tcfg.mup:
        model = Transformer(mup_config(model_cfg, tcfg.mup_base_width))
        mup_init_(model, tcfg.mup_base_width, tcfg.init_std)
        return model
    return Transformer(model_cfg)


def make_optimizer(model: torch.nn.Module, tcfg: TrainConfig) -> torch.optim.AdamW:
    groups = param_groups(model, tcfg.lr, tcfg.weight_decay, tcfg.mup, tcfg.mup_base_width)
    return torch.optim.AdamW(groups, lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2), eps=tcfg.eps,
                             weight_decay=tcfg.weight_decay)


def lm_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of `batch` [B, T + 1]."""
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, windows: torch.Tensor, batch: int = 16) -> float:
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for i in range(0, windows.shape[0], batch):
        chunk = windows[i:i + batch]
        total += float(lm_loss(model, chunk)) * chunk.shape[0]
        n += chunk.shape[0]
    model.train(was_training)
    return total / n


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return world, rank


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("{task.fields[tps]:,.0f} tok/s"),
                    TextColumn("MFU {task.fields[mfu]:.1%}"), TimeRemainingColumn(), disable=not enabled)


def train(tcfg: TrainConfig, model_cfg: ModelConfig, resume: bool = True) -> TrainResult:
    """Pretrain a Transformer on tcfg.data_dir's shards; resumes from the newest checkpoint in
    tcfg.out_dir if there is one (and `resume`). Works unchanged under torchrun (DDP, gloo).
    tcfg.threads applies only while training; the caller's torch thread count is restored."""
    previous_threads = torch.get_num_threads()
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    try:
        return _train(tcfg, model_cfg, resume)
    finally:
        torch.set_num_threads(previous_threads)


def _train(tcfg: TrainConfig, model_cfg: ModelConfig, resume: bool) -> TrainResult:
    world, rank = _distributed()
    tcfg.validate(world)
    manifest = read_manifest(tcfg.data_dir)
    vocab = manifest["tokenizer"]["vocab_size"]
    if model_cfg.vocab_size < vocab:
        raise TrainConfigError(f"ModelConfig.vocab_size ({model_cfg.vocab_size}) is smaller than the data's "
                               f"tokenizer ({vocab}); set vocab_size >= {vocab}")
    if tcfg.seq_len > model_cfg.max_seq_len:
        raise TrainConfigError(f"seq_len {tcfg.seq_len} exceeds ModelConfig.max_seq_len {model_cfg.max_seq_len}")
    run_dir = Path(tcfg.out_dir)
    log_path, plot_path = run_dir / "train_log.jsonl", run_dir / "loss_curve.png"

    main_split = TokenSplit.open(tcfg.data_dir, "train")
    hq_split = TokenSplit.open(tcfg.data_dir, "hq") if "hq" in manifest["splits"] and tcfg.hq_weight > 0 else None
    val_split = TokenSplit.open(tcfg.data_dir, "val") if "val" in manifest["splits"] else None
    sampler = BatchSampler(main_split, tcfg.seq_len, tcfg.seed, hq_split)
    val_windows = eval_windows(val_split, tcfg.seq_len, tcfg.eval_windows) if val_split is not None else None

    model = build_model(model_cfg, tcfg)
    optimizer = make_optimizer(model, tcfg)
    start_step, tokens_seen = 0, 0
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, optimizer)
        if state["train_config"]["seed"] != tcfg.seed or state["model_config"] != model.config.to_dict():
            raise TrainConfigError(f"{ckpt}: written by a different model or seed; use a new --out folder "
                                   "or --no-resume")
        start_step, tokens_seen = state["next_step"], state["tokens_seen"]
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir / "checkpoints")
        kept = [r for r in read_log(log_path) if r["step"] < start_step]
        atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in kept))
        atomic_write_text(run_dir / "train_config.json", json.dumps(tcfg.to_dict(), indent=2))
        model.config.save(run_dir / "model_config.json")
    if world > 1:
        dist.barrier()

    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    if tcfg.compile:
        net = torch.compile(net)
    per_rank = tcfg.batch_size // world
    micro = tcfg.micro_batch or per_rank
    n_micro = per_rank // micro
    decay_start = decay_start_step(tcfg.steps, tcfg.warmup_steps, tcfg.schedule, tcfg.decay_fraction)
    flops_per_token = train_flops_per_token(model, tcfg.seq_len)
    peak = measured_matmul_flops(torch.bfloat16 if tcfg.autocast_bf16 else torch.float32) * world
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if tcfg.autocast_bf16 else nullcontext
    tokens_per_step = tcfg.batch_size * tcfg.seq_len
    val_loss = float("nan")
    tps = mfu = 0.0
    train_time = 0.0
    log = open(log_path, "a") if rank == 0 else None
    model.train()
    with _progress(tcfg.progress and rank == 0) as bar:
        task = bar.add_task("train", total=tcfg.steps, completed=start_step, loss=float("nan"), tps=0.0, mfu=0.0)
        for step in range(start_step, tcfg.steps):
            t0 = time.perf_counter()
            mult = lr_multiplier(step, tcfg.steps, tcfg.warmup_steps, tcfg.schedule, tcfg.min_lr_ratio,
                                 tcfg.decay_fraction)
            for g in optimizer.param_groups:
                g["lr"] = tcfg.lr * g["lr_scale"] * mult
            hq_w = tcfg.hq_weight if (hq_split is not None and step >= decay_start
                                      and tcfg.schedule == "wsd") else 0.0
            batch, hq_rows = sampler.global_batch(step, tcfg.batch_size, hq_w)
            local = batch[rank * per_rank:(rank + 1) * per_rank]
            loss_sum = torch.zeros(())
            for i in range(n_micro):
                sync = nullcontext() if (world == 1 or i == n_micro - 1) else net.no_sync()
                with sync:
                    with autocast():
                        loss = lm_loss(net, local[i * micro:(i + 1) * micro]) / n_micro
                    loss.backward()
                loss_sum += loss.detach()
            if world > 1:
                dist.all_reduce(loss_sum)
                loss_sum /= world
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens_seen += tokens_per_step
            dt = time.perf_counter() - t0
            train_time += dt
            tps = tokens_per_step / dt
            mfu = tps * flops_per_token / peak
            loss_value = float(loss_sum)
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"step {step}: loss is {loss_value}; lower --lr or enable clipping")
            if log is not None and (step % tcfg.log_every == 0 or step == tcfg.steps - 1):
                log.write(json.dumps({"kind": "train", "step": step, "loss": loss_value, "lr": tcfg.lr * mult,
                                      "grad_norm": float(grad_norm), "hq_rows": hq_rows,
                                      "tokens": tokens_seen, "tokens_per_s": round(tps, 1),
                                      "mfu": round(mfu, 5)}) + "\n")
                log.flush()
            last = step == tcfg.steps - 1
            if val_windows is not None and ((step + 1) % tcfg.eval_every == 0 or last):
                val_loss = evaluate_loss(model, val_windows)
                if log is not None:
                    log.write(json.dumps({"kind": "eval", "step": step, "val_loss": val_loss}) + "\n")
                    log.flush()
            if (step + 1) % tcfg.ckpt_every == 0 or last:
                if rank == 0:
                    save_checkpoint(run_dir, step + 1, model, optimizer,
                                    {"next_step": step + 1, "tokens_seen": tokens_seen,
                                     "train_config": tcfg.to_dict(), "model_config": model.config.to_dict()})
                if world > 1:
                    dist.barrier()
            bar.update(task, advance=1, loss=loss_value, tps=tps, mfu=mfu)
    if val_windows is not None and math.isnan(val_loss):  # resumed a finished run: nothing trained here
        val_loss = evaluate_loss(model, val_windows)
    if log is not None:
        log.close()
        plot_loss_curve(log_path, plot_path, decay_start if tcfg.schedule == "wsd" else None,
                        title=f"{model.config.name or 'model'}: {tcfg.schedule} schedule")
    steps_run = tcfg.steps - start_step
    avg_tps = steps_run * tokens_per_step / train_time if train_time else 0.0
    return TrainResult(run_dir, tcfg.steps, tokens_seen, val_loss, avg_tps,
                       avg_tps * flops_per_token / peak, log_path, plot_path if rank == 0 else None, model)


def load_trained(run_dir: str | Path) -> Transformer:
    """The model of the newest checkpoint in `run_dir`."""
    from safetensors.torch import load_model

    run_dir = Path(run_dir)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint; train first with `pocketlm train --out {run_dir}`")
    state = json.loads((ckpt / "state.json").read_text())
    model = Transformer(ModelConfig.from_dict(state["model_config"]))
    load_model(model, str(ckpt / "model.safetensors"))
    return model
