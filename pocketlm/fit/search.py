"""The fit driver: enumerate, predict, score, measure, choose, write.

1. every candidate of the space is *predicted* by the cost model, calibrated on anchor measurements
   (the largest and smallest formats and the two "everything in one type" baselines);
2. predicted misses beyond `margin` are discarded unmeasured;
3. quality (KL to the original, perplexity) is scored in this process on a quarter of the held-out tokens,
   then on all of them for the candidates that survive a halving by dominance (not dominated on
   rung-0 quality x predicted cost); tasks (`quality=("arc_easy", ...)`) run only on the measured front;
4. the survivors are *measured* in a fresh process each (`profile.runner.run_setting`); candidates whose
   runtime cost cannot differ (same architecture and format: zeros are stored densely) share one
   measurement;
5. the front is taken on measured records; the best that fits is written as an artifact and re-measured.

Every measurement and score is a SQLite row committed as it completes (`store.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pocketlm.fit.budget import Budget
from pocketlm.fit.config import FitConfig
from pocketlm.fit.candidates import BUILDERS, BuildContext, Candidate, build_weights, format_axis, parse_axes, space
from pocketlm.fit.costmodel import CostModel, features, relative_error
from pocketlm.fit.pareto import front
from pocketlm.fit.store import Store, fingerprint

BASELINES = {"torch": ("int8", "int4"), "llamacpp": ("Q8_0", "Q4_K_M")}
STORE_NAME = "fit.sqlite"


@dataclass
class Record:
    """Everything known about one candidate."""

    candidate: Candidate
    predicted: dict = field(default_factory=dict)
    measured: dict | None = None
    quality: dict | None = None
    rung: int = -1  # last quality rung reached
    tasks: dict | None = None
    status: str = "considered"
    misses: list[str] = field(default_factory=list)
    baseline: bool = False
    estimate: float | None = None  # the screen's additive KL estimate (large spaces only)

    @property
    def key(self) -> str:
        return self.candidate.key

    def cost(self) -> dict:
        return self.measured or self.predicted

    def point(self) -> tuple[float, float, float]:
        c = self.cost()
        return (self.quality["kl_mean"], c["decode_ms"], c["memory_bytes"])

    def to_dict(self) -> dict:
        return {"candidate": self.key or "(original)", "steps": self.candidate.to_dict()["steps"],
                "status": self.status, "baseline": self.baseline, "predicted": self.predicted,
                "measured": self.measured, "quality": self.quality, "rung": self.rung, "tasks": self.tasks,
                "kl_estimate": self.estimate,
                "misses": self.misses,
                "prediction_error": relative_error(self.predicted, self.measured) if self.measured else None}


def _say(progress: bool, text: str) -> None:
    if progress:
        from rich.console import Console

        Console(stderr=True).print(text)


class Fit:
    """One run of `fit()`; holds the reference model, the store and the records."""

    def __init__(self, cfg: FitConfig, out_dir: Path, progress: bool):
        from pocketlm.runtime import open_model, open_tokenizer, resolve

        self.cfg, self.out, self.progress = cfg, out_dir, progress
        if cfg.threads:  # the in-process scoring too: oversubscribed OpenMP threads spin on a busy machine
            torch.set_num_threads(cfg.threads)
        self.ref = resolve(cfg.model)
        self.base_cfg = self.ref.config
        if cfg.context > self.base_cfg.max_seq_len or cfg.prompt > self.base_cfg.max_seq_len:
            raise ValueError(f"--context {cfg.context} / --prompt {cfg.prompt} exceed the model's context length "
                             f"{self.base_cfg.max_seq_len}; lower them")
        if cfg.distill_tokens < 0:
            raise ValueError(f"--distill-tokens {cfg.distill_tokens}: give 0 (prune only) or a positive token count")
        if cfg.gen >= cfg.context:
            raise ValueError(f"--gen {cfg.gen} must be below --context {cfg.context}")
        from pocketlm.model import costs

        cfg.budget.check_model(costs.kv_cache_bytes(self.base_cfg, cfg.context, 2), cfg.context)
        self.axes = parse_axes(cfg.candidates, cfg.runtime)
        self.notes: list[str] = []
        self._check_structured()
        self.fmt = format_axis(cfg.runtime)
        for b in BASELINES[cfg.runtime]:  # the by-hand baselines are always in the space
            if b not in self.axes[self.fmt.name]:
                self.axes[self.fmt.name] = self.axes[self.fmt.name] + (b,)
        self.records = {c.key: Record(c) for c in space(self.axes)}
        for r in self.records.values():
            r.baseline = r.candidate.weights_key == "dense" and r.candidate.format[1] in BASELINES[cfg.runtime]
        self.store = Store(out_dir / STORE_NAME)
        self.model_fp = fingerprint(self._model_identity(), cfg.seed)
        self.ref_model = open_model(self.ref, "fp32", seed=cfg.seed)
        self.tokenizer = open_tokenizer(self.ref)
        self.scratch = out_dir / ".scratch"
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.ctx = BuildContext(calib=None, tokenizer=self.tokenizer, threads=cfg.threads or None,
                                scratch=self.scratch, calibrate=self._calib, distill_tokens=cfg.distill_tokens,
                                distill_windows=self._distill_windows)
        self.heldout = self._heldout()
        self.measurements_run = 0
        self._weights_cache: dict[str, Any] = {}
        self._ref_logprobs: list[torch.Tensor] | None = None
        self.stage_seconds: dict[str, float] = {}  # where this run's time went (report: `stage_seconds`)
        self.files_written = 0
        self._check_settings()

    @contextlib.contextmanager
    def timed(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + time.perf_counter() - t0

    # ---- inputs --------------------------------------------------------------------------------------

    def _model_identity(self) -> dict:
        ident = {"ref": self.ref.text, "kind": self.ref.kind, "config": self.base_cfg.to_dict()}
        if self.ref.path is not None and self.ref.path.is_dir():
            ident["files"] = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime))
                                    for f in self.ref.path.iterdir() if f.is_file())
        return ident

    def _heldout(self) -> torch.Tensor:
        from pocketlm.compress.calibration import encode_text
        from pocketlm.compress.prune.checkpoint import DEFAULT_EVAL_TEXT

        need = self.cfg.tokens + self.cfg.window
        if self.tokenizer is not None:
            ids = torch.tensor(encode_text(self.tokenizer, DEFAULT_EVAL_TEXT.read_text()))
            if ids.numel() >= need:
                return ids[:self.cfg.tokens]
        g = torch.Generator().manual_seed(self.cfg.seed + 1)
        self.random_tokens = True
        return torch.randint(0, self.base_cfg.vocab_size, (self.cfg.tokens,), generator=g)

    def _check_structured(self) -> None:
        """Structured pruning needs a sliceable model: asked for, refuse clearly; by default, leave it out."""
        from pocketlm.compress.structured.importance import StructuredError, check_sliceable

        if self.axes.get("prune_structured", ("none",)) == ("none",):
            return
        try:
            check_sliceable(self.base_cfg)
        except StructuredError as e:
            if "prune_structured" in (self.cfg.candidates or ""):
                raise
            self.axes["prune_structured"] = ("none",)
            self.notes.append(f"No structured-pruning candidates: {e}")

    def _distill_windows(self, n: int, length: int) -> torch.Tensor:
        """Distillation windows from the calibration source (never the held-out text), seeded apart."""
        from pocketlm.compress.calibration import CalibSpec, calibration_batches

        source = CalibSpec.parse(self.cfg.calib).source
        if self.tokenizer is not None:
            return calibration_batches(CalibSpec(source, n, length), self.tokenizer, seed=self.cfg.seed + 3)[0]
        g = torch.Generator().manual_seed(self.cfg.seed + 3)
        return torch.randint(0, self.base_cfg.vocab_size, (n, length), generator=g)

    def _calib(self) -> torch.Tensor:
        if self.ctx.calib is None:
            from pocketlm.compress.calibration import CalibSpec, calibration_batches

            spec = CalibSpec.parse(self.cfg.calib, default_seq_len=min(128, self.base_cfg.max_seq_len))
            if self.tokenizer is not None:
                self.ctx.calib = calibration_batches(spec, self.tokenizer, seed=self.cfg.seed)[0]
            else:  # random-weight architecture: random tokens are as good as any text
                g = torch.Generator().manual_seed(self.cfg.seed + 2)
                self.ctx.calib = torch.randint(0, self.base_cfg.vocab_size, (spec.n, spec.seq_len), generator=g)
        return self.ctx.calib

    def setting(self, fmt_value: str, model: str | None = None):
        from pocketlm.profile.setting import Setting

        c = self.cfg
        target = model or (str(self.ref.path) if self.ref.kind in ("checkpoint", "config") else self.ref.text)
        return Setting(model=target, backend=c.runtime, dtype=self.fmt.dtype(fmt_value), threads=c.threads,
                       prompts=(c.prompt,), gen=c.gen, depths=(c.context - c.gen,), repeat=c.repeat, warmup=1,
                       skip_unsupported=True, pack=True, seed=c.seed)

    def _check_settings(self) -> None:
        from pocketlm.profile.runner import validate

        validate([self.setting(v) for v in self.axes[self.fmt.name]])

    # ---- measuring -----------------------------------------------------------------------------------

    def _cost_group(self, cand: Candidate) -> str:
        """Candidates with the same architecture and runtime format cost the same to run: zeros are stored
        densely, and GPTQ's / AWQ's codes fill the very tensors RTN's do (`int4-gptq` runs as `int4`)."""
        axis, value = cand.format
        return fingerprint(cand.config(self.base_cfg).to_dict(), (axis, self.fmt.dtype(value)))

    def measure(self, rec: Record) -> dict:
        """The candidate's measured cost, from the store or a fresh worker process."""
        from pocketlm.profile.runner import run_setting

        cand = rec.candidate
        fmt_value = cand.format[1]
        changed = cand.config(self.base_cfg) != self.base_cfg
        target = None
        if changed:  # a new architecture: measure the saved folder of the built float model
            target = self._weights_dir(cand)
            if not (target / "pocketlm.json").is_file():
                self._weights(cand)  # builds and saves it
        setting = self.setting(fmt_value, str(target) if target else None)
        key = fingerprint(self.model_fp, self._cost_group(cand), _protocol(setting))
        hit = self.store.get("measure", key)
        if hit is None:
            file = self.runtime_file(cand)  # the very file the candidate's quality is scored on
            if file is not None:
                setting = dataclasses.replace(setting, gguf_file=str(file))
            _say(self.progress, f"  measuring [bold]{cand.key}[/] in a fresh process")
            with self.timed("measure (fresh processes)"):
                result = run_setting(setting)
            hit = self.store.put("measure", key, summarize_measurement(result, self.cfg))
            self.measurements_run += 1
        rec.measured = dict(hit)
        if "weights_bytes" in (rec.quality or {}):  # torch: the saved tensors of this very candidate
            rec.measured["disk_bytes"] = rec.quality["weights_bytes"]
        return rec.measured

    # ---- building and scoring ------------------------------------------------------------------------

    def _distilled(self, cand: Candidate) -> tuple:
        """The distillation budget when it shapes this candidate's weights (structured steps only), else ()."""
        pruned = any(a == "prune_structured" and v != "none" for a, v in cand.weights)
        return ("distill", self.cfg.distill_tokens) if pruned and self.cfg.distill_tokens else ()

    def _build_key(self, cand: Candidate) -> str:
        """What a built float model depends on: the model, its weights steps, calibration and distillation."""
        return fingerprint(self.model_fp, cand.weights_key, self.cfg.calib, self.cfg.seed, *self._distilled(cand))

    def _weights_dir(self, cand: Candidate) -> Path:
        return self.scratch / f"weights-{self._build_key(cand)}"

    def _weights(self, cand: Candidate):
        """The candidate's float model. Built once and saved under .scratch (a rerun, or a later step,
        loads it instead of pruning and distilling again); two kept in memory (135M: 0.5 GB each)."""
        wk = cand.weights_key
        if wk == "dense":
            return self.ref_model
        if wk not in self._weights_cache:
            from pocketlm.interop import load_model, save_native

            folder = self._weights_dir(cand)
            if (folder / "pocketlm.json").is_file():
                model = load_model(folder).float().eval()
            else:
                steps = [(a, v) for a, v in cand.weights if v != "none"]
                base = self.ref_model
                if len(steps) > 1:  # the built prefix (pruned and distilled), then only the last step
                    base = self._weights(Candidate(tuple(steps[:-1]) + (cand.format,)))
                    cand = Candidate((steps[-1], cand.format))
                _say(self.progress, f"  building [bold]{wk}[/]")
                with self.timed("build weights"):
                    model = build_weights(base, cand, self.ctx).eval()
                    save_native(model, folder)
            while len(self._weights_cache) >= 2:
                self._weights_cache.pop(next(iter(self._weights_cache)))
            self._weights_cache[wk] = model
        return self._weights_cache[wk]

    def runtime_file(self, cand: Candidate) -> Path | None:
        """The candidate's runtime weights file (GGUF), written once under .scratch and reused by every
        quality rung, the cost measurement and the artifact (a rerun or a second budget finds it there);
        None for a format without one (torch). Written atomically: a killed build leaves no file."""
        axis, value = cand.format
        builder = BUILDERS[axis]
        if builder.file is None:
            return None
        path = self.scratch / f"{axis}-{self._build_key(cand)}-{value}{builder.file_suffix}"
        if not path.is_file():
            _say(self.progress, f"  writing the {builder.file_suffix.lstrip('.').upper()} file of [bold]{cand.key}[/]")
            weights = self._weights(cand)
            with self.timed("write runtime files"):
                builder.file(weights, value, path, self.ctx)
            self.files_written += 1
        return path

    def _file_kwargs(self, cand: Candidate) -> dict:
        file = self.runtime_file(cand)
        return {"file": file} if file is not None else {}

    def emulated(self, cand: Candidate):
        axis, value = cand.format
        file, weights = self._file_kwargs(cand), self._weights(cand)
        with self.timed("emulate (load for scoring)"):
            return BUILDERS[axis].emulate(weights, value, self.ctx, **file)

    def reference_logprobs(self) -> list[torch.Tensor] | None:
        """The original's log-probabilities on every held-out window, computed once and shared by every
        score (None when they would take more than ~1.5 GB: each score then runs the original again)."""
        if self._ref_logprobs is None:
            windows = self.cfg.tokens // self.cfg.window
            if windows * self.cfg.window * self.base_cfg.vocab_size * 4 > 1.5e9:
                return None
            from pocketlm.compress.measure import window_logprobs

            with torch.inference_mode(), self.timed("score"):
                self._ref_logprobs = window_logprobs(self.ref_model, self.heldout, self.cfg.window)
        return self._ref_logprobs

    def score(self, rec: Record, rung: int) -> dict:
        from pocketlm.compress.measure import compare_on_tokens

        n = self.cfg.tokens if rung else max(self.cfg.tokens // 4, self.cfg.window)
        key = fingerprint(self.model_fp, rec.key, n, self.cfg.window, self.cfg.calib, self.cfg.seed,
                          *self._distilled(rec.candidate))
        hit = self.store.get("quality", key)
        if hit is None:
            model = self.emulated(rec.candidate)
            with torch.inference_mode(), self.timed("score"):
                hit = compare_on_tokens(self.ref_model, model, self.heldout[:n], self.cfg.window,
                                        dense_logprobs=self.reference_logprobs())
            if self.cfg.runtime == "torch":
                from pocketlm.profile.memory import tensor_bytes

                hit["weights_bytes"] = tensor_bytes(model)
            del model
            hit = self.store.put("quality", key, hit)
        rec.quality, rec.rung = hit, rung
        return hit

    def score_tasks(self, rec: Record, tasks: tuple[str, ...]) -> dict:
        from pocketlm.evaluate.runner import evaluate, primary_metric

        key = fingerprint(self.model_fp, rec.key, tasks, self.cfg.task_limit)
        hit = self.store.get("tasks", key)
        if hit is None:
            if self.tokenizer is None:
                raise ValueError(f"--quality {','.join(tasks)}: {self.ref.name} has no tokenizer; score by kl/ppl")
            out = evaluate(self.emulated(rec.candidate), self.tokenizer, list(tasks), limit=self.cfg.task_limit,
                           show_progress=False)
            hit = {}
            for task, by_shot in out["results"].items():
                metrics = next(iter(by_shot.values()))["metrics"]
                name = primary_metric(metrics)
                hit[task] = {"metric": name, "value": metrics.get(name)}
            hit = self.store.put("tasks", key, hit)
        rec.tasks = hit
        return hit


def summarize_measurement(result: dict, cfg: FitConfig) -> dict:
    """The costs fit compares, from one profile worker result."""
    pre = result["prefill"][0]
    dec = result["decode"][0]
    return {"decode_ms": dec["median_ms"], "decode_tok_s": dec["tok_s"], "decode_iqr_ms": dec["iqr_ms"],
            "prefill_ms": pre["median_ms"], "memory_bytes": result["memory"]["rss_growth_bytes"],
            "peak_rss_bytes": result["run_peak_rss_bytes"], "disk_bytes": result["memory"]["weights_bytes"],
            "weights_bytes": result["memory"]["weights_bytes"], "threads": result["setting"]["threads"],
            "wall_s": result.get("wall_s")}


def _protocol(setting) -> dict:
    """What a measurement's key holds of its setting: the protocol, not where the weights are (the
    model's path or the GGUF file timed), so candidates of one cost group share it and a moved folder
    still resumes."""
    d = dataclasses.replace(setting, model="").to_dict()
    d.pop("gguf_file", None)
    return d


def _relaxed(budget: Budget, margin: float) -> Budget:
    """The budget loosened by `margin`: what the cost model must miss before a candidate goes unmeasured."""
    scale = lambda v, up: None if v is None else (v * (1 + margin) if up else v / (1 + margin))  # noqa: E731
    return Budget(max_memory_bytes=scale(budget.max_memory_bytes, True),
                  min_decode_tok_s=scale(budget.min_decode_tok_s, False),
                  max_disk_bytes=scale(budget.max_disk_bytes, True), max_prefill_ms=scale(budget.max_prefill_ms, True))


def fit(cfg: FitConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Run the fit; write the artifact and reports into `out_dir`; return the report dict."""
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = Fit(cfg, out, progress)
    try:
        report = _search(run)
    finally:
        run.store.close()
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    from pocketlm.fit.report import write_reports

    write_reports(report, out)
    return report


def _search(run: Fit) -> dict:
    cfg, budget = run.cfg, run.cfg.budget
    recs = run.records
    fmt_values = run.axes[run.fmt.name]

    def runtime_format(rec: Record) -> str:  # what the runtime runs: `int4-gptq` -> `int4`
        return run.fmt.dtype(rec.candidate.format[1])

    def feats(rec: Record) -> dict:
        v = runtime_format(rec)
        arch = rec.candidate.config(run.base_cfg)
        return features(arch, run.fmt.bits(v, arch), cfg.runtime, v, cfg.context, cfg.context - cfg.gen, cfg.prompt)

    # 1. anchors: the dense model at the widest and narrowest formats and the baselines
    dense = [r for r in recs.values() if r.candidate.weights_key == "dense"]
    by_bits = sorted(dense, key=lambda r: run.fmt.bits(r.candidate.format[1]))
    anchors = {r.key: r for r in [by_bits[-1], by_bits[0]] + [r for r in dense if r.baseline]}
    _say(run.progress, f"fit: {len(recs)} candidates; calibrating the cost model on {len(anchors)} anchors")
    for r in anchors.values():
        run.measure(r)
    model = CostModel.fit([(r.key, feats(r), r.measured) for r in anchors.values()],
                          [runtime_format(r) for r in anchors.values()])

    anchor_groups = {run._cost_group(r.candidate) for r in anchors.values()}

    # 2. predict every candidate; discard clear misses
    relaxed = _relaxed(budget, cfg.margin)
    for r in recs.values():
        r.predicted = model.predict(feats(r), runtime_format(r))
        if relaxed.misses(r.predicted) and r.key not in anchors:
            r.status, r.misses = "discarded by the cost model", budget.misses(r.predicted)
    alive = [r for r in recs.values() if r.status != "discarded by the cost model"]
    _say(run.progress, f"fit: {len(recs) - len(alive)} discarded by the cost model; scoring {len(alive)}")

    # 3. quality, rung 0 on everything alive (or, in a large space, on what the additive screen keeps);
    #    rung 1 on the rung-0 front (predicted cost) and the baselines
    rung0 = screen(run, alive) if len(alive) > cfg.screen_above else alive
    for r in rung0:
        run.score(r, 0)
    feasible0 = {r.key: r.point() for r in rung0 if not budget.misses(r.cost())} or {r.key: r.point() for r in rung0}
    promoted = set(front(feasible0)) | {r.key for r in rung0 if r.baseline}
    for r in rung0:
        if r.key in promoted:
            run.score(r, 1)
        else:
            r.status = "dominated at rung 0"

    # 4. measure the promoted best quality first until one fits: every later one has worse quality, so
    #    the choice is decided; when none fits, the rest of the alive ones by least predicted miss (capped)
    def settle(r: Record) -> bool:
        run.measure(r)
        r.misses = budget.misses(r.measured)
        r.status = "measured: fits" if not r.misses else "measured: misses the budget"
        return not r.misses

    for r in recs.values():
        if r.measured is not None:
            settle(r)
    metric = "ppl_after" if cfg.quality[:1] == ("ppl",) else "kl_mean"
    ranked = sorted((recs[k] for k in promoted), key=lambda r: r.quality[metric])
    best_fit = next((r for r in ranked if r.measured is not None and not r.misses), None)
    for r in ranked:
        if best_fit is not None and r.quality[metric] >= best_fit.quality[metric]:
            break
        if r.measured is None and settle(r):
            break
    if not any(r.status == "measured: fits" for r in recs.values()):
        waiting = sorted((r for r in alive if r.measured is None), key=lambda r: len(budget.misses(r.predicted)))
        for r in waiting[:cfg.max_extra_measurements]:
            run.score(r, 1)
            if settle(r):
                break

    if any(r.status == "measured: fits" for r in recs.values()):
        for r in ranked:
            if r.measured is None:
                r.status = "scored, not measured: a fitting candidate has lower KL"

    # 5. the front on measured records (rung 1 only: the same held-out tokens) and the choice
    measured = {r.key: r for r in recs.values() if r.measured is not None and r.rung == 1}
    fits = {k: r for k, r in measured.items() if not r.misses}
    front_keys = front({k: r.point() for k, r in fits.items()})
    tasks = tuple(q for q in cfg.quality if q not in ("kl", "ppl"))
    if tasks:
        for k in front_keys + [r.key for r in measured.values() if r.baseline]:
            run.score_tasks(recs[k], tasks)
    chosen = _choose([fits[k] for k in front_keys], cfg.quality)
    for k in front_keys:
        recs[k].status += " (front)"
    artifact = verify = None
    if chosen is not None:
        with run.timed("artifact"):
            artifact = write_artifact(run, chosen)
        with run.timed("re-measure the artifact"):
            verify = run_verify(run, chosen, artifact)
    nearest = [] if chosen is not None else _nearest(recs.values())
    n_cost_measured = sum(r.measured is not None for r in recs.values())
    screened = [r for r in recs.values() if r.estimate is not None]
    return {
        "format": "pocketlm.fit/1", "config": cfg.to_dict(), "model": run.ref.name,
        "budget": budget.describe(), "runtime": cfg.runtime, "axes": {k: list(v) for k, v in run.axes.items()},
        "cost_model": model.describe(), "candidates": [r.to_dict() for r in recs.values()],
        "front": front_keys, "chosen": chosen.key if chosen else None,
        "chosen_record": chosen.to_dict() if chosen else None, "artifact": artifact, "verify": verify,
        "baselines": [r.to_dict() for r in recs.values() if r.baseline],
        "nearest": nearest, "notes": run.notes + ([
            "The model has no tokenizer: quality is scored on seeded random token ids."]
            if getattr(run, "random_tokens", False) else []),
        "counts": {"considered": len(recs), "discarded_by_cost_model": len(recs) - len(alive),
                   "alive": len(alive), "scored": sum(r.quality is not None for r in recs.values()),
                   "screened_out": sum(r.status == SCREENED for r in recs.values()),
                   "promoted": len(promoted), "with_measured_cost": n_cost_measured,
                   "measurement_processes": run.store.count("measure"), "measured_this_run": run.measurements_run,
                   "store_hits": run.store.hits, "runtime_files_written": run.files_written},
        "stage_seconds": {k: round(v, 1) for k, v in run.stage_seconds.items()},
        "prediction_error": _error_summary(r for r in recs.values()
                                           if run._cost_group(r.candidate) not in anchor_groups),
        "screen_error": _screen_error(screened),
        "verify_prediction_error": relative_error(chosen.predicted, verify["measured"]) if verify else None,
        "format_values": list(fmt_values),
    }


SCREENED = "screened out (estimated KL x predicted cost dominated)"


def screen(run: Fit, alive: list[Record]) -> list[Record]:
    """Rung 0 for a large space: score each weights variant at the widest format and the dense model at each
    format (of the alive candidates), estimate every combination's KL as the sum of its parts' increments (KL(w + f) ~ KL(w + widest)
    + KL(dense + f) - KL(dense + widest): small perturbations add to first order), and keep for scoring
    the candidates on the first two Pareto layers of (estimated KL, predicted decode ms, predicted memory)
    among those predicted to fit (all alive when none is), plus the baselines."""
    budget, recs = run.cfg.budget, run.records
    variants = sorted({r.candidate.weights for r in alive})
    if len(variants) < 2:
        return alive
    fmt_values = sorted({r.candidate.format[1] for r in alive})  # only the parts an alive candidate uses
    widest = max(fmt_values, key=lambda v: run.fmt.bits(run.fmt.dtype(v)))

    def rec_of(weights: tuple, fmt: str) -> Record:
        return recs[Candidate(weights + ((run.fmt.name, fmt),)).key]

    dense = next(w for w in recs.values() if w.candidate.weights_key == "dense").candidate.weights
    probes = {rec_of(w, widest).key: rec_of(w, widest) for w in variants}
    probes.update({rec_of(dense, f).key: rec_of(dense, f) for f in fmt_values})
    for r in probes.values():
        run.score(r, 0)
    base = rec_of(dense, widest).quality["kl_mean"]
    for r in alive:
        w, f = r.candidate.weights, r.candidate.format[1]
        if r.key in probes:  # exact by construction: not an estimate
            continue
        r.estimate = max(rec_of(w, widest).quality["kl_mean"] + rec_of(dense, f).quality["kl_mean"] - base, 0.0)
    pool = [r for r in alive if not budget.misses(r.predicted)] or alive
    kl = {r.key: r.quality["kl_mean"] if r.key in probes else r.estimate for r in alive}
    points = {r.key: (kl[r.key], r.predicted["decode_ms"], r.predicted["memory_bytes"]) for r in pool}
    keep = set(front(points))
    keep |= set(front({k: p for k, p in points.items() if k not in keep}))
    keep |= {r.key for r in alive if r.baseline or r.key in probes}
    for r in alive:
        if r.key not in keep:
            r.status = SCREENED
    return [r for r in alive if r.key in keep]


def _screen_error(recs: list[Record]) -> dict | None:
    """How far the additive estimate was from the scored KL (rung 0 and 1 scores both count; the probes,
    exact by construction, are not estimates)."""
    pairs = [(r.estimate, r.quality["kl_mean"]) for r in recs if r.quality is not None]
    errs = sorted(abs(e - q) / max(q, 1e-9) for e, q in pairs if q > 0)
    if not errs:
        return None
    return {"median_rel": errs[len(errs) // 2], "max_rel": errs[-1], "n": len(errs)}


def _choose(front_recs: list[Record], quality: tuple[str, ...]) -> Record | None:
    """The best quality on the front: task mean when tasks were scored, else lowest KL; ties -> faster."""
    if not front_recs:
        return None

    def rank(r: Record):
        task_mean = None
        if r.tasks:
            vals = [t["value"] for t in r.tasks.values() if t["value"] is not None]
            task_mean = sum(vals) / len(vals) if vals else None
        metric = r.quality["ppl_after"] if quality[:1] == ("ppl",) else r.quality["kl_mean"]
        return (-(task_mean or 0.0), metric, r.cost()["decode_ms"])

    return min(front_recs, key=rank)


def _nearest(recs) -> list[dict]:
    """When nothing fits: the candidates that miss the fewest limits by the least, and what each misses."""
    def miss_amount(r: Record) -> float:
        return len(r.misses) * 10 + r.cost()["memory_bytes"] / 1e9

    pool = [r for r in recs if r.misses and r.quality is not None] or [r for r in recs if r.misses]
    return [{"candidate": r.key, "measured": r.measured is not None, "misses": r.misses}
            for r in sorted(pool, key=miss_amount)[:3]]


def _error_summary(recs) -> dict:
    errs = [relative_error(r.predicted, r.measured) for r in recs if r.measured]
    out = {}
    for k in ("decode_ms", "prefill_ms", "memory_bytes", "disk_bytes"):
        vals = sorted(abs(e[k]) for e in errs if k in e)
        if vals:
            out[k] = {"median_abs": vals[len(vals) // 2], "max_abs": vals[-1], "n": len(vals)}
    return out


def write_artifact(run: Fit, rec: Record) -> dict:
    """The chosen candidate's deployable files in out/model, built in a hidden folder and renamed into
    place (a killed run never leaves a `model/` that looks complete)."""
    final = run.out / "model"
    axis, value = rec.candidate.format
    tmp = Path(tempfile.mkdtemp(prefix=".model-", dir=run.out))
    try:
        info = BUILDERS[axis].write(run._weights(rec.candidate), value, tmp / "model", run.ctx,
                                    **run._file_kwargs(rec.candidate))
        old = None
        if final.exists():
            old = run.out / f".model-old-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp / "model", final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info = {k: v.replace(str(tmp / "model"), str(final)) if isinstance(v, str) else v for k, v in info.items()}
    files = [f for f in final.rglob("*") if f.is_file()]
    info["bytes"] = sum(f.stat().st_size for f in files)
    info["candidate"] = rec.key
    return info


def run_verify(run: Fit, rec: Record, artifact: dict) -> dict:
    """Re-measure the written artifact in a fresh process; does it still meet the budget?"""
    from pocketlm.profile.runner import run_setting

    setting = run.setting(rec.candidate.format[1], artifact["model_dir"])  # the dtype the checkpoint holds
    if "gguf" in artifact:  # the artifact's own GGUF file, timed as it is
        setting = dataclasses.replace(setting, gguf_file=artifact["gguf"])
    measured = summarize_measurement(run_setting(setting), run.cfg)
    weights = [Path(artifact["gguf"])] if "gguf" in artifact else list(Path(artifact["model_dir"]).glob("*.safetensors"))
    measured["disk_bytes"] = sum(f.stat().st_size for f in weights)
    return {"measured": measured, "misses": run.cfg.budget.misses(measured)}

