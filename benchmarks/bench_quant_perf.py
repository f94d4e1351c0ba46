"""GPTQ's cost on the SmolLM-135M shape: wall time and peak RSS of `quantize(model, "gptq", 4, 64)` with
128 x 512 calibration tokens on random weights (the work does not depend on their values), each run in a
fresh process so peak RSS is its own; the dense calibration forward is the baseline of the same run.

    python benchmarks/bench_quant_perf.py --threads 2 --n 128 --length 512 [--save DIR]

`--save DIR` also writes the GPTQ-quantized checkpoint (pocketlm's int4 format) for the decode
benchmark: `python benchmarks/bench_decode_dtypes.py --checkpoint DIR`; `--save-bf16 DIR` writes the
same codes with the layers left float (embedding, norms, tied LM head) in bf16 (`float_dtype`, what
`open_model(..., "int4")` runs), after the measurement. `--calib-dtype bf16` times the bf16
calibration forwards; `--int4-runtime-layout` quantizes with the layout `open_model(..., "int4")`
gives (float layers bf16, the LM head int4 by RTN). Targets (issue 11): GPTQ <= 5 min on 2 threads,
peak RSS <= 2.5x the fp32 model's bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_prune import _cpu_s, perf_one, smollm_model  # noqa: E402
from pocketlm.profile.system import cpu_model  # noqa: E402


class RSSProbe:
    """`--rss-probe`: at each phase the walk marks (`layerwise.phase_hook`), print to stderr the RSS now and
    the peak since the previous mark (VmHWM, reset after each read through /proc/self/clear_refs, Linux)."""

    def __init__(self):
        self.peak_kib, self.label = 0, "start"

    @staticmethod
    def _status() -> dict[str, int]:
        lines = Path("/proc/self/status").read_text().splitlines()
        return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines) if k in ("VmRSS", "VmHWM")}

    def __call__(self, label: str) -> None:
        s = self._status()
        self.peak_kib = max(self.peak_kib, s["VmHWM"])
        print(f"rss-probe {label:28s} now {s['VmRSS'] / 1024:7.1f} MiB  peak since {self.label}: "
              f"{s['VmHWM'] / 1024:7.1f} MiB", file=sys.stderr, flush=True)
        Path("/proc/self/clear_refs").write_text("5")  # the peak is counted again from here
        self.label = label


def run_one(method: str, n: int, length: int, threads: int, save: str, group: int, calib_dtype: str = "fp32",
            save_bf16: str = "", layers: int = 0, runtime_layout: bool = False, rss_probe: bool = False) -> dict:
    import time

    from pocketlm.compress import layerwise

    from pocketlm.compress.quantize.driver import quantize
    from pocketlm.compress.report import peak_rss_bytes

    def fp32_bytes(model) -> int:
        return sum(p.numel() * p.element_size() for p in model.parameters())

    if method == "dense-forward":  # bench_prune's baseline, unchanged (its RSS is read before this model exists)
        return {**perf_one(method, n, length, threads), "model_bytes": fp32_bytes(smollm_model())}
    torch.set_num_threads(threads)
    probe = RSSProbe() if rss_probe else None
    model = smollm_model(layers)
    model_bytes = fp32_bytes(model)
    calib = torch.randint(0, model.config.vocab_size, (n, length), generator=torch.Generator().manual_seed(0))
    if probe is not None:
        probe("model built")
        layerwise.phase_hook = probe
    t0 = time.perf_counter()
    layout = {"float_dtype": torch.bfloat16, "quantize_head": True} if runtime_layout else {}
    quantize(model, "gptq", 4, group, calib=calib, calib_dtype=calib_dtype, **layout)
    wall = time.perf_counter() - t0
    peak = peak_rss_bytes()
    if probe is not None:  # clear_refs lowered getrusage's peak too: take the probe's
        probe("end")
        layerwise.phase_hook = None
        peak = max(peak, probe.peak_kib * 1024)
    out = {"method": method, "wall_s": wall, "cpu_s": _cpu_s(), "peak_rss_bytes": peak,
           "model_bytes": model_bytes, "calib_dtype": calib_dtype, "int4_runtime_layout": runtime_layout}
    from pocketlm.interop import save_native

    if save:  # after the measurement
        save_native(model, save)
    if save_bf16:  # quantize(float_dtype=bf16) ends with this very cast
        from pocketlm.compress.quantize.driver import cast_float_layers

        cast_float_layers(model, torch.bfloat16)
        save_native(model, save_bf16)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--methods", default="dense-forward,gptq")
    ap.add_argument("--group-size", type=int, default=64, help="SmolLM's 576 columns take 32 or 64, not 128")
    ap.add_argument("--save", default="", help="write the GPTQ checkpoint here")
    ap.add_argument("--save-bf16", default="", help="write it with its float layers in bf16 here")
    ap.add_argument("--calib-dtype", default="fp32", choices=["fp32", "bf16"], help="calibration forwards' dtype")
    ap.add_argument("--int4-runtime-layout", action="store_true", help="quantize(float_dtype=bf16, quantize_head="
                    "True): the layout open_model(..., 'int4') gives (float layers bf16, LM head int4 by RTN)")
    ap.add_argument("--layers", type=int, default=0, help="keep only this many blocks (a quick check; 0: all)")
    ap.add_argument("--rss-probe", action="store_true", help="print RSS now and peak since the last phase of the "
                    "walk to stderr (Linux; a debugging aid: it reads /proc between phases)")
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.n, args.length, args.threads, args.save, args.group_size,
                                 args.calib_dtype, args.save_bf16, args.layers, args.int4_runtime_layout, args.rss_probe)))
        return
    rows = []
    for method in args.methods.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", method, "--n", str(args.n), "--length",
                              str(args.length), "--threads", str(args.threads), "--save", args.save,
                              "--group-size", str(args.group_size), "--calib-dtype", args.calib_dtype,
                              "--save-bf16", args.save_bf16, "--layers", str(args.layers)]
                             + (["--int4-runtime-layout"] if args.int4_runtime_layout else [])
                             + (["--rss-probe"] if args.rss_probe else []),
                             stdout=subprocess.PIPE, text=True, check=True)  # stderr (the probe's lines) passes through
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {method}: {rows[-1]['wall_s']:.1f} s", flush=True)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nSmolLM-135M-shaped (random weights), GPTQ 4-bit g{args.group_size}, calibration {args.n}x{args.length}, "
          f"{args.threads} threads, calibration forwards {args.calib_dtype}, {cpu_model()}, load average {load}")
    print(f"{'method':14s} {'wall s':>8s} {'CPU s':>8s} {'peak RSS GiB':>12s} {'RSS / fp32 model':>16s}")
    for r in rows:
        print(f"{r['method']:14s} {r['wall_s']:8.1f} {r['cpu_s']:8.1f} {r['peak_rss_bytes'] / 2**30:12.2f} "
              f"{r['peak_rss_bytes'] / r['model_bytes']:15.2f}x")
    print(json.dumps({"bench": "quant_perf", "rows": rows, "threads": args.threads,
                      "calib": f"{args.n}x{args.length}"}))


if __name__ == "__main__":
    main()
