"""Pretraining: a Transformer on token shards with the shared loop (`loop.py`): two-stage mixture
sampling, validation loss, loss curve; `train_preset` is what `pocketlm train` runs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pocketlm.data.shards import TokenSplit, read_manifest
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import Transformer
from pocketlm.train.batches import BatchSampler, eval_windows, schedule_batches
from pocketlm.train.checkpoint import latest_checkpoint
from pocketlm.train.config import TrainConfig, TrainConfigError, preset
from pocketlm.train.loop import (LanguageModeling, distributed, evaluate_loss, lm_loss,  # noqa: F401 (re-exported)
                                 make_optimizer, torch_threads, train_loop)
from pocketlm.train.metrics import plot_loss_curve
from pocketlm.train.mup import mup_config, mup_init_
from pocketlm.train.schedule import decay_start_step


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
    model_dir: Path | None = None  # the exported model folder (train_preset, rank 0)

    def summary(self) -> dict[str, Any]:
        """What `pocketlm train` prints."""
        return {"val_loss": self.final_val_loss, "tokens": self.tokens, "tokens_per_s": round(self.tokens_per_s),
                "mfu": round(self.mfu, 4), "model_dir": str(self.model_dir), "log": str(self.log_path),
                "loss_curve": str(self.plot_path)}


def build_model(model_cfg: ModelConfig, tcfg: TrainConfig) -> Transformer:
    """A freshly initialised Transformer (seeded); µP config + init when tcfg.mup."""
    torch.manual_seed(tcfg.seed)
    if tcfg.mup:
        model = Transformer(mup_config(model_cfg, tcfg.mup_base_width))
        mup_init_(model, tcfg.mup_base_width, tcfg.init_std)
        return model
    return Transformer(model_cfg)


def check_model_fits_data(model_cfg: ModelConfig, tcfg: TrainConfig) -> dict:
    """tcfg.data_dir's manifest, after checking the model covers its vocabulary and tcfg.seq_len."""
    manifest = read_manifest(tcfg.data_dir)
    vocab = manifest["tokenizer"]["vocab_size"]
    if model_cfg.vocab_size < vocab:
        raise TrainConfigError(f"ModelConfig.vocab_size ({model_cfg.vocab_size}) is smaller than the data's "
                               f"tokenizer ({vocab}); set vocab_size >= {vocab}")
    if tcfg.seq_len > model_cfg.max_seq_len:
        raise TrainConfigError(f"seq_len {tcfg.seq_len} exceeds ModelConfig.max_seq_len {model_cfg.max_seq_len}")
    return manifest


def train(tcfg: TrainConfig, model_cfg: ModelConfig, resume: bool = True) -> TrainResult:
    """Pretrain a Transformer on tcfg.data_dir's shards; resumes from the newest checkpoint in
    tcfg.out_dir if there is one (and `resume`). Works unchanged under torchrun (DDP, gloo).
    tcfg.threads applies only while training; the caller's torch thread count is restored."""
    with torch_threads(tcfg.threads):
        tcfg.validate(distributed()[0])
        manifest = check_model_fits_data(model_cfg, tcfg)
        splits = manifest["splits"]
        hq = TokenSplit.open(tcfg.data_dir, "hq") if "hq" in splits and tcfg.hq_weight > 0 else None
        sampler = BatchSampler(TokenSplit.open(tcfg.data_dir, "train"), tcfg.seq_len, tcfg.seed, hq)
        windows = eval_windows(TokenSplit.open(tcfg.data_dir, "val"), tcfg.seq_len, tcfg.eval_windows) \
            if "val" in splits else None
        evaluate = (lambda m: {"val_loss": evaluate_loss(m, windows)}) if windows is not None else None
        model = build_model(model_cfg, tcfg)
        run = train_loop(model, LanguageModeling(), schedule_batches(sampler, tcfg), tcfg, tcfg.out_dir,
                         evaluate=evaluate, resume=resume)
    run_dir = Path(tcfg.out_dir)
    plot_path = run_dir / "loss_curve.png" if distributed()[1] == 0 else None
    if plot_path is not None:
        decay_start = decay_start_step(tcfg.steps, tcfg.warmup_steps, tcfg.schedule, tcfg.decay_fraction)
        plot_loss_curve(run.log_path, plot_path, decay_start if tcfg.schedule == "wsd" else None,
                        title=f"{model.config.name or 'model'}: {tcfg.schedule} schedule")
    return TrainResult(run_dir, tcfg.steps, run.tokens, run.metrics.get("val_loss", float("nan")),
                       run.tokens_per_s, run.mfu, run.log_path, plot_path, model)


def train_preset(preset_name: str, out_dir: str | Path, data_dir: str | Path | None = None,
                 model_config: str | Path | None = None, resume: bool = True, **settings: Any) -> TrainResult:
    """`pocketlm train`: preset `preset_name`'s model (or the ModelConfig JSON `model_config`) and schedule,
    `settings` overriding TrainConfig fields, on `data_dir` (default: the bundled corpus); rank 0 then
    exports the model folder (checkpoint + tokenizer) to out_dir/model."""
    from pocketlm.train.fixtures import bundled_data_dir, export_model_dir

    data_dir = Path(data_dir) if data_dir is not None else bundled_data_dir(progress=settings.get("progress", True))
    model_cfg, overrides = preset(preset_name, read_manifest(data_dir)["tokenizer"]["vocab_size"])
    if model_config is not None:
        model_cfg = ModelConfig.load(model_config)
    tcfg = TrainConfig(data_dir=str(data_dir), out_dir=str(out_dir), **{**overrides, **settings})
    result = train(tcfg, model_cfg, resume=resume)
    if distributed()[1] == 0:
        result.model_dir = export_model_dir(result.model, data_dir, Path(out_dir) / "model")
    return result


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
