"""Knowledge distillation: forward KL, reverse KL, Jensen-Shannon, on full or top-k teacher logits
(optionally cached offline), mixed with cross-entropy, with temperature, plus a hidden-state loss
through a learned projection when teacher and student widths differ."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import Progress
from safetensors.torch import load_file, save_file

from pocketlm.data.shards import TokenSplit, read_manifest
from pocketlm.data.tokenizer import TextTokenizer
from pocketlm.model.transformer import Transformer
from pocketlm.train.batches import BatchSampler, eval_windows
from pocketlm.train.config import TrainConfig
from pocketlm.train.mup import param_groups
from pocketlm.train.schedule import lr_multiplier
from pocketlm.utils import atomic_path, atomic_write_text

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


def cache_teacher_topk(teacher: torch.nn.Module, data_dir: str, tcfg: TrainConfig, k: int, path: str | Path) -> Path:
    """Run the teacher over exactly the batches a distillation run with `tcfg` will read and store its
    top-k logits (float16 values, int32 indices) in a safetensors file."""
    sampler = BatchSampler(TokenSplit.open(data_dir, "train"), tcfg.seq_len, tcfg.seed)
    teacher.eval()
    values, indices = [], []
    with torch.no_grad(), Progress(transient=True, disable=not tcfg.progress) as bar:
        task = bar.add_task("caching teacher top-k", total=tcfg.steps)
        for step in range(tcfg.steps):
            batch, _ = sampler.global_batch(step, tcfg.batch_size)
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


def distill(teacher: Transformer, student: Transformer, tcfg: TrainConfig, dcfg: DistillConfig) -> DistillResult:
    """Train `student` towards `teacher` on tcfg.data_dir; log to tcfg.out_dir/distill_log.jsonl."""
    dcfg.validate()
    tcfg.validate()
    check_tokenizers_match(None, None, teacher.config.vocab_size, student.config.vocab_size)
    previous_threads = torch.get_num_threads()
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    try:
        return _distill(teacher, student, tcfg, dcfg)
    finally:
        torch.set_num_threads(previous_threads)


def _distill(teacher: Transformer, student: Transformer, tcfg: TrainConfig, dcfg: DistillConfig) -> DistillResult:
    torch.manual_seed(tcfg.seed)
    out = Path(tcfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sampler = BatchSampler(TokenSplit.open(tcfg.data_dir, "train"), tcfg.seq_len, tcfg.seed)
    manifest = read_manifest(tcfg.data_dir)
    windows = eval_windows(TokenSplit.open(tcfg.data_dir, "val" if "val" in manifest["splits"] else "train"),
                           tcfg.seq_len, tcfg.eval_windows)
    proj = None
    if dcfg.hidden_weight > 0:
        proj = torch.nn.Linear(student.config.d_model, teacher.config.d_model, bias=False)
    groups = param_groups(student, tcfg.lr, tcfg.weight_decay)
    if proj is not None:
        groups.append({"params": list(proj.parameters()), "lr_scale": 1.0, "lr": tcfg.lr,
                       "weight_decay": 0.0, "name": "projection"})
    opt = torch.optim.AdamW(groups, lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2), weight_decay=tcfg.weight_decay)
    cache = _load_cache(dcfg.teacher_cache, tcfg.data_dir, tcfg) if dcfg.teacher_cache else None
    kl_before = mean_forward_kl(teacher, student, windows)
    teacher.eval()
    student.train()
    log_path = out / "distill_log.jsonl"
    rows = []
    with Progress(disable=not tcfg.progress) as bar:
        task = bar.add_task("distill", total=tcfg.steps)
        for step in range(tcfg.steps):
            t0 = time.perf_counter()
            mult = lr_multiplier(step, tcfg.steps, tcfg.warmup_steps, tcfg.schedule, tcfg.min_lr_ratio,
                                 tcfg.decay_fraction)
            for g in opt.param_groups:
                g["lr"] = tcfg.lr * g["lr_scale"] * mult
            batch, _ = sampler.global_batch(step, tcfg.batch_size)
            x, y = batch[:, :-1], batch[:, 1:]
            h_s, _ = student.forward_hidden(x)
            s_logits = student.logits(h_s)
            if cache is not None:
                target: torch.Tensor | tuple = (cache[0][step], cache[1][step])
                h_t = None
            else:
                with torch.no_grad():
                    h_t, _ = teacher.forward_hidden(x)
                    t_logits = teacher.logits(h_t)
                target = t_logits.float().topk(dcfg.top_k, dim=-1) if dcfg.top_k else t_logits
                if dcfg.top_k:
                    target = (target.values, target.indices)
            kd = divergence_loss(s_logits, target, dcfg.divergence, dcfg.temperature)
            ce = F.cross_entropy(s_logits.float().reshape(-1, s_logits.shape[-1]), y.reshape(-1))
            loss = dcfg.alpha * kd + (1 - dcfg.alpha) * ce
            hidden = torch.zeros(())
            if proj is not None and h_t is not None:
                hidden = F.mse_loss(proj(h_s), h_t)
                loss = loss + dcfg.hidden_weight * hidden
            loss.backward()
            params = list(student.parameters()) + (list(proj.parameters()) if proj is not None else [])
            torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            rows.append({"step": step, "loss": loss.item(), "kd": kd.item(), "ce": ce.item(),
                         "hidden": hidden.item(), "seconds": round(time.perf_counter() - t0, 4)})
            bar.update(task, advance=1)
    kl_after = mean_forward_kl(teacher, student, windows)
    from pocketlm.train.trainer import evaluate_loss

    val_loss = evaluate_loss(student, windows)
    rows.append({"kind": "summary", "kl_before": kl_before, "kl_after": kl_after, "val_loss": val_loss})
    atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in rows))
    return DistillResult(kl_before, kl_after, val_loss, log_path, student)
