"""`evaluate()`: run task specs on a model and return (and write) results with per-example records."""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .backends import make_backend
from .metrics import aggregate, generation_scores, multiple_choice_scores
from .prompts import Example, build_examples, load_docs, resolve_data_dir
from .scorer import Scorer
from .sources import any_data_path
from .spec import TaskSpec, get_spec

PRIMARY = ("acc_norm", "mc2", "acc", "exact_match")  # the score a task contributes to its survey group
GROUP_TITLES = {"commonsense": "Commonsense reasoning", "problem_solving": "Problem solving", "math": "Mathematics",
                "language_modeling": "Language modelling"}


def primary_metric(metrics: dict[str, float]) -> str | None:
    for m in PRIMARY:
        if m in metrics:
            return m
    return None


def _prompt_hash(ex: Example) -> str:
    return hashlib.sha1(json.dumps(ex.requests).encode()).hexdigest()[:16]


def _word_count(text: str) -> int:
    import re
    return len(re.split(r"\s+", text))


def score_examples(spec: TaskSpec, examples: list[Example], scorer: Scorer,
                   progress: Callable[[int], None] | None = None) -> list[dict]:
    """Run the model on built examples; one record per example."""
    records = []
    otype = spec.output_type
    if otype in ("multiple_choice", "loglikelihood"):
        results = scorer.loglikelihood_groups([ex.requests for ex in examples], progress)
        for ex, res in zip(examples, results):
            lls = [r[0] for r in res]
            greedy = [r[1] for r in res]
            rec = {"doc_id": ex.doc_id, "prompt_sha": _prompt_hash(ex), "loglikelihoods": lls, "is_greedy": greedy}
            if otype == "multiple_choice":
                rec["label"] = ex.label if ex.labels is None else ex.labels
                rec["scores"] = multiple_choice_scores(ex, lls, spec.metrics)
            else:
                rec["loglikelihood"] = lls[0]
                rec["scores"] = {"acc": float(greedy[0])} if "acc" in spec.metrics else {}
            records.append(rec)
    elif otype == "loglikelihood_rolling":
        lls = scorer.loglikelihood_rolling([ex.target for ex in examples], progress)
        for ex, ll in zip(examples, lls):
            records.append({"doc_id": ex.doc_id, "prompt_sha": _prompt_hash(ex), "loglikelihood": ll,
                            "words": _word_count(ex.target), "bytes": len(ex.target.encode("utf-8")),
                            "tokens": len(scorer.tok.encode(ex.target)), "scores": {}})
    else:
        gen = spec.generation or {}
        outs = scorer.generate_until([ex.requests[0][0] for ex in examples], gen.get("until", []),
                                     int(gen.get("max_gen_toks", 256)), progress=progress)
        for ex, text in zip(examples, outs):
            scores, extracted = generation_scores(spec, ex, text)
            records.append({"doc_id": ex.doc_id, "prompt_sha": _prompt_hash(ex), "generation": text,
                            "extracted": extracted, "target": ex.target, "scores": scores})
    return records


def check_finite_scores(task: str, records: list[dict]) -> None:
    """Refuse to report a score computed from NaN/inf log-likelihoods (it would look like a real accuracy)."""
    bad = [r["doc_id"] for r in records
           if not all(math.isfinite(x) for x in r.get("loglikelihoods", [r.get("loglikelihood", 0.0)]))]
    if bad:
        raise ValueError(f"task {task}: {len(bad)} of {len(records)} documents got NaN/inf log-likelihoods "
                         f"(first: doc {bad[0]}); the model's outputs are not finite (broken weights, norm eps, "
                         "or fp16 overflow: try --precision fp32), so no score is reported")


def group_scores(results: dict[str, dict[str, dict]]) -> dict[str, dict[str, Any]]:
    """Survey groups (commonsense, problem solving, math): mean primary score per group and shot count."""
    groups: dict[str, dict[str, Any]] = {}
    for task, by_shot in results.items():
        for shots, res in by_shot.items():
            g = res.get("group", "other")
            metric = primary_metric(res["metrics"])
            if g in ("language_modeling", "other") or metric is None:
                continue
            entry = groups.setdefault(g, {}).setdefault(shots, {"tasks": {}, "score": None})
            entry["tasks"][task] = {"metric": metric, "value": res["metrics"][metric]}
    for g in groups.values():
        for entry in g.values():
            vals = [t["value"] for t in entry["tasks"].values()]
            entry["score"] = sum(vals) / len(vals)
    return groups


def evaluate(model: Any, tokenizer: Any, tasks: Sequence[str | TaskSpec], shots: Sequence[int] | None = (0,),
             limit: int | None = None, data_dir: str | Path | None = None, seed: int = 1234,
             batch_tokens: int = 1024, model_name: str = "model", output: str | Path | None = None,
             show_progress: bool = True, allow_any_data_path: bool = False) -> dict:
    """Evaluate `model` on `tasks` at every shot count (None: each task's default, lm-eval's num_fewshot);
    returns the results dict (also written to `output`). A task spec's data files must lie in the data
    folder or beside the spec unless `allow_any_data_path`."""
    with any_data_path(allow_any_data_path):
        return _evaluate(model, tokenizer, tasks, shots, limit, data_dir, seed, batch_tokens, model_name, output,
                         show_progress)


def _evaluate(model: Any, tokenizer: Any, tasks: Sequence[str | TaskSpec], shots: Sequence[int] | None,
              limit: int | None, data_dir: str | Path | None, seed: int, batch_tokens: int, model_name: str,
              output: str | Path | None, show_progress: bool) -> dict:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"--limit {limit!r}: must be a positive number of documents (omit it for all)")
    specs = [t if isinstance(t, TaskSpec) else get_spec(t) for t in tasks]
    root = resolve_data_dir(data_dir)
    scorer = Scorer(make_backend(model, tokenizer), tokenizer, batch_tokens=batch_tokens)
    if hasattr(model, "eval"):
        model.eval()
    results: dict[str, dict[str, dict]] = {}
    skipped: list[str] = []
    plan = []
    for spec in specs:
        docs, fs_docs = load_docs(spec, root)
        for k in (spec.num_fewshot,) if shots is None else shots:
            if k and spec.fewshot is None:
                skipped.append(f"{spec.task}@{k}-shot (zero-shot-only task)")
                continue
            plan.append((spec, k, build_examples(spec, docs, fs_docs, k, limit=limit, seed=seed)))
    total = sum(len(ex) for _, _, ex in plan)
    progress_ctx = _progress(total, show_progress)
    with progress_ctx as advance:
        for spec, k, examples in plan:
            t0 = time.perf_counter()
            records = score_examples(spec, examples, scorer, advance)
            check_finite_scores(spec.task, records)
            seconds = time.perf_counter() - t0
            results.setdefault(spec.task, {})[str(k)] = {
                "group": spec.group, "output_type": spec.output_type, "n": len(records),
                "metrics": aggregate(records, spec), "seconds": round(seconds, 3),
                "examples_per_s": round(len(records) / seconds, 3) if seconds > 0 else None,
                "records": records}
    out = {"format": "pocketlm.eval/1", "model": model_name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "config": {"shots": "task default" if shots is None else list(shots), "limit": limit, "seed": seed,
                      "data_dir": str(root)},
           "results": results, "groups": group_scores(results), "skipped": skipped}
    if output is not None:
        write_results(out, output)
    return out


def write_results(results: dict, path: str | Path) -> None:
    from pocketlm.utils import atomic_write_text
    atomic_write_text(path, json.dumps(results, indent=1))


def load_results(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} does not exist (write one with `pocketlm eval MODEL -o FILE`)")
    from pocketlm.utils import read_json

    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != "pocketlm.eval/1":
        raise ValueError(f"{path} is not a pocketlm eval results file (missing format 'pocketlm.eval/1')")
    return data


class _progress:
    """A rich progress bar over examples (a no-op when disabled)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.bar = total, enabled, None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.progress import Progress
        self.bar = Progress(transient=True)
        self.bar.start()
        task = self.bar.add_task("evaluating", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def summary_table(results: dict) -> str:
    """Markdown table: task, shots, n, primary metric ± stderr."""
    lines = ["| task | group | shots | n | metric | value | ± stderr |", "|---|---|---:|---:|---|---:|---:|"]
    for task, by_shot in results["results"].items():
        for k, res in by_shot.items():
            m = res["metrics"]
            metric = primary_metric(m) or next(iter(m), None)
            if metric is None:
                continue
            se = m.get(f"{metric}_stderr", float("nan"))
            lines.append(f"| {task} | {res['group']} | {k} | {res['n']} | {metric} | {m[metric]:.4f} | "
                         f"{se:.4f} |")
    return "\n".join(lines)
