"""TrainConfig and the preset model/training sizes of the pocketlm reference family."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from pocketlm.model.config import ModelConfig
from pocketlm.utils import dataclass_from_dict


class TrainConfigError(ValueError):
    """An impossible training setting; the message names the field and the fix."""


@dataclass
class TrainConfig:
    data_dir: str = ""
    out_dir: str = "runs/train"
    seq_len: int = 128
    batch_size: int = 16  # sequences per optimizer step (global, across processes)
    micro_batch: int | None = None  # sequences per forward per process; None: batch_size / world
    steps: int = 200
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    schedule: str = "wsd"  # cosine | wsd | constant
    decay_fraction: float = 0.2  # WSD: share of steps in the decay phase
    hq_weight: float = 0.5  # share of rows from the hq split during the decay phase (0: one stage)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    mup: bool = False
    mup_base_width: int = 64
    init_std: float = 0.02
    autocast_bf16: bool = False
    compile: bool = False
    seed: int = 0
    eval_every: int = 50
    eval_windows: int = 32
    ckpt_every: int = 50
    log_every: int = 1
    threads: int | None = None  # torch intra-op threads; None: leave torch's default
    progress: bool = True
    parallel: str = "auto"  # under torchrun: ddp | fsdp | auto (fsdp from train.sharding.FSDP_AUTO_PARAMS on)
    fsdp_bf16: bool = False  # FSDP: bf16 compute (fp32 master weights, fp32 gradient reduction)
    activation_checkpointing: bool = False  # FSDP: recompute each block's activations in the backward pass

    def validate(self, world_size: int = 1) -> None:
        def need(ok: bool, fld: str, rule: str) -> None:
            if not ok:
                raise TrainConfigError(f"TrainConfig.{fld}: {rule}")

        for fld in ("steps", "batch_size", "eval_every", "eval_windows", "ckpt_every", "log_every", "mup_base_width"):
            v = getattr(self, fld)
            need(isinstance(v, int) and not isinstance(v, bool) and v > 0, fld, f"must be a positive integer, got {v!r}")
        for fld in ("micro_batch", "threads"):
            v = getattr(self, fld)
            need(v is None or (isinstance(v, int) and v > 0), fld, f"must be a positive integer, got {v!r}")
        for fld, low, high in (("lr", 0.0, math.inf), ("grad_clip", 0.0, math.inf), ("init_std", 0.0, math.inf),
                               ("eps", 0.0, math.inf)):
            v = getattr(self, fld)
            need(isinstance(v, (int, float)) and low < v <= high and not math.isnan(v), fld,
                 f"must be a number > {low:g}, got {v!r}" + (" (clipping at 0 would zero every gradient; "
                                                                 "use inf to disable it)" if fld == "grad_clip" else ""))
        for fld in ("weight_decay", "min_lr_ratio"):
            v = getattr(self, fld)
            need(isinstance(v, (int, float)) and 0.0 <= v and math.isfinite(v), fld, f"must be a number >= 0, got {v!r}")
        for fld in ("beta1", "beta2"):
            v = getattr(self, fld)
            need(isinstance(v, (int, float)) and 0.0 <= v < 1.0, fld, f"must be in [0, 1), got {v!r}")
        need(self.seq_len > 1, "seq_len", "must be > 1")
        need(self.batch_size % world_size == 0, "batch_size",
             f"global batch {self.batch_size} must be divisible by the number of processes ({world_size}); "
             f"use --batch-size {max(world_size, self.batch_size // world_size * world_size)} or another "
             "process count")
        per_rank = self.batch_size // world_size
        micro = self.micro_batch or per_rank
        need(per_rank % micro == 0, "micro_batch",
             f"per-process batch {per_rank} must be a multiple of micro_batch {micro}")
        need(0 <= self.warmup_steps < self.steps, "warmup_steps", "must be in [0, steps)")
        need(0.0 <= self.hq_weight <= 1.0, "hq_weight", "must be in [0, 1]")
        need(0.0 < self.decay_fraction <= 1.0, "decay_fraction", "must be in (0, 1]")
        need(self.schedule in ("cosine", "wsd", "constant"), "schedule", "must be cosine, wsd or constant")
        need(self.parallel in ("auto", "ddp", "fsdp"), "parallel", "must be auto, ddp or fsdp")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return dataclass_from_dict(cls, d, TrainConfigError)


def family_config(d_model: int, n_layer: int, n_head: int, vocab_size: int, max_seq_len: int = 512,
                  name: str = "") -> ModelConfig:
    """One Llama-style family: RMSNorm, RoPE, gated SiLU FFN (~8/3 d rounded to 32), tied embeddings."""
    ffn = int(round(8 * d_model / 3 / 32)) * 32
    return ModelConfig(vocab_size=vocab_size, d_model=d_model, n_layer=n_layer, n_head=n_head,
                       intermediate_size=ffn, max_seq_len=max_seq_len, tie_embeddings=True, name=name)


# name: (d_model, n_layer, n_head, TrainConfig overrides)
PRESETS: dict[str, tuple[int, int, int, dict[str, Any]]] = {
    "micro": (32, 2, 2, {"steps": 60, "batch_size": 8, "seq_len": 64, "lr": 1e-2, "warmup_steps": 5,
                         "eval_every": 30, "ckpt_every": 30}),
    "tiny": (128, 4, 4, {"steps": 1000, "batch_size": 16, "seq_len": 128, "lr": 4e-3, "warmup_steps": 50,
                         "eval_every": 100, "ckpt_every": 200}),
    "small": (192, 6, 6, {"steps": 1000, "batch_size": 16, "seq_len": 128, "lr": 3e-3, "warmup_steps": 50,
                          "eval_every": 100, "ckpt_every": 200}),
    "base": (320, 8, 8, {"steps": 1000, "batch_size": 16, "seq_len": 128, "lr": 2e-3, "warmup_steps": 50,
                         "eval_every": 100, "ckpt_every": 200}),
}


def preset(name: str, vocab_size: int) -> tuple[ModelConfig, dict[str, Any]]:
    """(ModelConfig, TrainConfig overrides) of preset `name` for a tokenizer of `vocab_size` tokens."""
    if name not in PRESETS:
        raise TrainConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    d, n_layer, n_head, overrides = PRESETS[name]
    return family_config(d, n_layer, n_head, vocab_size, name=f"pocketlm-{name}"), dict(overrides)
