"""Peak RSS of decode: pocketlm's default runtime vs llama.cpp on the same weights, each in a fresh process.

Per precision (fp32 vs F32, bf16 vs F16, int8 vs Q8_0, int4 vs Q4_0), every measurement is a new
`python` process that loads the model, prefills `--prompt` random tokens and decodes `--new`
greedy tokens, and reports its own RSS at each stage from /proc/self/status:
- `pocketlm`: `runtime.open_model(MODEL, precision, pack=None)` (what `pocketlm profile` opens: the
  per-device kernel choice), then `model.generate`. Run twice: `first` with an empty kernel cache
  (the candidates are timed in that process) and `cached` (the usual case: the choice read back);
- `llamacpp`: llama-cpp-python alone (`import llama_cpp`, no torch) on the GGUF that pocketlm's
  `export_gguf` wrote from the same weights, memory-mapped as llama.cpp does by default;
- `llamacpp+torch`: the same after `import torch`, as `pocketlm profile --backend llamacpp` runs it.
Peaks: `load` is the high-water mark when the model is ready, `decode` the high-water mark of prefill
plus decode only (reset after loading), `process` the larger of the two (what `/usr/bin/time` calls
maximum resident set size). llama.cpp's RSS counts the file pages it maps (`file_mb`).

`--repeat N` runs the cached pocketlm child and both llama.cpp children N times each, alternating, and
reports each peak's min / median / max (the ratios use the medians; `*_max_vs_*` the worst pocketlm run
against the median llama.cpp one). `--before PATH` also runs the cached pocketlm child on another
checkout (`PYTHONPATH=PATH`, e.g. main) in the same alternation, so before and after share one run.
`--probe` adds, per pocketlm run, the RSS after each step of the open and the peak within it
(`steps`: kernel plan, build or load, fuse, kernel swap, decode-step choice). Each pocketlm child also
reports its decode ms/token (a generate of `--new` tokens minus a one-token one, same prompt).

    python benchmarks/bench_decode_memory.py [--model SmolLM-135M] [--precisions fp32,bf16,int8,int4]
                                             [--prompt 64] [--new 32] [--threads 1] [--repeat 5]
                                             [--before /work/main] [--probe]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import statistics
import tempfile
import time
from pathlib import Path

GGUF = {"fp32": "F32", "bf16": "F16", "int8": "Q8_0", "int4": "Q4_0"}


def status_mb() -> dict[str, float]:
    """This process's RSS now, its high-water mark and the anonymous / file-backed split, in MiB.

    Read here, not with `pocketlm.profile.system`: that module imports torch, and the llama.cpp-alone
    child and every child's "start" stage must be measured without it."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0]) / 1024
    return {"rss": fields["VmRSS"], "hwm": fields["VmHWM"], "anon": fields["RssAnon"], "file": fields["RssFile"]}


def reset_hwm() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def heap_mb() -> dict[str, float]:
    """glibc's view: heap bytes in use and free (kept, not returned to the OS), and mmapped chunks."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    mi = libc.mallinfo2()
    return {"heap_in_use": mi.uordblks / 2**20, "heap_free": mi.fordblks / 2**20, "mmapped": mi.hblkhd / 2**20}


def child_pocketlm(args) -> dict:
    stages = {"start": status_mb()}
    import torch

    stages["import torch"] = status_mb()
    torch.set_num_threads(args.threads)
    from pocketlm.profile.memory import tensor_bytes
    from pocketlm.runtime import open_model

    stages["import pocketlm"] = status_mb()
    steps = probe_open_steps() if args.probe else None
    model = open_model(args.model, args.precision, pack=None)
    stages["loaded"] = status_mb()
    if steps is not None:  # the probe reset the high-water mark at each step: the load peak is the steps' largest
        stages["loaded"]["hwm"] = max([stages["import pocketlm"]["hwm"], stages["loaded"]["hwm"],
                                       *(s["peak"] for s in steps)])
    out = {"heap_after_load": heap_mb(), "weights_mb": tensor_bytes(model) / 2**20,
           "kernels": dict(model.transforms.kernels), "decode_step": model.transforms.decode,
           "modules_loaded": len(sys.modules), **({"steps": steps} if steps is not None else {})}
    reset_hwm()
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    model.generate(prompt, max_new_tokens=args.new)
    out["kv_cache_mb"] = model.new_cache(1, args.prompt + args.new).nbytes() / 2**20
    stages["decoded"] = status_mb()
    t0 = time.perf_counter()
    model.generate(prompt, max_new_tokens=1)
    t1 = time.perf_counter()
    model.generate(prompt, max_new_tokens=args.new)
    t2 = time.perf_counter()
    out["decode_ms_per_token"] = round(((t2 - t1) - (t1 - t0)) / max(1, args.new - 1) * 1e3, 2)
    return finish(out, stages)


def probe_open_steps() -> list[dict]:
    """Wrap the steps `open_model` runs so that each records the RSS after it and the peak within it
    (the high-water mark is reset as each step starts). Returns the list the steps fill."""
    import pocketlm.runtime.kernel_choice as kernel_choice
    import pocketlm.runtime.open as opening
    from pocketlm.model.transformer import Transformer

    steps: list[dict] = []

    def probed(name: str, fn):
        def run(*a, **k):
            reset_hwm()
            try:
                return fn(*a, **k)
            finally:
                s = status_mb()
                steps.append({"step": name, "rss": round(s["rss"], 1), "peak": round(s["hwm"], 1)})
                reset_hwm()
        return run

    for module, name in ((opening, "plan_kernels_first"), (opening, "_build_random"), (opening, "_quantize"),
                         (kernel_choice, "choose_kernels"), (kernel_choice, "choose_decode")):
        setattr(module, name, probed(name, getattr(module, name)))
    import pocketlm.interop as interop

    interop.load_model = probed("load_model", interop.load_model)
    Transformer.fuse = probed("fuse", Transformer.fuse)
    return steps


def child_llamacpp(args) -> dict:
    stages = {"start": status_mb()}
    if args.with_torch:
        import torch  # noqa: F401

        stages["import torch"] = status_mb()
    import llama_cpp
    import numpy as np

    stages["import llama_cpp"] = status_mb()
    n_ctx = args.prompt + args.new + 1
    llm = llama_cpp.Llama(args.gguf, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=args.prompt, n_threads=args.threads,
                          n_threads_batch=args.threads, use_mmap=True, verbose=False, seed=0)
    stages["loaded"] = status_mb()
    reset_hwm()
    rng = np.random.default_rng(0)
    llm.eval(rng.integers(0, llm.n_vocab(), args.prompt).tolist())
    for _ in range(args.new - 1):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    stages["decoded"] = status_mb()
    out = {"file_mb": os.path.getsize(args.gguf) / 2**20}
    llm.close()
    return finish(out, stages)


def finish(out: dict, stages: dict) -> dict:
    out["stages"] = {k: {f: round(v, 1) for f, v in s.items()} for k, s in stages.items()}
    base = stages.get("import pocketlm", stages.get("import llama_cpp"))
    out["baseline_mb"] = round(base["rss"], 1)  # the runtime before any weight: interpreter and libraries
    out["peak_load_mb"] = round(stages["loaded"]["hwm"], 1)
    out["peak_decode_mb"] = round(stages["decoded"]["hwm"], 1)
    out["peak_process_mb"] = max(out["peak_load_mb"], out["peak_decode_mb"])
    return out


def summarize(runs: list[dict]) -> dict:
    """One run as it is; several: the median run's fields, with each peak's and the decode time's
    min / median / max in `spread` and every run kept in `runs`."""
    ok = [r for r in runs if "error" not in r]
    if len(runs) == 1 or not ok:
        return runs[0] if len(runs) == 1 else {"error": runs[0]["error"], "runs": runs}
    fields = [f for f in ("peak_process_mb", "peak_decode_mb", "peak_load_mb", "decode_ms_per_token") if f in ok[0]]
    spread = {f: {"min": min(r[f] for r in ok), "median": statistics.median(r[f] for r in ok),
                  "max": max(r[f] for r in ok)} for f in fields}
    middle = sorted(ok, key=lambda r: r["peak_process_mb"])[len(ok) // 2]
    return {**middle, **{f: spread[f]["median"] for f in fields}, "spread": spread, "runs": runs,
            "errors": len(runs) - len(ok)}


def export(args) -> dict:
    """GGUF files of the model at each precision's llama.cpp type, from pocketlm's own export."""
    from pocketlm.export.gguf import export_gguf
    from pocketlm.runtime import open_model

    files = {}
    for precision in args.precisions.split(","):
        model = open_model(args.model, "fp32" if precision == "fp32" else "bf16")
        files[precision] = str(export_gguf(model, Path(args.out) / f"model-{GGUF[precision]}.gguf", GGUF[precision],
                                           threads=args.threads))
        del model
    return files


def run_child(args, role: str, extra: list[str], env: dict | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", role, "--model", args.model, "--prompt", str(args.prompt),
           "--new", str(args.new), "--threads", str(args.threads), *(["--probe"] if args.probe else []), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=1800)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="SmolLM-135M")
    ap.add_argument("--precisions", default="fp32,bf16,int8,int4")
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1, help="fresh processes per cached pocketlm / llama.cpp row")
    ap.add_argument("--before", default=None, help="another pocketlm checkout measured in the same run")
    ap.add_argument("--probe", action="store_true", help="RSS after, and peak within, each step of the open")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--gguf", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--with-torch", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        role = {"pocketlm": child_pocketlm, "llamacpp": child_llamacpp, "export": export}[args.child]
        print(json.dumps(role(args)))
        return
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        files = run_child(args, "export", ["--out", tmp, "--precisions", args.precisions])
        llama = "error" not in files
        for precision in args.precisions.split(","):
            r = results[precision] = {}
            cache = Path(tmp) / f"kernels-{precision}"  # empty: the first open times the kernels
            mine = {"POCKETLM_CACHE": str(cache)}
            r["pocketlm_first"] = run_child(args, "pocketlm", ["--precision", precision], mine)
            roles = {"pocketlm_cached": ("pocketlm", ["--precision", precision], mine)}
            if args.before:  # the same kernel decisions (one cache): only the code differs
                pythonpath = os.pathsep.join([args.before, *filter(None, [os.environ.get("PYTHONPATH")])])
                roles["before_cached"] = ("pocketlm", ["--precision", precision], {**mine, "PYTHONPATH": pythonpath})
            if llama:
                roles["llamacpp"] = ("llamacpp", ["--gguf", files[precision]], None)
                roles["llamacpp+torch"] = ("llamacpp", ["--gguf", files[precision], "--with-torch"], None)
            runs = {name: [] for name in roles}
            for _ in range(args.repeat):  # alternate: load drifts hit every row alike
                for name, (role, extra, env) in roles.items():
                    runs[name].append(run_child(args, role, extra, env))
            for name, done in runs.items():
                r[name] = summarize(done)
            for peak in ("peak_process_mb", "peak_decode_mb"):
                for yard in ("llamacpp", "llamacpp+torch"):
                    for ours_name, label in (("pocketlm_cached", ""), ("before_cached", "before_")):
                        ours, theirs = r.get(ours_name, {}).get(peak), r.get(yard, {}).get(peak)
                        if ours and theirs:
                            r[f"{label}{peak.removesuffix('_mb')}_vs_{yard}"] = round(ours / theirs, 3)
                            worst = r[ours_name].get("spread", {}).get(peak, {}).get("max")
                            if worst and args.repeat > 1:
                                r[f"{label}{peak.removesuffix('_mb')}_max_vs_{yard}"] = round(worst / theirs, 3)
            print(f"{precision}: " + "  ".join(f"{k} {v['peak_process_mb']:.0f}/{v['peak_decode_mb']:.0f} MiB"
                                               for k, v in r.items() if isinstance(v, dict) and "peak_process_mb" in v)
                  + "  (process/decode peak)  " + "  ".join(f"{k} {v:.2f}x" for k, v in r.items()
                                                             if not isinstance(v, dict)), flush=True)
            for k, v in r.items():
                for field, spread in (v.get("spread", {}).items() if isinstance(v, dict) else ()):
                    print(f"{precision} {k} {field}: min {spread['min']:.1f}  median {spread['median']:.1f}  "
                          f"max {spread['max']:.1f}  over {len(v['runs']) - v['errors']} runs", flush=True)
            for k, v in r.items():
                if isinstance(v, dict) and "error" in v:
                    print(f"{precision} {k}: {v['error']}", flush=True)
    print(json.dumps({"bench": "decode_memory", "model": args.model, "prompt": args.prompt, "new": args.new,
                      "threads": args.threads, "results": results}))


if __name__ == "__main__":
    main()
