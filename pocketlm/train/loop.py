"""The one training loop. Pretraining, distillation and recovery fine-tuning after pruning differ only
in the objective (the loss) and the batch source:

    result = train_loop(model, LanguageModeling(), batches, tcfg, out_dir="runs/x")
    result = finetune(pruned, windows, steps=200, lr=1e-4, objective=Distillation(teacher, pruned))

The loop owns what every run needs: AdamW built in one place (`make_optimizer`), per-group learning
rates under a schedule (`schedule.py`), gradient accumulation over micro-batches, clipping, DDP or FSDP2
(`sharding.py`, gloo) when started by torchrun, optional bf16 autocast and torch.compile, atomic
checkpoints and exact resume (`checkpoint.py`; sharded with DCP under FSDP), a JSONL log, a progress
bar with loss, tokens/s and MFU, and a torch thread count that applies only while it runs.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from pocketlm.train import sharding
from pocketlm.train.checkpoint import (CheckpointError, is_sharded, latest_checkpoint, load_checkpoint,
                                       load_sharded_checkpoint, remove_stale_temporaries, save_checkpoint,
                                       save_sharded_checkpoint)
from pocketlm.train.config import TrainConfig, TrainConfigError
from pocketlm.train.metrics import measured_matmul_flops, read_log, train_flops_per_token
from pocketlm.train.mup import param_groups
from pocketlm.train.schedule import lr_multiplier
from pocketlm.utils import atomic_write_text

Batch = Union[torch.Tensor, dict[str, torch.Tensor]]
"""Token windows [B, T + 1], or named tensors whose first axis is the batch ("tokens" plus, e.g., cached
teacher logits); the loop splits either across DDP ranks and micro-batches."""
BatchFn = Callable[[int], tuple[Batch, dict[str, Any]]]
"""step -> (the global batch of that optimizer step, extra fields to log). A pure function of the step,
so a resumed run and every DDP rank read exactly the rows an uninterrupted single process reads."""
Evaluate = Callable[[nn.Module], dict[str, float]]
"""model -> named metrics (e.g. validation loss); called with the bare model, which is put back in
train mode afterwards."""
AfterUpdate = Callable[[nn.Module], None]
"""Called with the model under torch.no_grad() after every optimizer step, e.g. to re-apply a sparsity mask."""


class Objective:
    """What the loop minimises. Subclass it (a plain class, not an nn.Module) and define `loss`.

    `loss(model, batch)` returns the scalar to minimise and named scalar terms to log; `modules()` names
    trainable modules the objective owns beside the model (optimised, clipped, synchronised and
    checkpointed with it); `frozen_modules()` names modules it only runs (a teacher), which FSDP shards
    too (they stay sharded after the run: call them on every process); `describe()` is stored in every
    checkpoint, and resume refuses a checkpoint written under a different objective."""

    name = "objective"

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


def tokens_of(batch: Batch) -> torch.Tensor:
    """The token windows [B, T + 1] of a batch."""
    return batch["tokens"] if isinstance(batch, dict) else batch


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits [B, T, V] against the next tokens of windows [B, T + 1]."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def lm_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of `batch` [B, T + 1]."""
    return next_token_loss(model(batch[:, :-1]), batch)


class LanguageModeling(Objective):
    """Next-token cross-entropy: pretraining and plain fine-tuning."""

    name = "language_modeling"

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return lm_loss(model, tokens_of(batch)), {}


@torch.no_grad()
def evaluate_loss(model: nn.Module, windows: torch.Tensor, batch: int = 16) -> float:
    """Mean next-token cross-entropy over `windows` [N, T + 1], in eval mode, `batch` rows at a time."""
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for i in range(0, windows.shape[0], batch):
        chunk = windows[i:i + batch]
        total += float(lm_loss(model, chunk)) * chunk.shape[0]
        n += chunk.shape[0]
    model.train(was_training)
    return total / n


def make_optimizer(model: nn.Module, tcfg: TrainConfig,
                   extra_modules: dict[str, nn.Module] | None = None) -> torch.optim.AdamW:
    """AdamW over the model's parameter groups (µP learning rates when tcfg.mup) plus one undecayed group
    per extra module. Every group carries `lr_scale`, which the schedule multiplies."""
    groups = param_groups(model, tcfg.lr, tcfg.weight_decay, tcfg.mup, tcfg.mup_base_width)
    for name, module in (extra_modules or {}).items():
        groups.append({"params": list(module.parameters()), "lr_scale": 1.0, "lr": tcfg.lr,
                       "weight_decay": 0.0, "name": name})
    return torch.optim.AdamW(groups, lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2), eps=tcfg.eps,
                             weight_decay=tcfg.weight_decay)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with `n` torch intra-op threads (None: leave them); restore the caller's count after."""
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def distributed() -> tuple[int, int]:
    """(world size, rank) from torchrun's environment; initialises gloo on first use under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if sharding.under_torchrun() and not dist.is_initialized():
        dist.init_process_group("gloo")
    return world, rank


def barrier() -> None:
    """Wait for every process of a torchrun job (nothing in a single process)."""
    if dist.is_initialized():
        dist.barrier()


def _rows(batch: Batch, start: int, stop: int) -> Batch:
    if isinstance(batch, dict):
        return {k: v[start:stop] for k, v in batch.items()}
    return batch[start:stop]


def _progress(label: str, enabled: bool) -> Progress:
    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("{task.fields[tps]:,.0f} tok/s"),
                    TextColumn("MFU {task.fields[mfu]:.1%}"), TimeRemainingColumn(), disable=not enabled)


class _Trainable(nn.Module):
    """The model and the objective's own modules as one module whose forward is the loss, so that DDP
    synchronises all their gradients and torch.compile sees the whole forward."""

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.extra = nn.ModuleDict(objective.modules())
        self.objective = objective

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.objective.loss(self.model, batch)


@dataclass
class LoopResult:
    steps: int  # optimizer steps of the whole run (tcfg.steps)
    tokens: int  # tokens trained on, resumed sessions included
    tokens_per_s: float  # this session's average over its steps
    mfu: float
    metrics: dict[str, float]  # the last `evaluate` (run at the end if no evaluation ran in this session)
    start_metrics: dict[str, float]  # `evaluate_before` of the untrained model, kept across resumes
    log_path: Path | None
    rows: list[dict] = field(default_factory=list)  # the rows this session logged (also without out_dir)
    state_bytes: dict[str, int] = field(default_factory=dict)  # this process's share: params, optimizer


def train_loop(model: nn.Module, objective: Objective, batches: BatchFn, tcfg: TrainConfig,
               out_dir: str | Path | None = None, *, evaluate: Evaluate | None = None,
               evaluate_before: Evaluate | None = None, after_update: AfterUpdate | None = None,
               resume: bool = True, label: str = "train", log_name: str = "train_log.jsonl") -> LoopResult:
    """Train `model` (a pocketlm Transformer) in place for tcfg.steps optimizer steps of tcfg.batch_size
    sequences, minimising `objective` on `batches`.

    With `out_dir`: the log (`log_name`), train_config.json, model_config.json and checkpoints every
    tcfg.ckpt_every steps go there, and (with `resume`) the run continues from the newest checkpoint,
    reproducing an uninterrupted run bit for bit. Without it nothing is written. `evaluate` runs every
    tcfg.eval_every steps and at the last (logged as "eval" rows); `evaluate_before` runs once before
    the first step of a fresh run; `after_update` after every optimizer step. Under torchrun every
    process calls this; rank 0 writes. Under FSDP (tcfg.parallel) `evaluate` and `evaluate_before` get the
    sharded model (call it as usual: every process runs them) and `model` gets the trained weights back
    at the end."""
    with torch_threads(tcfg.threads):
        loop = _Loop(model, objective, tcfg, out_dir, log_name, evaluate, after_update)
        loop.restore(resume)
        if evaluate_before is not None and loop.start_step == 0:
            loop.start_metrics = evaluate_before(loop.trained)
        loop.prepare_run_dir()
        return loop.run(batches, label)


class _Loop:
    """One session of a run: the state the steps share (optimizer, counters, log)."""

    def __init__(self, model: nn.Module, objective: Objective, tcfg: TrainConfig, out_dir: str | Path | None,
                 log_name: str, evaluate: Evaluate | None, after_update: AfterUpdate | None) -> None:
        self.world, self.rank = distributed()
        tcfg.validate(self.world)
        self.engine = sharding.choose_parallel(tcfg.parallel, self.world, sum(p.numel() for p in model.parameters()))
        if self.engine == "fsdp" and after_update is not None:
            raise TrainConfigError("after_update (e.g. keeping a sparsity mask) edits whole weights, which FSDP "
                                   "shards; use --parallel ddp for this run")
        self.model, self.objective, self.tcfg, self.evaluate = model, objective, tcfg, evaluate
        self.after_update = after_update
        self.run_dir = Path(out_dir) if out_dir is not None else None
        self.log_path = self.run_dir / log_name if self.run_dir is not None else None
        self.extra = objective.modules()
        # the model that trains: the caller's, or under FSDP a sharded replica (weights written back at the end)
        self.trained = sharding.sharded_replica(model) if self.engine == "fsdp" else model
        self.trainable = _Trainable(self.trained, objective)
        if self.engine == "fsdp":
            sharding.shard(self.trained, tcfg, self.extra, objective.frozen_modules())
        self.optimizer = make_optimizer(self.trained, tcfg, self.extra)
        self.start_step, self.tokens_seen = 0, 0
        self.start_metrics: dict[str, float] = {}
        self.metrics: dict[str, float] = {}
        self.rows: list[dict] = []
        self.log: IO[str] | None = None

    # --- before the first step -----------------------------------------------------------------
    def restore(self, resume: bool) -> None:
        ckpt = latest_checkpoint(self.run_dir) if (resume and self.run_dir is not None) else None
        if ckpt is None:
            return
        self._check_same_run(ckpt, json.loads((ckpt / "state.json").read_text()))
        if is_sharded(ckpt):
            state = load_sharded_checkpoint(ckpt, self.trainable, self.optimizer)
        elif self.engine == "fsdp":
            raise CheckpointError(f"{ckpt}: written by an unsharded run (safetensors); resume it with "
                                  "--parallel ddp, or use a new --out folder")
        else:
            state = load_checkpoint(ckpt, self.model, self.optimizer, self.extra)
        self.start_step, self.tokens_seen = state["next_step"], state["tokens_seen"]
        self.start_metrics = state.get("start_metrics", {})

    def _check_same_run(self, ckpt: Path, state: dict) -> None:
        if state["train_config"]["seed"] != self.tcfg.seed or state["model_config"] != self.model.config.to_dict():
            raise TrainConfigError(f"{ckpt}: written by a different model or seed; use a new --out folder "
                                   "or --no-resume")
        written_under = state.get("objective", LanguageModeling().describe())
        if written_under != json.loads(json.dumps(self.objective.describe())):
            raise TrainConfigError(f"{ckpt}: written under objective {written_under}, this run uses "
                                   f"{self.objective.describe()}; use a new --out folder or --no-resume")

    def prepare_run_dir(self) -> None:
        """Rank 0: create the folder, drop a killed writer's temporaries and the log rows past the resume
        point, record the configs."""
        if self.run_dir is not None and self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.run_dir / "checkpoints")
            kept = [r for r in read_log(self.log_path) if r.get("step", -1) < self.start_step]
            atomic_write_text(self.log_path, "".join(json.dumps(r) + "\n" for r in kept))
            atomic_write_text(self.run_dir / "train_config.json", json.dumps(self.tcfg.to_dict(), indent=2))
            self.model.config.save(self.run_dir / "model_config.json")
            self.log = open(self.log_path, "a")
        barrier()

    def _network(self) -> nn.Module:
        net: nn.Module = self.trainable
        if self.engine == "ddp":
            net = nn.parallel.DistributedDataParallel(net)
        if self.tcfg.compile:
            net = torch.compile(net)
        return net

    # --- the run ---------------------------------------------------------------------------------
    def run(self, batches: BatchFn, label: str) -> LoopResult:
        tcfg = self.tcfg
        net = self._network()
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.flops_per_token = train_flops_per_token(self.trained, tcfg.seq_len)
        self.peak = measured_matmul_flops(torch.bfloat16 if tcfg.autocast_bf16 else torch.float32) * self.world
        self.trained.train()
        try:
            train_time = self._run_steps(net, batches, label)
        finally:
            if self.log is not None:
                self.log.close()
        if self.evaluate is not None and not self.metrics:  # resumed a finished run: nothing trained here
            self.metrics = self._evaluate()
        state_bytes = sharding.local_state_bytes(self.trained, self.extra, self.optimizer)
        if self.engine == "fsdp":
            sharding.restore_full(self.model, self.trained)
        tokens = (tcfg.steps - self.start_step) * tcfg.batch_size * tcfg.seq_len
        avg_tps = tokens / train_time if train_time else 0.0
        return LoopResult(tcfg.steps, self.tokens_seen, avg_tps, avg_tps * self.flops_per_token / self.peak,
                          self.metrics, self.start_metrics, self.log_path, self.rows, state_bytes)

    def _run_steps(self, net: nn.Module, batches: BatchFn, label: str) -> float:
        """The steps from start_step to the end under a progress bar; returns their seconds."""
        tcfg = self.tcfg
        tokens_per_step = tcfg.batch_size * tcfg.seq_len
        train_time = 0.0
        with _progress(label, tcfg.progress and self.rank == 0) as bar:
            task = bar.add_task(label, total=tcfg.steps, completed=self.start_step, loss=float("nan"), tps=0.0,
                                mfu=0.0)
            for step in range(self.start_step, tcfg.steps):
                t0 = time.perf_counter()
                row = self._step(net, step, batches)
                dt = time.perf_counter() - t0
                train_time += dt
                self.tokens_seen += tokens_per_step
                tps = tokens_per_step / dt
                mfu = tps * self.flops_per_token / self.peak
                self._after_step(step, row, tps, mfu)
                bar.update(task, advance=1, loss=row["loss"], tps=tps, mfu=mfu)
        return train_time

    def _step(self, net: nn.Module, step: int, batches: BatchFn) -> dict[str, Any]:
        """One optimizer step: schedule, accumulated forward/backward over this rank's rows, clip, update."""
        tcfg = self.tcfg
        mult = lr_multiplier(step, tcfg.steps, tcfg.warmup_steps, tcfg.schedule, tcfg.min_lr_ratio,
                             tcfg.decay_fraction)
        for g in self.optimizer.param_groups:
            g["lr"] = tcfg.lr * g["lr_scale"] * mult
        batch, info = batches(step)
        per_rank = tcfg.batch_size // self.world
        loss, terms = self._accumulate(net, _rows(batch, self.rank * per_rank, (self.rank + 1) * per_rank))
        grad_norm = sharding.local_value(torch.nn.utils.clip_grad_norm_(self.params, tcfg.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.after_update is not None:
            with torch.no_grad():
                self.after_update(self.model)
        if not math.isfinite(loss):
            raise FloatingPointError(f"step {step}: loss is {loss}; lower --lr or enable clipping")
        return {"loss": loss, "lr": tcfg.lr * mult, "grad_norm": grad_norm, **info, **terms}

    def _accumulate(self, net: nn.Module, local: Batch) -> tuple[float, dict[str, float]]:
        """Backward over the micro-batches of `local` (gradients synchronised on the last one); the loss
        and terms averaged over micro-batches and ranks."""
        per_rank = self.tcfg.batch_size // self.world
        micro = self.tcfg.micro_batch or per_rank
        n_micro = per_rank // micro
        loss_sum = torch.zeros(())
        term_sums: dict[str, torch.Tensor] = {}
        for i in range(n_micro):
            with sharding.gradient_sync(net, self.engine, sync=i == n_micro - 1):
                with self._autocast():
                    loss, terms = net(_rows(local, i * micro, (i + 1) * micro))
                    loss = loss / n_micro
                loss.backward()
            loss_sum += loss.detach()
            for k, t in terms.items():
                term_sums[k] = term_sums.get(k, 0.0) + t.detach().float() / n_micro
        totals = torch.stack([loss_sum, *term_sums.values()])
        if self.engine != "single":
            dist.all_reduce(totals)
            totals /= self.world
        values = totals.tolist()
        return values[0], dict(zip(term_sums, values[1:]))

    def _autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.tcfg.autocast_bf16 else nullcontext()

    def _after_step(self, step: int, row: dict[str, Any], tps: float, mfu: float) -> None:
        """Log the step, evaluate and checkpoint when due."""
        tcfg = self.tcfg
        last = step == tcfg.steps - 1
        if step % tcfg.log_every == 0 or last:
            self._write({"kind": "train", "step": step, **row, "tokens": self.tokens_seen,
                         "tokens_per_s": round(tps, 1), "mfu": round(mfu, 5)})
        if self.evaluate is not None and ((step + 1) % tcfg.eval_every == 0 or last):
            self.metrics = self._evaluate()
            self._write({"kind": "eval", "step": step, **self.metrics})
        if self.run_dir is not None and ((step + 1) % tcfg.ckpt_every == 0 or last):
            self._checkpoint(step + 1)

    def _evaluate(self) -> dict[str, float]:
        metrics = self.evaluate(self.trained)
        self.trained.train()
        return metrics

    def _write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.log is not None:
            self.log.write(json.dumps(row) + "\n")
            self.log.flush()

    def _checkpoint(self, next_step: int) -> None:
        state = {"next_step": next_step, "tokens_seen": self.tokens_seen, "train_config": self.tcfg.to_dict(),
                 "model_config": self.model.config.to_dict(), "objective": self.objective.describe(),
                 "start_metrics": self.start_metrics, "parallel": self.engine, "world_size": self.world}
        if self.engine == "fsdp":
            save_sharded_checkpoint(self.run_dir, next_step, self.trainable, self.optimizer, state, self.rank)
            return
        if self.rank == 0:
            save_checkpoint(self.run_dir, next_step, self.model, self.optimizer, state, extra_modules=self.extra)
        barrier()


def finetune(model: nn.Module, batches: torch.Tensor | BatchFn, steps: int, lr: float, *,
             objective: Objective | None = None, batch_size: int = 8, out_dir: str | Path | None = None,
             evaluate: Evaluate | None = None, after_update: AfterUpdate | None = None,
             **settings: Any) -> LoopResult:
    """Fine-tune `model` in place, e.g. to recover quality after pruning: `steps` AdamW steps at peak
    learning rate `lr` (cosine schedule, 10 % warmup) of `objective` (default next-token cross-entropy;
    `Distillation(teacher, model)` from pocketlm.train.distill for prune-then-distill).

    `batches` is token windows [N, T + 1], read in order `batch_size` rows per step and wrapping around,
    or a BatchFn (its first batch sets batch_size and seq_len). `settings` override TrainConfig fields
    (micro_batch, weight_decay, grad_clip, autocast_bf16, threads, progress, ...). With `out_dir` the run
    is logged, checkpointed and resumable like training; without it nothing is written. `evaluate`
    (model -> metrics) runs before the first step and at the end: LoopResult.start_metrics, .metrics.
    `after_update(model)` runs after every step (e.g. re-zero pruned weights to keep a sparsity pattern)."""
    batch_fn = batches if callable(batches) else window_batches(batches, batch_size)
    first = tokens_of(batch_fn(0)[0])
    defaults = {"warmup_steps": steps // 10, "schedule": "cosine", "eval_every": steps, "ckpt_every": steps,
                "progress": False}
    tcfg = TrainConfig(steps=steps, lr=lr, batch_size=first.shape[0], seq_len=first.shape[1] - 1,
                       out_dir=str(out_dir or ""), **{**defaults, **settings})
    return train_loop(model, objective or LanguageModeling(), batch_fn, tcfg, out_dir, evaluate=evaluate,
                      evaluate_before=evaluate, after_update=after_update, label="finetune")


def window_batches(windows: torch.Tensor, batch_size: int) -> BatchFn:
    """A BatchFn over fixed token windows [N, T + 1]: step s takes rows s*batch_size ... (mod N)."""
    if windows.ndim != 2 or windows.shape[1] < 2:
        raise ValueError(f"token windows must be [N, T + 1] with T >= 1, got shape {tuple(windows.shape)}")
    n = windows.shape[0]

    def batch(step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        index = (step * batch_size + torch.arange(batch_size)) % n
        return windows[index], {}

    return batch
