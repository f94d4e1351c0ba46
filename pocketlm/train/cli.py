"""`pocketlm train` and `pocketlm distill`: thin layers over pocketlm.train."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

PARALLEL_HELP = "under torchrun: ddp (replicate) or fsdp (shard per block); default: fsdp from 250M parameters"


def _parallel_settings(parallel: Optional[str], fsdp_bf16: bool, activation_checkpointing: bool) -> dict:
    """The TrainConfig fields of the --parallel options (only those given)."""
    given = {"parallel": parallel, "fsdp_bf16": fsdp_bf16 or None,
             "activation_checkpointing": activation_checkpointing or None}
    return {k: v for k, v in given.items() if v is not None}


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        preset: str = typer.Option("tiny", help="model + schedule preset: micro, tiny, small, base"),
        data: Optional[Path] = typer.Option(None, help="folder from `pocketlm data prepare` (default: bundled corpus)"),
        out: Path = typer.Option(Path("runs/train"), help="run folder: checkpoints, logs, loss curve, model/"),
        model_config: Optional[Path] = typer.Option(None, help="ModelConfig JSON instead of the preset's model"),
        steps: Optional[int] = typer.Option(None), lr: Optional[float] = typer.Option(None),
        batch_size: Optional[int] = typer.Option(None, help="global sequences per optimizer step"),
        micro_batch: Optional[int] = typer.Option(None, help="sequences per forward (gradient accumulation)"),
        seq_len: Optional[int] = typer.Option(None), warmup_steps: Optional[int] = typer.Option(None),
        schedule: Optional[str] = typer.Option(None, help="wsd, cosine or constant"),
        decay_fraction: Optional[float] = typer.Option(None, help="WSD: share of steps in the decay phase"),
        hq_weight: Optional[float] = typer.Option(None, help="share of hq rows in the decay phase (0: one stage)"),
        weight_decay: Optional[float] = typer.Option(None), grad_clip: Optional[float] = typer.Option(None),
        mup: bool = typer.Option(False, help="µP init, per-layer learning rates, output and attention scaling"),
        mup_base_width: Optional[int] = typer.Option(None), seed: Optional[int] = typer.Option(None),
        eval_every: Optional[int] = typer.Option(None), ckpt_every: Optional[int] = typer.Option(None),
        threads: Optional[int] = typer.Option(None, help="torch threads per process"),
        bf16: bool = typer.Option(False, help="bf16 autocast (faster on CPUs with AVX512-BF16/AMX)"),
        compile: bool = typer.Option(False, help="torch.compile the model"),
        resume: bool = typer.Option(True, help="continue from the newest checkpoint in --out"),
        progress: bool = typer.Option(True),
        parallel: Optional[str] = typer.Option(None, help=PARALLEL_HELP),
        fsdp_bf16: bool = typer.Option(False, help="FSDP: bf16 compute, fp32 master weights and reduction"),
        activation_checkpointing: bool = typer.Option(False, help="FSDP: recompute block activations in backward"),
    ) -> None:
        """Pretrain a model (any ModelConfig) on token shards; under torchrun it runs DDP or FSDP (gloo)."""
        from pocketlm.train.trainer import train_preset

        given = dict(steps=steps, lr=lr, batch_size=batch_size, micro_batch=micro_batch, seq_len=seq_len,
                     warmup_steps=warmup_steps, schedule=schedule, decay_fraction=decay_fraction,
                     hq_weight=hq_weight, weight_decay=weight_decay, grad_clip=grad_clip,
                     mup_base_width=mup_base_width, seed=seed, eval_every=eval_every, ckpt_every=ckpt_every,
                     threads=threads, **_parallel_settings(parallel, fsdp_bf16, activation_checkpointing))
        result = train_preset(preset, out, data, model_config, resume=resume, mup=mup, autocast_bf16=bf16,
                              compile=compile, progress=progress, **{k: v for k, v in given.items() if v is not None})
        if result.model_dir is not None:  # rank 0
            typer.echo(json.dumps(result.summary(), indent=2))

    @app.command("distill")
    def distill_cmd(
        teacher: Path = typer.Option(..., help="teacher model folder (pocketlm or Hugging Face)"),
        student: str = typer.Option(..., help="student model folder, or a preset name to start from scratch"),
        data: Optional[Path] = typer.Option(None, help="token shards (default: bundled corpus)"),
        out: Path = typer.Option(Path("runs/distill")),
        divergence: str = typer.Option("forward_kl", help="forward_kl, reverse_kl or js"),
        temperature: float = typer.Option(2.0), alpha: float = typer.Option(0.5, help="KD weight vs cross-entropy"),
        top_k: Optional[int] = typer.Option(None, help="distil only the teacher's top-k logits"),
        hidden_weight: float = typer.Option(0.0, help="weight of the projected hidden-state MSE"),
        cache_teacher: Optional[Path] = typer.Option(None, help="safetensors file of teacher top-k logits: "
                                                     "created if missing (needs --top-k), then reused"),
        steps: int = typer.Option(200), lr: float = typer.Option(2e-3), batch_size: int = typer.Option(16),
        micro_batch: Optional[int] = typer.Option(None, help="sequences per forward (gradient accumulation)"),
        seq_len: int = typer.Option(128), seed: int = typer.Option(0),
        ckpt_every: int = typer.Option(50, help="checkpoint every N steps (re-running the command resumes)"),
        resume: bool = typer.Option(True, help="continue from the newest checkpoint in --out"),
        threads: Optional[int] = typer.Option(None), progress: bool = typer.Option(True),
        parallel: Optional[str] = typer.Option(None, help=PARALLEL_HELP),
        fsdp_bf16: bool = typer.Option(False, help="FSDP: bf16 compute, fp32 master weights and reduction"),
        activation_checkpointing: bool = typer.Option(False, help="FSDP: recompute block activations in backward"),
    ) -> None:
        """Distil a teacher into a student (KL / reverse KL / JS, top-k, hidden-state loss); under torchrun
        it runs DDP or FSDP (gloo; FSDP shards the teacher too)."""
        from pocketlm.train.distill import DistillConfig, distill_models

        dcfg = DistillConfig(divergence, temperature, alpha, top_k, hidden_weight)
        result = distill_models(teacher, student, out, dcfg, data, cache_teacher, resume=resume, steps=steps, lr=lr,
                                batch_size=batch_size, micro_batch=micro_batch, seq_len=seq_len, seed=seed,
                                ckpt_every=ckpt_every, threads=threads, progress=progress,
                                **_parallel_settings(parallel, fsdp_bf16, activation_checkpointing))
        if result.model_dir is not None:  # rank 0
            typer.echo(json.dumps(result.summary(), indent=2))
