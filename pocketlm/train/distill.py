"""Knowledge distillation: forward KL, reverse KL, Jensen-Shannon, on full or top-k teacher logits
(optionally cached offline), mixed with cross-entropy, with temperature, plus a hidden-state loss
through a learned projection when teacher and student widths differ."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.progress import Progress
from safetensors.torch import load_file, save_file
from torch import nn

from pocketlm.data.shards import TokenSplit, read_manifest
from pocketlm.data.tokenizer import TextTokenizer
from pocketlm.model.transformer import Transformer
from pocketlm.train.batches import BatchSampler, eval_windows, schedule_batches
from pocketlm.train.config import PRESETS, TrainConfig, preset
from pocketlm.train.loop import (Batch, BatchFn, Objective, barrier, distributed, evaluate_loss, next_token_loss,
                                 tokens_of, torch_threads, train_loop)
from pocketlm.train.trainer import build_model, check_model_fits_data
from pocketlm.utils import atomic_path

DIVERGENCES = ("forward_kl", "reverse_kl", "js")


class DistillError(ValueError):
    """Teacher and student cannot be distilled together; the message says why and the fix."""


@dataclass
class DistillConfig:
    divergence: str = "forward_kl"
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the distillation loss; (1 - alpha) weights cross-entropy
    top_k: int | None = None  # use only the teacher's top-k logits
    hidden_weight: float = 0.0  # weight of the hidden-state MSE (through a learned projection)
    teacher_cache: str | None = None  # safetensors file of cached teacher top-k logits

    def validate(self) -> None:
        if self.divergence not in DIVERGENCES:
            raise DistillError(f"divergence {self.divergence!r} unknown; choose one of {DIVERGENCES}")
        if self.temperature <= 0:
            raise DistillError("temperature must be positive")
        if not 0.0 <= self.alpha <= 1.0:
            raise DistillError("alpha must be in [0, 1]")
        if self.teacher_cache and self.hidden_weight > 0:
            raise DistillError("a teacher-logit cache holds no hidden states; use hidden_weight 0 with a cache")


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """sum_v p (log p - log q) over the last axis."""
    return (logp.exp() * (logp - logq)).sum(-1)


def divergence_loss(student_logits: torch.Tensor, teacher: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
                    kind: str = "forward_kl", temperature: float = 1.0) -> torch.Tensor:
    """Mean per-token divergence between teacher and student at `temperature`, times temperature^2
    (Hinton et al. 2015). `teacher` is full logits [.., V] or a (values, indices) top-k pair: then the
    teacher distribution is renormalised over its top-k; forward KL scores the student's full-vocab
    log-probabilities on those tokens, reverse KL and JS renormalise the student over them too."""
    s = student_logits.float() / temperature
    if isinstance(teacher, tuple):
        values, indices = teacher
        logp = F.log_softmax(values.float() / temperature, dim=-1)
        s_k = s.gather(-1, indices.long())
        logq = F.log_softmax(s, dim=-1).gather(-1, indices.long()) if kind == "forward_kl" \
            else F.log_softmax(s_k, dim=-1)
    else:
        logp = F.log_softmax(teacher.float() / temperature, dim=-1)
        logq = F.log_softmax(s, dim=-1)
    if kind == "forward_kl":
        loss = _kl(logp, logq)
    elif kind == "reverse_kl":
        loss = _kl(logq, logp)
    elif kind == "js":
        logm = torch.logsumexp(torch.stack([logp, logq]), dim=0) - torch.log(torch.tensor(2.0))
        loss = 0.5 * _kl(logp, logm) + 0.5 * _kl(logq, logm)
    else:
        raise DistillError(f"divergence {kind!r} unknown; choose one of {DIVERGENCES}")
    return loss.mean() * temperature**2


@torch.no_grad()
def mean_forward_kl(teacher: torch.nn.Module, student: torch.nn.Module, windows: torch.Tensor,
                    batch: int = 16) -> float:
    """KL(teacher || student) per token at temperature 1 over `windows` [N, T + 1]."""
    teacher.eval()
    student.eval()
    total, n = 0.0, 0
    for i in range(0, windows.shape[0], batch):
        x = windows[i:i + batch, :-1]
        total += float(divergence_loss(student(x), teacher(x), "forward_kl", 1.0)) * x.shape[0]
        n += x.shape[0]
    return total / n


def check_tokenizers_match(teacher_tok: TextTokenizer | None, student_tok: TextTokenizer | None,
                           teacher_vocab: int, student_vocab: int) -> None:
    """Raise DistillError unless teacher and student share one vocabulary."""
    if teacher_tok is not None and student_tok is not None:
        tv = teacher_tok.backend.get_vocab() if teacher_tok.kind == "tokenizers" else None
        sv = student_tok.backend.get_vocab() if student_tok.kind == "tokenizers" else None
        if teacher_tok.kind != student_tok.kind or (tv is not None and tv != sv) or (
                tv is None and teacher_tok.fingerprint() != student_tok.fingerprint()):
            raise DistillError(
                f"teacher and student tokenizers differ (teacher {teacher_tok.source}, {teacher_tok.vocab_size} "
                f"tokens; student {student_tok.source}, {student_tok.vocab_size} tokens). Logit distillation "
                "needs one vocabulary: prepare the student's data with the teacher's tokenizer "
                "(`pocketlm data prepare --tokenizer TEACHER_DIR/tokenizer.json`).")
    if teacher_vocab != student_vocab:
        raise DistillError(f"teacher vocab_size {teacher_vocab} != student vocab_size {student_vocab}; "
                           "build the student with the teacher's vocab_size")



class Distillation(Objective):
    """The distillation loss of `dcfg` for `student` against `teacher`: alpha * divergence at the
    temperature (full or top-k teacher logits, live or from a batch's cached "teacher_values" /
    "teacher_indices") + (1 - alpha) * cross-entropy + hidden_weight * MSE between the teacher's final
    hidden states and the student's through a learned projection (a trainable module of the objective)."""

    name = "distillation"

    def __init__(self, teacher: Transformer, student: Transformer, dcfg: DistillConfig | None = None) -> None:
        self.teacher, self.dcfg = teacher.eval(), dcfg or DistillConfig()
        self.dcfg.validate()
        check_tokenizers_match(None, None, teacher.config.vocab_size, student.config.vocab_size)
        self.proj = nn.Linear(student.config.d_model, teacher.config.d_model, bias=False) \
            if self.dcfg.hidden_weight > 0 else None

    def modules(self) -> dict[str, nn.Module]:
        return {"projection": self.proj} if self.proj is not None else {}

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self.dcfg), "teacher_cache": bool(self.dcfg.teacher_cache),
                "teacher": self.teacher.config.to_dict()}

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        d = self.dcfg
        tokens = tokens_of(batch)
        h_s, _ = model.forward_hidden(tokens[:, :-1])
        s_logits = model.logits(h_s)
        target, h_t = self._teacher(batch)
        kd = divergence_loss(s_logits, target, d.divergence, d.temperature)
        ce = next_token_loss(s_logits, tokens)
        loss = d.alpha * kd + (1 - d.alpha) * ce
        hidden = torch.zeros(())
        if self.proj is not None and h_t is not None:
            hidden = F.mse_loss(self.proj(h_s), h_t)
            loss = loss + d.hidden_weight * hidden
        return loss, {"kd": kd, "ce": ce, "hidden": hidden}

    def _teacher(self, batch: Batch) -> tuple[torch.Tensor | tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        """The teacher's target (logits, or a top-k (values, indices) pair) and its hidden states (None
        when the batch carries cached top-k logits)."""
        if isinstance(batch, dict) and "teacher_values" in batch:
            return (batch["teacher_values"], batch["teacher_indices"]), None
        with torch.no_grad():
            h_t, _ = self.teacher.forward_hidden(tokens_of(batch)[:, :-1])
            t_logits = self.teacher.logits(h_t)
        if self.dcfg.top_k:
            top = t_logits.float().topk(self.dcfg.top_k, dim=-1)
            return (top.values, top.indices), h_t
        return t_logits, h_t


def distill_batches(tcfg: TrainConfig, cache: tuple[torch.Tensor, torch.Tensor] | None = None) -> BatchFn:
    """The batches of a distillation run with `tcfg`: rows of the train split (one stage), with each
    step's cached teacher top-k logits when `cache` (values, indices) is given."""
    tokens = schedule_batches(BatchSampler(TokenSplit.open(tcfg.data_dir, "train"), tcfg.seq_len, tcfg.seed), tcfg)
    if cache is None:
        return tokens

    def batch(step: int) -> tuple[Batch, dict]:
        rows, info = tokens(step)
        return {"tokens": rows, "teacher_values": cache[0][step], "teacher_indices": cache[1][step]}, info

    return batch


def cache_teacher_topk(teacher: torch.nn.Module, data_dir: str, tcfg: TrainConfig, k: int, path: str | Path) -> Path:
    """Run the teacher over exactly the batches a distillation run with `tcfg` will read and store its
    top-k logits (float16 values, int32 indices) in a safetensors file."""
    batches = distill_batches(dataclasses.replace(tcfg, data_dir=data_dir))
    teacher.eval()
    values, indices = [], []
    with torch.no_grad(), Progress(transient=True, disable=not tcfg.progress) as bar:
        task = bar.add_task("caching teacher top-k", total=tcfg.steps)
        for step in range(tcfg.steps):
            batch, _ = batches(step)
            top = teacher(batch[:, :-1]).float().topk(k, dim=-1)
            values.append(top.values.half())
            indices.append(top.indices.int())
            bar.advance(task)
    meta = {"k": str(k), "steps": str(tcfg.steps), "batch_size": str(tcfg.batch_size),
            "seq_len": str(tcfg.seq_len), "seed": str(tcfg.seed), "data": read_manifest(data_dir)["splits"]["train"]
            ["shards"][0]["sha256"]}
    with atomic_path(path) as tmp:
        save_file({"values": torch.stack(values), "indices": torch.stack(indices)}, str(tmp), metadata=meta)
    return Path(path)
def _load_cache(path: str, data_dir: str, tcfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = f.metadata()
    expect = {"steps": tcfg.steps, "batch_size": tcfg.batch_size, "seq_len": tcfg.seq_len, "seed": tcfg.seed}
    for key, want in expect.items():
        if int(meta[key]) != want:
            raise DistillError(f"{path}: cached for {key}={meta[key]}, this run has {key}={want}; "
                               "re-create the cache with the same settings")
    if meta["data"] != read_manifest(data_dir)["splits"]["train"]["shards"][0]["sha256"]:
        raise DistillError(f"{path}: cached for different training data; re-create the cache")
    t = load_file(path)
    return t["values"], t["indices"]


@dataclass
class DistillResult:
    kl_before: float
    kl_after: float
    val_loss: float
    log_path: Path
    student: Transformer
    model_dir: Path | None = None  # the exported student folder (distill_models, rank 0)

    def summary(self) -> dict[str, Any]:
        """What `pocketlm distill` prints."""
        return {"kl_before": self.kl_before, "kl_after": self.kl_after, "val_loss": self.val_loss,
                "model_dir": str(self.model_dir)}


def distill(teacher: Transformer, student: Transformer, tcfg: TrainConfig, dcfg: DistillConfig,
            resume: bool = True) -> DistillResult:
    """Train `student` towards `teacher` on tcfg.data_dir with the shared training loop (accumulation,
    clipping, schedule, DDP under torchrun, checkpoints in tcfg.out_dir and exact resume). The log,
    tcfg.out_dir/distill_log.jsonl, ends with a summary row: KL(teacher || student) before and after and
    the student's validation loss."""
    dcfg.validate()
    with torch_threads(tcfg.threads):
        tcfg.validate(distributed()[0])
        torch.manual_seed(tcfg.seed)
        objective = Distillation(teacher, student, dcfg)
        manifest = check_model_fits_data(student.config, tcfg)
        windows = eval_windows(TokenSplit.open(tcfg.data_dir, "val" if "val" in manifest["splits"] else "train"),
                               tcfg.seq_len, tcfg.eval_windows)
        cache = _load_cache(dcfg.teacher_cache, tcfg.data_dir, tcfg) if dcfg.teacher_cache else None
        run = train_loop(student, objective, distill_batches(tcfg, cache), tcfg, tcfg.out_dir, resume=resume,
                         evaluate_before=lambda m: {"kl": mean_forward_kl(teacher, m, windows)},
                         label="distill", log_name="distill_log.jsonl")
        kl_after, val_loss = mean_forward_kl(teacher, student, windows), evaluate_loss(student, windows)
    kl_before = run.start_metrics["kl"]
    if distributed()[1] == 0:
        with open(run.log_path, "a") as log:
            log.write(json.dumps({"kind": "summary", "step": tcfg.steps, "kl_before": kl_before,
                                  "kl_after": kl_after, "val_loss": val_loss}) + "\n")
    return DistillResult(kl_before, kl_after, val_loss, run.log_path, student)


def distill_models(teacher_dir: str | Path, student: str | Path, out_dir: str | Path,
                   dcfg: DistillConfig | None = None, data_dir: str | Path | None = None,
                   cache_teacher: str | Path | None = None, resume: bool = True, **settings: Any) -> DistillResult:
    """`pocketlm distill`: load the teacher folder and the student (a model folder, or a preset name to
    start from scratch), check that they and the data (default: the bundled corpus) share one tokenizer,
    create or reuse the teacher top-k cache `cache_teacher`, distil with `settings` overriding TrainConfig
    fields (cosine schedule, warmup min(20, steps / 10) by default), and save the student to out_dir/model."""
    from pocketlm.interop import load_model
    from pocketlm.train.fixtures import bundled_data_dir, export_model_dir

    dcfg = dcfg or DistillConfig()
    data_dir = Path(data_dir) if data_dir is not None else bundled_data_dir(progress=settings.get("progress", True))
    steps = settings.get("steps", TrainConfig.steps)
    tcfg = TrainConfig(data_dir=str(data_dir), out_dir=str(out_dir),
                       **{"warmup_steps": min(20, steps // 10), "schedule": "cosine", **settings})
    teacher = load_model(teacher_dir).float()
    teacher_tok, data_tok = _folder_tokenizer(Path(teacher_dir)), _data_tokenizer(data_dir)
    student_model, student_tok = _student(student, tcfg, data_tok)
    check_tokenizers_match(teacher_tok, student_tok, teacher.config.vocab_size, student_model.config.vocab_size)
    check_tokenizers_match(teacher_tok, data_tok, teacher.config.vocab_size, teacher.config.vocab_size)
    if cache_teacher is not None:
        cache = _teacher_cache(teacher, tcfg, dcfg.top_k, Path(cache_teacher))
        dcfg = dataclasses.replace(dcfg, teacher_cache=str(cache))
    result = distill(teacher, student_model, tcfg, dcfg, resume=resume)
    if distributed()[1] == 0:
        result.model_dir = export_model_dir(result.student, data_dir, Path(out_dir) / "model")
    return result


def _student(student: str | Path, tcfg: TrainConfig,
             data_tok: TextTokenizer) -> tuple[Transformer, TextTokenizer | None]:
    """A preset's fresh model (seeded, with the data's tokenizer) or a model folder and its tokenizer."""
    from pocketlm.interop import load_model

    if str(student) in PRESETS:
        cfg, _ = preset(str(student), read_manifest(tcfg.data_dir)["tokenizer"]["vocab_size"])
        return build_model(cfg, tcfg), data_tok
    if Path(student).is_dir():
        return load_model(student).float(), _folder_tokenizer(Path(student))
    raise DistillError(f"--student {student!r}: neither a model folder nor a preset ({sorted(PRESETS)})")


def _teacher_cache(teacher: Transformer, tcfg: TrainConfig, top_k: int | None, path: Path) -> Path:
    """`path`, created first (by rank 0, the other ranks waiting) if it does not exist."""
    if not path.is_file():
        if not top_k:
            raise DistillError("--cache-teacher stores top-k logits; give --top-k K")
        if distributed()[1] == 0:
            cache_teacher_topk(teacher, tcfg.data_dir, tcfg, top_k, path)
    barrier()
    return path


def _data_tokenizer(data_dir: Path) -> TextTokenizer:
    if (data_dir / "tokenizer.json").is_file():
        return TextTokenizer.load(data_dir / "tokenizer.json")
    return TextTokenizer.load(read_manifest(data_dir)["tokenizer"]["source"])


def _folder_tokenizer(folder: Path) -> TextTokenizer | None:
    for name in ("tokenizer.json", "tokenizer.model"):
        if (folder / name).is_file():
            return TextTokenizer.load(folder / name)
    return None
