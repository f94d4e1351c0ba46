"""Pruning: cost on a SmolLM-135M-shaped model, the published finding on trained models, and parity with
the reference implementations.

    python benchmarks/bench_prune.py perf --threads 2          # wall time and peak RSS per method
    python benchmarks/bench_prune.py reproduce                 # perplexity table: small preset + stories260K
    python benchmarks/bench_prune.py reference --wanda PATH    # locuslab/wanda's own code, same model + calib

`perf` runs each method in a fresh process (peak RSS is per process) on random weights with 128 x 512
random-token calibration, against the time of one dense forward over the same calibration set (the walk's
floor: Wanda and SparseGPT run each block twice, once to gather statistics and once, pruned, to feed the
next block; magnitude walks only the rows its error probe reads). `--methods` picks a subset; `wanda:bf16`
runs Wanda with the bf16 calibration forward (`calib_dtype="bf16"`). `reproduce` prunes the `small` preset
trained on the bundled corpus (calibration bundled:128x128, its trained context; held-out: the bundled
corpus's held-out documents, `data/corpus/heldout.txt`) and llama2.c's stories260K (no tokenizer:
calibration and held-out text are its own samples).
`reference` saves the small preset as a Hugging Face directory, runs locuslab/wanda's `prune_magnitude`,
`prune_wanda` and `prune_sparsegpt` (from a checkout you give; nothing of it is in pocketlm) on it with
pocketlm's calibration batches, and compares perplexities.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pocketlm.compress.calibration import calibration_batches, encode_text  # noqa: E402
from pocketlm.compress.measure import compare_on_tokens  # noqa: E402
from pocketlm.compress.prune import prune  # noqa: E402
from pocketlm.compress.prune.checkpoint import DEFAULT_EVAL_TEXT  # noqa: E402
from pocketlm.compress.prune.sweep import sweep, sweep_figure, sweep_table  # noqa: E402
from pocketlm.profile.system import cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STORIES260K = ROOT.parent / "shared" / "data" / "models" / "stories260K" / "stories260K.bin"


def _load() -> str:
    import os

    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def _log(line: str) -> None:
    print("  " + line, flush=True)


# ------------------------------------------------------------------------------------------- perf
def smollm_model(layers: int = 0):
    """SmolLM-135M's architecture with random weights; `layers` > 0 keeps only that many blocks (every
    block costs the same, so the per-method ratios to the dense forward are those of the full model)."""
    from pocketlm.model.transformer import Transformer
    from pocketlm.survey.catalog import entry_to_config, get_entry

    torch.manual_seed(0)
    cfg = entry_to_config(get_entry("SmolLM-135M"))
    return Transformer(cfg.replace(n_layer=layers) if layers else cfg).eval()


def perf_one(method: str, n: int, length: int, threads: int, layers: int = 0) -> dict:
    torch.set_num_threads(threads)
    model = smollm_model(layers)
    calib = torch.randint(0, model.config.vocab_size, (n, length), generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    if method == "dense-forward":
        with torch.no_grad():
            for i in range(0, n, 8):
                model.forward_hidden(calib[i:i + 8])
        from pocketlm.compress.report import peak_rss_bytes

        return {"method": method, "wall_s": time.perf_counter() - t0, "cpu_s": _cpu_s(), "peak_rss_bytes": peak_rss_bytes()}
    name, _, dtype = method.partition(":")  # "wanda:bf16": the bf16 calibration forward
    report = prune(model, name, 0.5, calib=calib, calib_dtype=dtype or "fp32")
    return {"method": method, "wall_s": report.wall_s, "cpu_s": _cpu_s(), "peak_rss_bytes": report.peak_rss_bytes,
            "model_bytes": report.model_bytes, "sparsity": report.sparsity}


def _cpu_s() -> float:
    """CPU seconds this process used (a load-robust companion to wall time on a shared machine)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def perf(args) -> dict:
    rows = []
    for method in args.methods.split(","):
        out = subprocess.run([sys.executable, __file__, "perf-one", method, str(args.n), str(args.length),
                              str(args.threads), str(args.layers)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {method}: {rows[-1]['wall_s']:.1f} s", flush=True)
    base = rows[0]["wall_s"]
    model_bytes = next(r["model_bytes"] for r in rows if "model_bytes" in r)
    blocks = f", {args.layers} blocks" if args.layers else ""
    print(f"\nSmolLM-135M-shaped (random weights{blocks}), calibration {args.n}x{args.length}, {args.threads} threads, "
          f"{cpu_model()}, {_load()}")
    print(f"{'method':14s} {'wall s':>8s} {'CPU s':>8s} {'x dense fwd':>11s} {'peak RSS GiB':>12s} "
          f"{'RSS - fp32 model GiB':>20s}")
    for r in rows:
        print(f"{r['method']:14s} {r['wall_s']:8.1f} {r['cpu_s']:8.1f} {r['wall_s'] / base:11.2f} "
              f"{r['peak_rss_bytes'] / 2**30:12.2f} {(r['peak_rss_bytes'] - model_bytes) / 2**30:20.2f}")
    return {"perf": rows, "model_bytes": model_bytes, "threads": args.threads, "calib": f"{args.n}x{args.length}"}


# ------------------------------------------------------------------------------------- reproduce
def small_setup(preset: str = "small", n: int = 128, length: int = 128, model_dir: Path | None = None):
    """The trained preset (or the model in `model_dir`, e.g. a cached fixture of an earlier code version),
    calibration windows from the bundled training documents, and the held-out tokens."""
    from pocketlm.interop import load_model, load_tokenizer
    from pocketlm.train.fixtures import trained_preset

    model_dir = Path(model_dir) if model_dir else trained_preset(preset, progress=True)[0]
    model, tok = load_model(model_dir).eval(), load_tokenizer(model_dir)
    calib, _ = calibration_batches(f"bundled:{n}x{length}", tok, seed=0)
    heldout = torch.tensor(encode_text(tok, DEFAULT_EVAL_TEXT.read_text()))
    return model, tok, calib, heldout, model_dir


def stories_setup():
    """stories260K scored on its own samples: 144 sequences of 512 tokens from BOS at temperature 1, the first
    128 the calibration set, the other 16 held out. Every window starts at BOS: llama2.c models lean on it
    (scored from mid-sequence without it, the same text costs 7-8 nats/token instead of 2.5)."""
    from pocketlm.interop import load_model

    model = load_model(STORIES260K)
    samples = model.generate(torch.ones(144, 1, dtype=torch.long), max_new_tokens=511, temperature=1.0,
                             seed=0).clone()
    return model, samples[:128], samples[128:].flatten(), samples.shape[1]


def reproduce(args) -> dict:
    settings = args.settings.split(",")
    rows_stories = []
    if args.stories_settings:
        s_model, s_calib, s_heldout, s_len = stories_setup()
        rows_stories = sweep(s_model, s_calib, s_heldout, s_len, args.stories_settings.split(","), log=_log)
        print(f"\nstories260K, calibration: 128 of its own samples of {s_len} tokens, held-out 16 other samples "
              f"({s_heldout.numel()} tokens), window {s_len}")
        print(sweep_table(rows_stories), flush=True)
    model, _, calib, heldout, _ = small_setup(args.preset, model_dir=args.model_dir)
    rows_small = sweep(model, calib, heldout, 128, settings, log=_log)
    print(f"\n{args.preset} preset ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params), calibration "
          f"bundled:128x128, held-out {DEFAULT_EVAL_TEXT.name} ({heldout.numel()} tokens), window 128")
    print(sweep_table(rows_small))
    print(f"\n{cpu_model()}, {_load()}")
    if args.figure:
        sweep_figure(rows_small, args.figure, f"{args.preset} preset: perplexity vs sparsity")
    return {"small": rows_small, "stories260K": rows_stories}


# ------------------------------------------------------------------------------------- reference
def reference(args) -> dict:
    """locuslab/wanda's prune functions on the HF-saved small preset, with pocketlm's calibration batches."""
    import tempfile
    import types

    import transformers

    from pocketlm.interop import save_hf

    model, tok, calib, heldout, _ = small_setup(args.preset, model_dir=args.model_dir)
    tmp = Path(tempfile.mkdtemp())
    save_hf(model, tmp / "hf", tokenizer=tok)
    sys.path.insert(0, str(Path(args.wanda).resolve()))
    import lib.prune as ref_prune  # the reference code, from the checkout given on the command line

    torch.cuda.synchronize = lambda *a, **k: None  # CPU run: the reference calls CUDA syncs and .cuda()
    torch.Tensor.cuda = lambda self, *a, **k: self
    ref_prune.get_loaders = lambda *a, **k: ([(calib[i:i + 1], None) for i in range(calib.shape[0])], None)
    rows = []
    for method, fn in (("magnitude", ref_prune.prune_magnitude), ("wanda", ref_prune.prune_wanda),
                       ("sparsegpt", ref_prune.prune_sparsegpt)):
        for setting in args.settings.split(","):
            hf = transformers.AutoModelForCausalLM.from_pretrained(tmp / "hf", dtype=torch.float32).eval()
            _inject_rotary(hf)
            hf.seqlen, hf.hf_device_map = calib.shape[1], {}
            nm = [int(x) for x in setting.split(":")] if ":" in setting else [0, 0]
            ns = types.SimpleNamespace(sparsity_ratio=0.5 if nm[0] else float(setting), nsamples=calib.shape[0],
                                       seed=0, use_variant=False)
            with torch.no_grad():
                fn(ns, hf, tok, torch.device("cpu"), prune_n=nm[0], prune_m=nm[1])
            theirs = compare_on_tokens(model, _Logits(hf), heldout, 128)["ppl_after"]
            ours_model = copy.deepcopy(model)
            prune(ours_model, method, calib=calib if method != "magnitude" else None,
                  **({"pattern": setting} if ":" in setting else {"sparsity": float(setting)}))
            ours = compare_on_tokens(model, ours_model, heldout, 128)["ppl_after"]
            rows.append({"method": method, "setting": setting, "reference_ppl": theirs, "pocketlm_ppl": ours,
                         "rel_diff": ours / theirs - 1})
            print(f"  {method} {setting}: reference {theirs:.4f}  pocketlm {ours:.4f}  ({ours / theirs - 1:+.2%})",
                  flush=True)
    return {"reference": rows}


class _Logits:
    """An HF model called like a pocketlm one: ids -> logits."""

    def __init__(self, hf):
        self.hf = hf

    def __call__(self, ids):
        return self.hf(ids).logits


def _inject_rotary(hf) -> None:
    """transformers >= 4.48 passes RoPE tables into each decoder layer; the reference (written for 4.3x)
    calls layers with only attention_mask and position_ids, so add the tables on the way in."""
    rotary = hf.model.rotary_emb
    for layer in hf.model.layers:
        original = layer.forward

        def forward(hidden_states, *a, _orig=original, **kw):
            if kw.get("position_embeddings") is None:
                pos = kw.get("position_ids")
                if pos is None:
                    pos = torch.arange(hidden_states.shape[1])[None]
                kw["position_embeddings"] = rotary(hidden_states, pos)
            return _orig(hidden_states, *a, **kw)  # a [1, T, C] tensor: the reference's [0] takes the row
        layer.forward = forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("perf")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--methods", default="dense-forward,magnitude,wanda,sparsegpt,wanda:bf16,sparsegpt:bf16",
                   help="comma-separated, dense-forward first (the ratios' base); METHOD:bf16 = --calib-dtype bf16")
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--layers", type=int, default=0, help="keep only this many of the 30 blocks (0: all)")
    one = sub.add_parser("perf-one")
    one.add_argument("method")
    one.add_argument("n", type=int)
    one.add_argument("length", type=int)
    one.add_argument("threads", type=int)
    one.add_argument("layers", type=int, nargs="?", default=0)
    r = sub.add_parser("reproduce")
    r.add_argument("--settings", default="0.5,0.6,0.7,2:4")
    r.add_argument("--preset", default="small")
    r.add_argument("--model-dir", type=Path, default=None, help="score this trained model instead of the preset's")
    r.add_argument("--stories-settings", default="0.1,0.2,0.3,0.5,2:4",
                   help="stories260K (d_model 64) degrades far sooner than the presets; '' skips it")
    r.add_argument("--figure", type=Path, default=None)
    ref = sub.add_parser("reference")
    ref.add_argument("--wanda", required=True, help="a checkout of locuslab/wanda (its lib/ is imported)")
    ref.add_argument("--settings", default="0.5,2:4")
    ref.add_argument("--preset", default="small")
    ref.add_argument("--model-dir", type=Path, default=None, help="this trained model instead of the preset's")
    args = ap.parse_args()
    if args.cmd == "perf-one":
        print(json.dumps(perf_one(args.method, args.n, args.length, args.threads, args.layers)))
        return
    payload = {"perf": perf, "reproduce": reproduce, "reference": reference}[args.cmd](args)
    payload.update({"cpu": cpu_model(), "torch": torch.__version__, "load": _load()})
    print(json.dumps(payload))


if __name__ == "__main__":
    main()
