"""`pocketlm train` and `pocketlm distill`: thin layers over pocketlm.train."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

TRAIN_FIELDS = ("steps", "lr", "batch_size", "micro_batch", "seq_len", "warmup_steps", "schedule",
                "decay_fraction", "hq_weight", "weight_decay", "grad_clip", "mup_base_width", "seed",
                "eval_every", "ckpt_every", "threads")


def _data_dir(data: Optional[Path]) -> Path:
    from pocketlm.train.fixtures import bundled_data_dir

    return data if data is not None else bundled_data_dir(progress=True)


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
    ) -> None:
        """Pretrain a model (any ModelConfig) on token shards; under torchrun it runs DDP (gloo)."""
        import os

        from pocketlm.data.shards import read_manifest
        from pocketlm.model.config import ModelConfig
        from pocketlm.train.config import TrainConfig
        from pocketlm.train.config import preset as get_preset
        from pocketlm.train.fixtures import export_model_dir
        from pocketlm.train.trainer import train

        data_dir = _data_dir(data)
        vocab = read_manifest(data_dir)["tokenizer"]["vocab_size"]
        model_cfg, overrides = get_preset(preset, vocab)
        if model_config is not None:
            model_cfg = ModelConfig.load(model_config)
        given = dict(steps=steps, lr=lr, batch_size=batch_size, micro_batch=micro_batch, seq_len=seq_len,
                     warmup_steps=warmup_steps, schedule=schedule, decay_fraction=decay_fraction,
                     hq_weight=hq_weight, weight_decay=weight_decay, grad_clip=grad_clip,
                     mup_base_width=mup_base_width, seed=seed, eval_every=eval_every, ckpt_every=ckpt_every,
                     threads=threads)
        overrides.update({k: v for k, v in given.items() if v is not None})
        tcfg = TrainConfig(data_dir=str(data_dir), out_dir=str(out), mup=mup, autocast_bf16=bf16,
                           compile=compile, progress=progress, **overrides)
        result = train(tcfg, model_cfg, resume=resume)
        if int(os.environ.get("RANK", "0")) == 0:
            export_model_dir(result.model, data_dir, out / "model")
            typer.echo(json.dumps({"val_loss": result.final_val_loss, "tokens": result.tokens,
                                   "tokens_per_s": round(result.tokens_per_s), "mfu": round(result.mfu, 4),
                                   "model_dir": str(out / "model"), "log": str(result.log_path),
                                   "loss_curve": str(result.plot_path)}, indent=2))

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
        seq_len: int = typer.Option(128), seed: int = typer.Option(0),
        threads: Optional[int] = typer.Option(None), progress: bool = typer.Option(True),
    ) -> None:
        """Distil a teacher into a student (KL / reverse KL / JS, top-k, hidden-state loss)."""
        from pocketlm.data.shards import read_manifest
        from pocketlm.data.tokenizer import TextTokenizer
        from pocketlm.interop import load_model
        from pocketlm.train.config import PRESETS, TrainConfig
        from pocketlm.train.config import preset as get_preset
        from pocketlm.train.distill import (DistillConfig, DistillError, cache_teacher_topk,
                                            check_tokenizers_match, distill)
        from pocketlm.train.fixtures import export_model_dir
        from pocketlm.train.trainer import build_model

        data_dir = _data_dir(data)
        manifest = read_manifest(data_dir)
        data_tok = TextTokenizer.load(data_dir / "tokenizer.json") if (data_dir / "tokenizer.json").is_file() \
            else TextTokenizer.load(manifest["tokenizer"]["source"])
        t_model = load_model(teacher).float()
        t_tok = _folder_tokenizer(teacher)
        tcfg = TrainConfig(data_dir=str(data_dir), out_dir=str(out), steps=steps, lr=lr, batch_size=batch_size,
                           seq_len=seq_len, seed=seed, threads=threads, progress=progress,
                           warmup_steps=min(20, steps // 10), schedule="cosine")
        if student in PRESETS:
            s_cfg, _ = get_preset(student, manifest["tokenizer"]["vocab_size"])
            s_model, s_tok = build_model(s_cfg, tcfg), data_tok
        elif Path(student).is_dir():
            s_model, s_tok = load_model(student).float(), _folder_tokenizer(Path(student))
        else:
            raise DistillError(f"--student {student!r}: neither a model folder nor a preset ({sorted(PRESETS)})")
        check_tokenizers_match(t_tok, s_tok, t_model.config.vocab_size, s_model.config.vocab_size)
        check_tokenizers_match(t_tok, data_tok, t_model.config.vocab_size, t_model.config.vocab_size)
        dcfg = DistillConfig(divergence, temperature, alpha, top_k, hidden_weight)
        if cache_teacher is not None:
            if not cache_teacher.is_file():
                if not top_k:
                    raise DistillError("--cache-teacher stores top-k logits; give --top-k K")
                cache_teacher_topk(t_model, str(data_dir), tcfg, top_k, cache_teacher)
            dcfg.teacher_cache = str(cache_teacher)
        result = distill(t_model, s_model, tcfg, dcfg)
        export_model_dir(result.student, data_dir, out / "model")
        typer.echo(json.dumps({"kl_before": result.kl_before, "kl_after": result.kl_after,
                               "val_loss": result.val_loss, "model_dir": str(out / "model")}, indent=2))


def _folder_tokenizer(folder: Path):
    from pocketlm.data.tokenizer import TextTokenizer

    for name in ("tokenizer.json", "tokenizer.model"):
        if (folder / name).is_file():
            return TextTokenizer.load(folder / name)
    return None
