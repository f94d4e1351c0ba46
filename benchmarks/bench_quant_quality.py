"""Quantization quality: pocketlm RTN / GPTQ / AWQ on a trained preset, and GGUF files scored inside llama.cpp
against llama.cpp's own quantizer, in one run.

    python benchmarks/bench_quant_quality.py quality --preset tiny --group-size 32   # pocketlm's runtime
    python benchmarks/bench_quant_quality.py gguf --preset tiny                      # scored in llama.cpp

`quality` quantizes the preset (trained on the bundled corpus; calibration bundled:NxL with L its trained
context; held-out TinyStories validation) at 4 and 3 bits and prints perplexity, KL(float || quantized)
and the ratios the issue sets targets for: GPTQ's perplexity increase / RTN's, AWQ's / RTN's.
`gguf` writes an F32 GGUF and Q4_0 GGUFs (pocketlm RTN and GPTQ codes written exactly; llama.cpp's
`llama_model_quantize`) and scores each in llama.cpp (llama-cpp-python): perplexity on the held-out
windows and KL against the F32 file's logits. All non-block tensors (embedding, head) are F16 in every
file (llama.cpp's quantizer told so through `token_embedding_type` / `output_tensor_type`), so files
differ only in the block matrices. llama.cpp's importance matrix is not reachable from llama-cpp-python
(`params.imatrix` points at a C++ map built by the llama-imatrix tool), so "with imatrix" is not run.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pocketlm.compress.calibration import calibration_batches, encode_text  # noqa: E402
from pocketlm.compress.prune.checkpoint import DEFAULT_EVAL_TEXT  # noqa: E402
from pocketlm.compress.quantize.gguf_export import export_quantized_gguf  # noqa: E402
from pocketlm.compress.quantize.sweep import quant_sweep, quant_table  # noqa: E402
from pocketlm.profile.system import cpu_model  # noqa: E402


def _load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs"


def setup(preset: str, n: int, length: int, eval_tokens: int, model_dir: Path | None = None):
    from pocketlm.interop import load_model, load_tokenizer
    from pocketlm.train.fixtures import trained_preset

    model_dir = model_dir or trained_preset(preset, progress=True)[0]
    model, tok = load_model(model_dir).eval(), load_tokenizer(model_dir)
    calib, _ = calibration_batches(f"bundled:{n}x{length}", tok, seed=0)
    heldout = torch.tensor(encode_text(tok, DEFAULT_EVAL_TEXT.read_text())[:eval_tokens])
    return model, calib, heldout


def ratios(rows: list[dict]) -> dict:
    by = {(r["method"], r["bits"]): r["ppl"] - r["float_ppl"] for r in rows}
    return {f"{m}/rtn {b}-bit": by[(m, b)] / by[("rtn", b)] for m in ("gptq", "awq") for b in (4, 3)
            if (m, b) in by and by[("rtn", b)] > 0}


def quality(args) -> dict:
    torch.set_num_threads(args.threads)
    model, calib, heldout = setup(args.preset, args.n, args.length, args.eval_tokens, args.model_dir)
    rows = quant_sweep(model, calib, heldout, args.length, (4, 3), args.group_size or None,
                       log=lambda s: print(s, flush=True))
    print(f"\n{args.model_dir or args.preset + ' preset'} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params), asymmetric "
          f"g{args.group_size}, calibration bundled:{args.n}x{args.length}, held-out {heldout.numel()} tokens")
    print(quant_table(rows))
    r = ratios(rows)
    print("perplexity-increase ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()))
    print(f"{cpu_model()}, {_load()}")
    return {"rows": rows, "ratios": r}


def score_in_llama_cpp(path: Path, heldout: torch.Tensor, window: int, reference: list | None = None):
    """(perplexity, KL mean vs `reference` log-probs, the file's log-probs per window), computed by llama.cpp."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=window, logits_all=True, verbose=False, n_threads=1, n_batch=window)
    nll = kl = 0.0
    count, logps = 0, []
    try:
        for w in range(heldout.numel() // window):
            ids = heldout[w * window:(w + 1) * window].tolist()
            llm.reset()
            llm.eval(ids)
            lp = torch.tensor(np.array(llm.scores[:window - 1])).double().log_softmax(-1)
            logps.append(lp)
            nll -= float(lp.gather(-1, torch.tensor(ids[1:])[:, None]).sum())
            if reference is not None:
                ref = reference[w]
                kl += float((ref.exp() * (ref - lp)).sum())
            count += window - 1
    finally:
        llm.close()
    return math.exp(nll / count), (kl / count if reference is not None else 0.0), logps


def llama_cpp_quantize(src: Path, dst: Path, qtype: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}")
    params.output_tensor_type = params.token_embedding_type = 1  # GGML_TYPE_F16, as pocketlm's files
    params.nthread = 1
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) != 0:
        raise RuntimeError(f"llama.cpp's quantizer failed for {qtype}")


def gguf_bench(args) -> dict:
    from pocketlm.export.gguf import export_gguf

    torch.set_num_threads(args.threads)
    model, calib, heldout = setup(args.preset, args.n, args.length, args.eval_tokens, args.model_dir)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        export_gguf(model, tmp / "f32.gguf", "F32")
        base_ppl, _, reference = score_in_llama_cpp(tmp / "f32.gguf", heldout, args.length)
        files = {}
        for qtype in args.qtypes.split(","):
            llama_cpp_quantize(tmp / "f32.gguf", tmp / f"llamacpp_{qtype}.gguf", qtype)
            files[f"llama.cpp {qtype}"] = tmp / f"llamacpp_{qtype}.gguf"
            for method in ("rtn", "gptq", "awq"):
                path = tmp / f"{method}_{qtype}.gguf"
                export_quantized_gguf(copy.deepcopy(model), path, qtype, method, calib)
                files[f"pocketlm {method} {qtype}"] = path
        for name, path in files.items():
            ppl, kl, _ = score_in_llama_cpp(path, heldout, args.length, reference)
            rows.append({"file": name, "ppl": ppl, "kl": kl, "bytes": path.stat().st_size})
            print(f"{name}: ppl {ppl:.4f} (F32 {base_ppl:.4f}), KL {kl:.5f}", flush=True)
    print(f"\n{args.model_dir or args.preset + ' preset'} in llama.cpp, held-out {heldout.numel()} tokens in windows of {args.length}; "
          f"F32 perplexity {base_ppl:.4f}")
    print("| file | perplexity | KL to F32 | bytes |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['file']} | {r['ppl']:.4f} | {r['kl']:.5f} | {r['bytes']:,} |")
    kl = {r["file"]: r["kl"] for r in rows}
    for qtype in args.qtypes.split(","):
        print(f"{qtype}: KL pocketlm GPTQ / llama.cpp = {kl[f'pocketlm gptq {qtype}'] / kl[f'llama.cpp {qtype}']:.2f}")
    print(f"{cpu_model()}, {_load()}")
    return {"f32_ppl": base_ppl, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["quality", "gguf"])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--model-dir", type=Path, help="an already trained model folder instead of --preset")
    ap.add_argument("--group-size", type=int, default=64, help="0: per channel (the small preset's 192 "
                    "inputs take 32 or 64; the tiny preset's 352-wide FFN only 32)")
    ap.add_argument("--n", type=int, default=128, help="calibration sequences")
    ap.add_argument("--length", type=int, default=128, help="calibration / scoring window (trained context)")
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--qtypes", default="Q4_0", help="GGUF types (K-quants need rows of multiples of 256)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: small matrices on a shared machine)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    out = quality(args) if args.what == "quality" else gguf_bench(args)
    if args.json:
        args.json.write_text(json.dumps({**out, "cpu": cpu_model(), "load": _load(), "args": vars(args)},
                                        indent=2, default=str))


if __name__ == "__main__":
    main()
