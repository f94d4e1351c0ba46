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

    python benchmarks/bench_decode_memory.py [--model SmolLM-135M] [--precisions fp32,bf16,int8,int4]
                                             [--prompt 64] [--new 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
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
    model = open_model(args.model, args.precision, pack=None)
    stages["loaded"] = status_mb()
    out = {"heap_after_load": heap_mb(), "weights_mb": tensor_bytes(model) / 2**20,
           "kernels": dict(model.transforms.kernels), "modules_loaded": len(sys.modules)}
    reset_hwm()
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    model.generate(prompt, max_new_tokens=args.new)
    out["kv_cache_mb"] = model.new_cache(1, args.prompt + args.new).nbytes() / 2**20
    stages["decoded"] = status_mb()
    return finish(out, stages)


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
           "--new", str(args.new), "--threads", str(args.threads), *extra]
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
            for run in ("first", "cached"):
                r[f"pocketlm_{run}"] = run_child(args, "pocketlm", ["--precision", precision],
                                                 {"POCKETLM_CACHE": str(cache)})
            if llama:
                r["llamacpp"] = run_child(args, "llamacpp", ["--gguf", files[precision]])
                r["llamacpp+torch"] = run_child(args, "llamacpp", ["--gguf", files[precision], "--with-torch"])
            for peak in ("peak_process_mb", "peak_decode_mb"):
                for yard in ("llamacpp", "llamacpp+torch"):
                    ours, theirs = r["pocketlm_cached"].get(peak), r.get(yard, {}).get(peak)
                    if ours and theirs:
                        r[f"{peak.removesuffix('_mb')}_vs_{yard}"] = round(ours / theirs, 3)
            print(f"{precision}: " + "  ".join(f"{k} {v['peak_process_mb']:.0f}/{v['peak_decode_mb']:.0f} MiB"
                                               for k, v in r.items() if isinstance(v, dict) and "peak_process_mb" in v)
                  + "  (process/decode peak)  " + "  ".join(f"{k} {v:.2f}x" for k, v in r.items()
                                                             if not isinstance(v, dict)), flush=True)
            for k, v in r.items():
                if isinstance(v, dict) and "error" in v:
                    print(f"{precision} {k}: {v['error']}", flush=True)
    print(json.dumps({"bench": "decode_memory", "model": args.model, "prompt": args.prompt, "new": args.new,
                      "threads": args.threads, "results": results}))


if __name__ == "__main__":
    main()
