"""GGUF export and llama.cpp decode, in one run:

1. export time, SmolLM-135M's shape (random weights, GPT-2's tokenizer so both tools have a real one):
   pocketlm (`load_model` of the HF directory + `export_gguf` F16) against llama.cpp's own
   `convert_hf_to_gguf.py --outtype f16` on the same directory (run from its checkout, never vendored:
   `--convert /path/to/llama.cpp/convert_hf_to_gguf.py`; skipped when absent);
2. decode tokens/s in llama.cpp (llama-cpp-python) for F16, Q8_0, Q4_0 and Q4_K_M against this
   machine's memory-bandwidth ceiling: the read bandwidth on the same thread count
   (`memory_bandwidth_gbs`, measured in the same run) divided by the bytes one token reads (the GGUF
   tensors); a numpy copy's bandwidth is reported beside it.

    python benchmarks/bench_gguf.py --convert /tmp/llama_cpp_convert/convert_hf_to_gguf.py --threads 1,2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GPT2 = ROOT.parent / "shared" / "data" / "tokenizers" / "gpt2"
if not GPT2.exists():
    GPT2 = Path("/work/shared/data/tokenizers/gpt2")


def copy_bandwidth(mib: int = 512, repeat: int = 5) -> float:
    """Best bytes/s of a large numpy copy (each byte read once and written once)."""
    src = np.ones(mib * 2**20 // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def hf_dir(out: Path) -> Path:
    """SmolLM-135M's architecture with GPT-2's vocabulary (50257), random weights, saved as HF llama."""
    import torch
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    from pocketlm.interop import save_hf
    from pocketlm.model.transformer import Transformer
    from pocketlm.survey.catalog import entry_to_config, get_entry

    cfg = entry_to_config(get_entry("SmolLM-135M")).replace(vocab_size=50257, extra={})
    torch.manual_seed(0)
    bpe = Tokenizer(BPE.from_file(str(GPT2 / "encoder.json"), str(GPT2 / "vocab.bpe")))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    save_hf(Transformer(cfg).eval(), out, tokenizer=tok)
    return out


def time_pocketlm(model_dir: Path, out: Path) -> float:
    """A fresh process, as the converter is: interpreter start and imports are counted for both."""
    code = ("from pocketlm.export.gguf import export_gguf; from pocketlm.interop import load_model; "
            f"export_gguf(load_model({str(model_dir)!r}), {str(out)!r}, 'F16', tokenizer_json={str(model_dir)!r})")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return time.perf_counter() - t0


def time_convert(script: Path, model_dir: Path, out: Path) -> float | None:
    env = dict(os.environ, PYTHONPATH=str(script.parent / "gguf-py"), NO_LOCAL_GGUF="")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(script), str(model_dir), "--outtype", "f16", "--outfile", str(out)],
                       cwd="/tmp", env=env, capture_output=True, text=True)
    if r.returncode != 0:
        print("convert_hf_to_gguf.py failed:", r.stderr[-800:], file=sys.stderr)
        return None
    return time.perf_counter() - t0


def decode_tok_s(path: Path, threads: int, n: int = 32, repeat: int = 3) -> float:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=128, n_threads=threads, verbose=False)
    best = 0.0
    try:
        for _ in range(repeat + 1):  # the first is warm-up
            llm.reset()
            llm.eval([1, 2, 3, 4, 5, 6, 7, 8])
            t0 = time.perf_counter()
            for i in range(n):
                llm.eval([100 + i])
            best = max(best, n / (time.perf_counter() - t0))
    finally:
        llm.close()
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--convert", type=Path, default=None, help="llama.cpp's convert_hf_to_gguf.py")
    ap.add_argument("--threads", default=str(os.cpu_count()),
                    help="comma-separated thread counts for decode and the bandwidth ceiling, e.g. 1,2")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import gguf

    from pocketlm.export.gguf import export_gguf
    from pocketlm.interop import load_model
    from pocketlm.profile.system import cpu_model, memory_bandwidth_gbs

    result = {"cpu": cpu_model(), "uptime_before": os.popen("uptime").read().strip(), "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = hf_dir(tmp / "smollm135m")
        ours = time_pocketlm(model_dir, tmp / "pocketlm-f16.gguf")
        result["export_s_pocketlm"] = round(ours, 2)
        if args.convert and args.convert.exists():
            theirs = time_convert(args.convert, model_dir, tmp / "convert-f16.gguf")
            if theirs is not None:
                result["export_s_convert_hf_to_gguf"] = round(theirs, 2)
                result["export_speedup_vs_convert"] = round(theirs / ours, 2)
                a, b = gguf.GGUFReader(str(tmp / "pocketlm-f16.gguf")), gguf.GGUFReader(str(tmp / "convert-f16.gguf"))
                ta, tb = ({t.name: t for t in r.tensors} for r in (a, b))
                result["same_tensor_names"] = set(ta) == set(tb)
                result["max_abs_tensor_diff"] = float(max(
                    np.abs(np.asarray(ta[k].data, dtype=np.float32) - np.asarray(tb[k].data, dtype=np.float32)).max()
                    for k in ta if k in tb))
        result["copy_bandwidth_gb_s"] = round(copy_bandwidth() / 1e9, 2)
        model = load_model(model_dir)
        files = {q: export_gguf(model, tmp / f"m-{q}.gguf", q) for q in ("F16", "Q8_0", "Q4_0", "Q4_K_M")}
        rows = []
        for threads in (int(t) for t in args.threads.split(",")):
            # the ceiling: a full read of 512 MiB (a sum) on the same number of threads as the decode
            read_gb_s = memory_bandwidth_gbs(threads=threads)
            result[f"read_bandwidth_gb_s_{threads}t"] = round(read_gb_s, 2)
            for qtype, path in files.items():
                tensor_bytes = sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors)
                tok_s = decode_tok_s(path, threads)
                ceiling = read_gb_s * 1e9 / tensor_bytes
                rows.append({"threads": threads, "qtype": qtype, "tensor_mb": round(tensor_bytes / 1e6, 1),
                             "decode_tok_s": round(tok_s, 1), "ceiling_tok_s": round(ceiling, 1),
                             "fraction_of_ceiling": round(tok_s / ceiling, 3)})
        result["decode"] = rows
    result["uptime_after"] = os.popen("uptime").read().strip()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
