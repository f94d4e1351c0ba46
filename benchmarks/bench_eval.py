"""Examples/s of pocketlm's evaluator vs lm-eval's HF backend on the same model, task and subset.

    python benchmarks/bench_eval.py [--hidden 256 --layers 4] [--n 40] [--threads 2]

Builds a random ~10M-parameter Llama with the MiniMind tokenizer (saved with transformers), then
for each (task, shots): lm-eval (HFLM, batch size 8, its own task YAML on the same local documents)
and pocketlm (`evaluate`, its Transformer via load_model, prefix-shared scoring) in the same run,
and prints the speed ratio. Log-likelihoods are checked to agree (max |diff|) so both did the same work.
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
from test_eval_parity import _run_lm_eval  # noqa: E402  (lm-eval on its own YAML, same bundled docs)

CASES = [("hellaswag", 0), ("arc_easy", 5), ("hellaswag", 5), ("piqa", 5)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=320)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--n", type=int, default=40, help="documents per task (bundled subsets hold 40)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from lm_eval.models.huggingface import HFLM
    with tempfile.TemporaryDirectory() as tmp:
        d = save_tiny_llama(Path(tmp) / "m", hidden=args.hidden, layers=args.layers, heads=4, init_std=0.05)
        hf = T.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        tok = T.AutoTokenizer.from_pretrained(d)
        pocket, ptok = load_for_eval(d)
        hflm = HFLM(pretrained=hf, tokenizer=tok, batch_size=8)
        print(f"model: random Llama, {count_parameters(hf) / 1e6:.1f}M params, vocab {len(tok)}; "
              f"torch threads {torch.get_num_threads()}")
        print("| task | shots | n | lm-eval ex/s | pocketlm ex/s | ratio | max abs Δ loglik |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        ratios = []
        for task, shots in CASES:
            t0 = time.perf_counter()
            samples, _ = _run_lm_eval(task, shots, hflm, Path(tmp), args.n)
            t_lm = time.perf_counter() - t0
            t0 = time.perf_counter()
            res = evaluate(pocket, ptok, [get_spec(task)], shots=[shots], limit=args.n, show_progress=False)
            t_pl = time.perf_counter() - t0
            recs = res["results"][task][str(shots)]["records"]
            samples = sorted(samples, key=lambda s: s["doc_id"])
            diff = max(abs(r[0][0] - x) for s, rec in zip(samples, recs)
                       for r, x in zip(s["resps"], rec["loglikelihoods"]))
            ratio = t_lm / t_pl
            ratios.append(ratio)
            print(f"| {task} | {shots} | {args.n} | {args.n / t_lm:.1f} | {args.n / t_pl:.1f} | {ratio:.2f}x | "
                  f"{diff:.1e} |")
        geo = 1.0
        for r in ratios:
            geo *= r
        print(f"geometric-mean speed-up: {geo ** (1 / len(ratios)):.2f}x (target >= 2x)")


if __name__ == "__main__":
    main()
