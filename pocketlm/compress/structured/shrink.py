"""`pocketlm shrink`: Minitron's recipe on a token budget. Each of K rounds prunes the current student a
step towards the parameter target (the best of the ranked candidate shapes; targets shrink geometrically,
total * ratio^(r/K)) and distils it from the *original* teacher on tokens / K tokens of logit KL, with the
shared distillation code (so checkpoints, exact resume and DDP under torchrun come from `train.loop`).
Then the final student is evaluated (validation loss, KL to the teacher) and saved (pocketlm folder,
Hugging Face folder, GGUF when the exporter takes it), with `report.json` and `report.md`.

`candidates=K` (Minitron's candidate selection): the top K shapes of the KL ranking are each distilled
briefly (`candidate_tokens` tokens, the round's seed, so every candidate sees the same batches) and the
one with the lowest validation loss afterwards is the round's student; it starts the round's
distillation from its pruned weights (the short runs only choose). The report lists every candidate's
proxy KL and its loss after the short distillation, and whether that reordered the ranking.

Resume: a finished round leaves `roundN/round.json`; a started one its pruned model and the distillation
checkpoints (candidates' too); a rerun with the same arguments skips finished rounds and resumes the
distillation.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from pocketlm.compress.structured.driver import prune_structured, target_shapes
from pocketlm.compress.structured.importance import StructuredError
from pocketlm.compress.structured.shapes import Shape, parse_count
from pocketlm.model.costs import param_counts
from pocketlm.utils import atomic_write_text


@dataclass
class ShrinkConfig:
    target_params: str | int = "0.5x"
    tokens: int = 20_000_000  # distillation tokens, split evenly over the rounds
    rounds: int = 1  # K: prune-a-little-then-distil rounds (`--steps` on the command line)
    method: str = "activation"
    layer_method: str = "block_influence"
    calib: str = "64x128"  # N x L windows of the training split for importance and ranking
    max_candidates: int = 12
    tolerance: float = 0.02
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 1e-3
    temperature: float = 1.0
    alpha: float = 1.0  # 1: logit KL only (Minitron); below 1 mixes in cross-entropy
    top_k: int | None = None
    eval_windows: int = 32
    candidates: int = 1  # K > 1: distil the top K ranked shapes briefly, keep the lowest validation loss
    candidate_tokens: int | None = None  # tokens of each short distillation (default: a tenth of a round's)
    seed: int = 0
    threads: int | None = None
    progress: bool = True

    def validate(self) -> None:
        if self.rounds < 1:
            raise StructuredError("--steps (rounds) must be at least 1")
        if self.tokens < self.rounds * self.batch_size * self.seq_len:
            raise StructuredError(f"--tokens {self.tokens:,} is less than one batch ({self.batch_size} x "
                                  f"{self.seq_len}) per round; give more tokens or fewer rounds")
        if self.candidates < 1:
            raise StructuredError("--candidates must be at least 1 (1: the best ranked shape, no short distillation)")
        if self.candidate_tokens is not None and self.candidate_tokens < self.batch_size * self.seq_len:
            raise StructuredError(f"--candidate-tokens {self.candidate_tokens:,} is less than one batch "
                                  f"({self.batch_size} x {self.seq_len})")

    def candidate_steps(self) -> int:
        """Steps of each candidate's short distillation."""
        tokens = self.candidate_tokens or self.tokens // self.rounds // 10
        return max(1, tokens // (self.batch_size * self.seq_len))


@dataclass
class ShrinkResult:
    report: dict[str, Any]
    model_dir: Path
    out_dir: Path
    student: Any = field(repr=False, default=None)


def _calib_shape(text: str) -> tuple[int, int]:
    n, _, length = text.partition("x")
    if not (n.isdigit() and length.isdigit()):
        raise StructuredError(f"--calib {text!r}: give NxL windows of the training data, e.g. 64x128")
    return int(n), int(length)


def _round_targets(total: int, target: int, rounds: int) -> list[int]:
    return [int(round(total * (target / total) ** (r / rounds))) for r in range(1, rounds + 1)]


def shrink(teacher_dir: str | Path, out_dir: str | Path, scfg: ShrinkConfig | None = None,
           data_dir: str | Path | None = None, resume: bool = True) -> ShrinkResult:
    """Prune `teacher_dir` to scfg.target_params and distil it on scfg.tokens tokens of `data_dir`
    (default: the bundled corpus), in scfg.rounds rounds; write everything under `out_dir`."""
    from pocketlm.compress.calibration import CalibSpec, calibration_from_shards
    from pocketlm.data.shards import TokenSplit, read_manifest
    from pocketlm.interop import load_model
    from pocketlm.train.batches import eval_windows
    from pocketlm.train.distill import (DistillConfig, _data_tokenizer, _folder_tokenizer, check_tokenizers_match,
                                        distill, mean_forward_kl)
    from pocketlm.train.fixtures import bundled_data_dir
    from pocketlm.train.loop import barrier, distributed, evaluate_loss, torch_threads

    scfg = scfg or ShrinkConfig()
    scfg.validate()
    out = Path(out_dir)
    t_start = time.perf_counter()
    data_dir = Path(data_dir) if data_dir is not None else bundled_data_dir(progress=scfg.progress)
    teacher = load_model(teacher_dir).float().eval()
    teacher_tok = _folder_tokenizer(Path(teacher_dir))
    check_tokenizers_match(teacher_tok, _data_tokenizer(data_dir), teacher.config.vocab_size,
                           read_manifest(data_dir)["tokenizer"]["vocab_size"])
    rank = distributed()[1]
    n, length = _calib_shape(scfg.calib)
    total = param_counts(teacher.config)["total"]
    target = parse_count(scfg.target_params, total)
    target_shapes(teacher.config, target, tolerance=scfg.tolerance)  # fail before any work if unreachable
    tokens_per_round = scfg.tokens // scfg.rounds
    steps = max(1, tokens_per_round // (scfg.batch_size * scfg.seq_len))
    dcfg = DistillConfig(temperature=scfg.temperature, alpha=scfg.alpha, top_k=scfg.top_k)
    splits = read_manifest(data_dir)["splits"]
    val = eval_windows(TokenSplit.open(data_dir, "val" if "val" in splits else "train"), scfg.seq_len,
                       scfg.eval_windows)
    rounds: list[dict[str, Any]] = []
    student = teacher
    with torch_threads(scfg.threads):
        calib, _ = calibration_from_shards(data_dir, CalibSpec(str(data_dir), n, length), teacher_tok, scfg.seed)
        teacher_loss = evaluate_loss(teacher, val)
        for r, round_target in enumerate(_round_targets(total, target, scfg.rounds), start=1):
            rdir = out / f"round{r}"

            def round_train_config(folder: Path, n_steps: int, seed: int = scfg.seed + r):
                return _train_config(scfg, data_dir, folder, n_steps, seed, rank == 0)

            done = rdir / "round.json"
            if resume and done.is_file():
                rounds.append(json.loads(done.read_text()))
                student = load_model(rdir / "student").float()
                continue
            if resume and (rdir / "pruned" / "pocketlm.json").is_file():
                student = load_model(rdir / "pruned").float()
                pruning = json.loads((rdir / "prune.json").read_text())
            else:
                shapes = target_shapes(student.config, round_target, tolerance=scfg.tolerance,
                                       max_candidates=scfg.max_candidates) if round_target < param_counts(
                    student.config)["total"] else [Shape.of(student.config)]
                res = prune_structured(student, calib, shapes, method=scfg.method, layer_method=scfg.layer_method,
                                       progress=scfg.progress and rank == 0, keep=scfg.candidates)
                student, pruning = res.model, res.summary()
                if len(res.top) > 1:
                    n_cand = scfg.candidate_steps()
                    student, pruning = _pick_candidate(
                        res, pruning, lambda m, sub: distill(teacher, m, round_train_config(sub, n_cand),
                                                             dataclasses.replace(dcfg), resume=resume),
                        rdir / "candidates", n_cand * scfg.batch_size * scfg.seq_len, lambda m: evaluate_loss(m, val))
                if rank == 0:
                    _save_model(student, data_dir, rdir / "pruned")
                    atomic_write_text(rdir / "prune.json", json.dumps(pruning, indent=2))
                barrier()
            pruned_metrics = {"val_loss": evaluate_loss(student, val), "kl": mean_forward_kl(teacher, student, val)}
            kd = distill(teacher, student, round_train_config(rdir / "distill", steps), dataclasses.replace(dcfg),
                         resume=resume)
            row = {"round": r, "target_params": round_target, "params": param_counts(student.config)["total"],
                   "shape": str(Shape.of(student.config)), "tokens": steps * scfg.batch_size * scfg.seq_len,
                   "steps": steps, "pruning": pruning, "pruned": pruned_metrics,
                   "distilled": {"val_loss": kd.val_loss, "kl": kd.kl_after}}
            if rank == 0:
                _save_model(student, data_dir, rdir / "student")
                atomic_write_text(done, json.dumps(row, indent=2))
            barrier()
            rounds.append(row)
    report = {"teacher": str(teacher_dir), "teacher_params": total, "teacher_val_loss": teacher_loss,
              "target_params": target, "config": dataclasses.asdict(scfg), "rounds": rounds,
              "final": {"params": rounds[-1]["params"], "ratio": rounds[-1]["params"] / total,
                        "shape": rounds[-1]["shape"], "val_loss": rounds[-1]["distilled"]["val_loss"],
                        "kl": rounds[-1]["distilled"]["kl"],
                        "tokens": sum(r["tokens"] for r in rounds),
                        "candidate_tokens": sum(len(r["pruning"]["candidates"]["rows"]) * r["pruning"]["candidates"][
                            "tokens"] for r in rounds if "candidates" in r["pruning"])},
              "seconds": time.perf_counter() - t_start}
    model_dir = out / "model"
    if rank == 0:
        report["artifacts"] = _export(student, data_dir, out)
        atomic_write_text(out / "report.json", json.dumps(report, indent=2))
        atomic_write_text(out / "report.md", report_markdown(report))
        _figure(report, out / "shrink.png")
    barrier()
    return ShrinkResult(report, model_dir, out, student)


def _train_config(scfg: ShrinkConfig, data_dir: Path, folder: Path, steps: int, seed: int, main: bool):
    """One distillation of a round (the main one, or a candidate's short one: same seed, same batches)."""
    from pocketlm.train.config import TrainConfig

    return TrainConfig(data_dir=str(data_dir), out_dir=str(folder), seq_len=scfg.seq_len, batch_size=scfg.batch_size,
                       steps=steps, lr=scfg.lr, schedule="cosine", warmup_steps=min(20, steps // 10),
                       eval_every=max(steps // 4, 1), ckpt_every=max(steps // 4, 1), eval_windows=scfg.eval_windows,
                       seed=seed, progress=scfg.progress and main, threads=scfg.threads)


def _pick_candidate(res, pruning: dict[str, Any], distil: Callable, folder: Path, tokens: int,
                    val_loss: Callable) -> tuple[Any, dict[str, Any]]:
    """Distil a copy of each of `res.top` briefly (`distil(model, folder) -> DistillResult`); return the
    pruned model of the one with the lowest validation loss after it, and `pruning` updated to that
    choice with the candidates' table (proxy KL, loss before and after the short distillation)."""
    rows = []
    for j, (shape, _, model) in enumerate(res.top):
        kd = distil(copy.deepcopy(model), folder / f"c{j + 1}")
        ranked = res.ranking[j]  # ranking and top share one order (KL, then candidate order)
        rows.append({"proxy_rank": j + 1, "shape": str(shape), "params": ranked["params"], "kl": ranked.get("kl"),
                     "val_loss_pruned": val_loss(model), "val_loss": kd.val_loss, "kl_after": kd.kl_after})
    by_loss = sorted(range(len(rows)), key=lambda j: (rows[j]["val_loss"], j))
    best = by_loss[0]
    shape, plan, model = res.top[best]
    pruning = {**pruning, "shape": shape.to_dict(), "kept_layers": plan.layers,
               "params_after": rows[best]["params"], "ratio": rows[best]["params"] / res.params_before,
               "candidates": {"tokens": tokens, "chosen": best + 1, "ranking_changed": by_loss != sorted(by_loss),
                              "order_after": [j + 1 for j in by_loss], "rows": rows}}
    return model, pruning


def _save_model(model, data_dir: Path, folder: Path) -> None:
    from pocketlm.train.fixtures import export_model_dir

    export_model_dir(model, data_dir, folder)


def _export(student, data_dir: Path, out: Path) -> dict[str, str]:
    """The final student as a pocketlm folder, a Hugging Face folder and (when the exporter takes it) GGUF."""
    from pocketlm.data.tokenizer import TextTokenizer
    from pocketlm.interop import save_hf

    _save_model(student, data_dir, out / "model")
    arts = {"model": str(out / "model")}
    save_hf(student, out / "hf")
    TextTokenizer.load(Path(data_dir) / "tokenizer.json").save(out / "hf")
    arts["hf"] = str(out / "hf")
    try:
        from pocketlm.export.gguf import export_gguf

        export_gguf(student, out / "model.gguf", qtype="F16", tokenizer_json=Path(data_dir) / "tokenizer.json")
        arts["gguf"] = str(out / "model.gguf")
    except Exception as e:  # noqa: BLE001 - GGUF is an extra; say why it is missing
        arts["gguf_error"] = f"{type(e).__name__}: {e}"
    return arts


def report_markdown(report: dict[str, Any]) -> str:
    lines = ["# pocketlm shrink", "",
             f"Teacher `{report['teacher']}`: {report['teacher_params']:,} parameters, validation loss "
             f"{report['teacher_val_loss']:.4f}. Target {report['target_params']:,} parameters.", "",
             "| round | shape | params | tokens | val loss pruned | val loss distilled | KL pruned | KL distilled |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["rounds"]:
        lines.append(f"| {r['round']} | {r['shape']} | {r['params']:,} | {r['tokens']:,} | {r['pruned']['val_loss']:.4f} "
                     f"| {r['distilled']['val_loss']:.4f} | {r['pruned']['kl']:.4f} | {r['distilled']['kl']:.4f} |")
    for r in report["rounds"]:
        ranking = r["pruning"].get("ranking", [])
        if len(ranking) > 1:
            lines += ["", f"Round {r['round']}: candidate shapes ranked by KL to the unpruned model right after pruning",
                      "", "| shape | params | KL |", "|---|---|---|"]
            lines += [f"| {c['shape']} | {c['params']:,} | {c['kl']:.4f} |" for c in ranking]
        cands = r["pruning"].get("candidates")
        if cands:
            lines += ["", f"Round {r['round']}: the top {len(cands['rows'])} distilled briefly ({cands['tokens']:,} "
                      "tokens each); the lowest validation loss afterwards is kept", "",
                      "| proxy rank | shape | params | proxy KL | val loss pruned | val loss after | chosen |",
                      "|---|---|---|---|---|---|---|"]
            lines += [f"| {c['proxy_rank']} | {c['shape']} | {c['params']:,} | {c['kl']:.4f} | "
                      f"{c['val_loss_pruned']:.4f} | {c['val_loss']:.4f} | {'yes' if c['proxy_rank'] == cands['chosen'] else ''} |"
                      for c in cands["rows"]]
            order = ", ".join(map(str, cands["order_after"]))
            lines += ["", "The short distillation " + ("changed the ranking" if cands["ranking_changed"] else
                                                       "kept the proxy's ranking") + f" (proxy ranks by loss after it: "
                      f"{order}); " + ("the proxy's best is kept." if cands["chosen"] == 1 else
                                       f"proxy rank {cands['chosen']} replaces the proxy's best.")]
    f = report["final"]
    lines += ["", f"Final: {f['shape']}, {f['params']:,} parameters ({f['ratio']:.2f}x), validation loss "
              f"{f['val_loss']:.4f}, KL to the teacher {f['kl']:.4f}, {f['tokens']:,} distillation tokens."]
    return "\n".join(lines) + "\n"


def _figure(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values = ["teacher"], [report["teacher_val_loss"]]
    for r in report["rounds"]:
        labels += [f"r{r['round']} pruned", f"r{r['round']} distilled"]
        values += [r["pruned"]["val_loss"], r["distilled"]["val_loss"]]
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    ax.bar(labels, values, color=["tab:gray"] + ["tab:red", "tab:blue"] * len(report["rounds"]))
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"shrink to {report['final']['ratio']:.2f}x parameters, {report['final']['tokens']:,} tokens",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
