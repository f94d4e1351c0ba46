"""Examples/s of pocketlm's evaluator vs lm-eval's HF backend on the same model, task and documents.

    python benchmarks/bench_eval.py [--hidden 320 --layers 6] [--n 40] [--threads 2]

Builds a random Llama with the MiniMind tokenizer (saved with transformers). For each (task, shots)
lm-eval 0.4.13 runs its shipped task YAML, unmodified but for the data location (an include-only
YAML pointing ``dataset_path: json`` at the bundled documents in Hugging Face schema), through its
evaluator as ``simple_evaluate`` runs it (without the environment report) with HFLM (batch size 8); pocketlm runs its built-in spec of the task (its
Transformer via load_model, prefix-shared scoring) and then the very same lm-eval YAML. All in one
process, one after the other; the ratio is lm-eval's time over pocketlm's. Per-example
log-likelihoods (max |diff|) and outcomes (acc, acc_norm disagreements) are checked so all three did
the same work.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402
import transformers as T  # noqa: E402

from pocketlm.evaluate.loading import count_parameters, load_for_eval  # noqa: E402
from pocketlm.evaluate.runner import evaluate  # noqa: E402
from pocketlm.evaluate.spec import get_spec  # noqa: E402
from pocketlm.evaluate.tiny import save_tiny_llama  # noqa: E402
from test_eval_parity import run_lm_eval, write_local_yaml  # noqa: E402  (shipped YAML, local data)

CASES = [("hellaswag", 0), ("arc_easy", 5), ("hellaswag", 5), ("piqa", 5), ("commonsense_qa", 5)]


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _records(res: dict, task: str) -> list[dict]:
    (by_shot,) = res["results"][task].values()
    return by_shot["records"]


def _agreement(samples: list[dict], records: list[dict]) -> tuple[float, int]:
    """(max |Δ loglik|, number of documents whose acc or acc_norm differs)."""
    diff, outcomes = 0.0, 0
    for s, rec in zip(samples, records):
        diff = max([diff] + [abs(r[0][0] - x) for r, x in zip(s["resps"], rec["loglikelihoods"])])
        outcomes += any(s[m] != rec["scores"][m] for m in ("acc", "acc_norm") if m in s)
    return diff, outcomes + abs(len(samples) - len(records))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=320)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--n", type=int, default=40, help="documents per task (bundled subsets hold 40)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        d = save_tiny_llama(root / "m", hidden=args.hidden, layers=args.layers, heads=4, init_std=0.05)
        hf = T.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        tok = T.AutoTokenizer.from_pretrained(d)
        pocket, ptok = load_for_eval(d)
        hflm = HFLM(pretrained=hf, tokenizer=tok, batch_size=8)
        yamls = {task: write_local_yaml(root, task) for task in {t for t, _ in CASES}}
        csqa = root / "pocket_data" / "eval" / "commonsense_qa"  # the built-in spec reads the same files
        csqa.mkdir(parents=True)
        for split in ("validation", "train"):
            (csqa / f"{split}.jsonl").write_text((root / "data" / "commonsense_qa" / f"{split}.jsonl").read_text())
        manager = TaskManager(include_path=str(root / "tasks"), include_defaults=False)
        print(f"model: random Llama, {count_parameters(hf) / 1e6:.1f}M params, vocab {len(tok)}; "
              f"torch threads {torch.get_num_threads()}; lm-eval {lm_eval.__version__}")
        print("| task | shots | n | lm-eval ex/s | pocketlm spec ex/s | ratio | pocketlm on the lm-eval YAML ex/s | "
              "ratio | max abs Δ loglik | outcome diffs |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        ratios = []
        for task, shots in CASES:
            (samples, _), t_lm = _timed(lambda: run_lm_eval(manager, hflm, task, shots, args.n))
            n = len(samples)
            data_dir = root / "pocket_data" if task == "commonsense_qa" else None
            spec_res, t_spec = _timed(lambda: evaluate(pocket, ptok, [get_spec(task)], shots=[shots], limit=args.n,
                                                       data_dir=data_dir, show_progress=False))
            yaml_res, t_yaml = _timed(lambda: evaluate(pocket, ptok, [str(yamls[task])], shots=[shots],
                                                       limit=args.n, show_progress=False))
            d1, o1 = _agreement(samples, _records(spec_res, task))
            d2, o2 = _agreement(samples, _records(yaml_res, task))
            ratios.append(t_lm / t_spec)
            print(f"| {task} | {shots} | {n} | {n / t_lm:.1f} | {n / t_spec:.1f} | {t_lm / t_spec:.2f}x | "
                  f"{n / t_yaml:.1f} | {t_lm / t_yaml:.2f}x | {max(d1, d2):.1e} | {o1 + o2} |")
        geo = 1.0
        for r in ratios:
            geo *= r
        print(f"geometric-mean speed-up (built-in specs): {geo ** (1 / len(ratios)):.2f}x (target >= 2x)")


if __name__ == "__main__":
    main()
