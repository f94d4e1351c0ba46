"""Where one decode step's time goes: torch.profiler over pocketlm decode steps, beside llama.cpp's ms/token.

SmolLM-135M-shaped random weights (tied head), batch 1, a 64-token context. Per precision
(fp32 / bf16 / int8 / int4, the automatic kernel choice), prints the step's wall ms, the number of
ops it launches, and the ops that take the most self time; then llama.cpp's decode ms/token on the
same weights at the matching GGUF type (F32 / F16 / Q8_0 / Q4_0), measured in the same process.

    python benchmarks/profile_decode_step.py [--threads 2] [--precisions fp32,bf16,int8,int4] [--steps 16]
                                             [--compiled]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from pocketlm.runtime import open_model

GGUF = {"fp32": "F32", "bf16": "F16", "int8": "Q8_0", "int4": "Q4_0"}
MODEL = "SmolLM-135M"


def step_ms(step, n: int) -> float:
    """Median ms of `n` decode steps (`step()` returns nothing; it decodes one token)."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


def op_table(step, steps: int, top: int) -> tuple[int, list[tuple[str, float, int]]]:
    """(ops launched per step, [(op, self ms per step, calls per step)] of the `top` slowest)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    rows = defaultdict(lambda: [0.0, 0])
    total_calls = 0
    for e in prof.key_averages():
        if e.key.startswith("ProfilerStep"):
            continue
        rows[e.key][0] += e.self_cpu_time_total / 1e3 / steps
        rows[e.key][1] += e.count / steps
        total_calls += e.count
    table = sorted(((k, round(v[0], 3), round(v[1], 1)) for k, v in rows.items()), key=lambda r: -r[1])
    return round(total_calls / steps), table[:top]


def pocketlm_step(precision: str, depth: int, compiled: bool):
    """A `step()` decoding one token of the automatic choice's model after `depth` tokens (eager or compiled)."""
    from pocketlm.model.flat_decode import FlatDecoder

    model = open_model(MODEL, precision, pack=None)
    run = FlatDecoder(model, compile=True) if compiled else model
    cache = run.new_cache(1, depth + 256)
    tok = torch.tensor([[1]])
    with torch.inference_mode():
        run(torch.randint(0, model.config.vocab_size, (1, depth)), cache=cache, last_only=True)

    def step() -> None:
        with torch.inference_mode():
            run(tok, cache=cache, last_only=True)
        if cache.length > depth + 200:
            cache.length = depth

    return model, step


def llama_ms(precision: str, threads: int, depth: int, n: int) -> float | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    from pocketlm.export.gguf import export_gguf

    qtype = GGUF[precision]
    with tempfile.TemporaryDirectory() as d:
        base = open_model(MODEL, "fp32" if qtype == "F32" else "bf16")
        path = export_gguf(base, Path(d) / f"m-{qtype}.gguf", qtype, threads=threads)
        del base
        llm = llama_cpp.Llama(str(path), n_ctx=depth + n + 8, n_batch=depth + n + 8, n_threads=threads,
                              n_threads_batch=threads, use_mmap=True, verbose=False, seed=0)
        llm.eval(list(range(1, depth + 1)))
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            llm.eval([int(llm.scores[llm.n_tokens - 1].argmax())])
            times.append(time.perf_counter() - t0)
        llm.close()
    return sorted(times)[len(times) // 2] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precisions", default="fp32,bf16,int8,int4")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--depth", type=int, default=64)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--compiled", action="store_true", help="profile the compiled flat decode step too")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    report = {}
    for precision in args.precisions.split(","):
        _, step = pocketlm_step(precision, args.depth, compiled=False)
        for _ in range(4):
            step()
        ms = step_ms(step, args.steps)
        n_ops, table = op_table(step, args.steps, args.top)
        r = {"eager_ms": round(ms, 2), "ops_per_step": n_ops, "top_ops": table}
        if args.compiled:
            _, cstep = pocketlm_step(precision, args.depth, compiled=True)
            for _ in range(4):
                cstep()
            r["compiled_ms"] = round(step_ms(cstep, args.steps), 2)
            r["compiled_ops_per_step"], r["compiled_top_ops"] = op_table(cstep, args.steps, args.top)
        r["llamacpp_ms"] = llama_ms(precision, args.threads, args.depth, args.steps)
        report[precision] = r
        print(f"{precision}: eager {r['eager_ms']} ms/step, {n_ops} ops/step"
              + (f", compiled {r['compiled_ms']} ms" if args.compiled else "")
              + f" | llama.cpp {GGUF[precision]} {r['llamacpp_ms'] and round(r['llamacpp_ms'], 2)} ms", flush=True)
        for name, ms_, calls in table:
            print(f"    {ms_:8.3f} ms  {calls:6.1f}x  {name}")
    print(json.dumps({"threads": args.threads, "depth": args.depth, "torch": torch.__version__, "results": report}))


if __name__ == "__main__":
    main()
