"""Structured pruning and distillation speed, each against its baseline in the same process.

    python benchmarks/bench_structured.py prune --threads 2     # SmolLM-135M shape, 128 x 512 calibration, fp32 and bf16
    python benchmarks/bench_structured.py distill --threads 2   # distillation vs plain training tokens/s
    python benchmarks/bench_structured.py slicegpt              # SliceGPT vs Minitron embedding pruning
    python benchmarks/bench_structured.py latency --threads 2   # decode ms/token, full vs two 0.5x prunings
    python benchmarks/bench_structured.py profile --threads 2   # the same via `pocketlm profile`: torch + llama.cpp, RSS
    python benchmarks/bench_structured.py minitron --preset base --steps 100 --threads 1 --out runs/minitron
    python benchmarks/bench_structured.py per-layer --threads 1 [--steps 50 --out runs/per_layer]  # uniform vs per-layer

`prune` scores a SmolLM-135M-shaped model (catalog architecture, seeded random weights) with Minitron's
activation importance and block influence on 128 x 512 random-token calibration, then slices it to half
the FFN and residual width and 3/4 of the layers; the baseline is one dense forward over the same
calibration (fp32, LM head included, which the walk skips); the walk is timed with fp32 forwards and under
bf16 autocast (`--calib-dtype fp32,bf16`); wall and process CPU seconds, so a loaded machine still gives
the ratio to the dense forward (`--n 16`: a shorter run with the same ratios, the work is linear in N).
Target: scoring + slicing <= 3 min on 2 threads at N = 128.
`distill` trains the tiny preset's half-size student for the same steps at the same batch (16 x 128) with
plain cross-entropy, with distillation from the live teacher, and from cached top-k teacher logits;
target: distillation >= 0.8x the plain training tokens/s.
`profile` saves the SmolLM-135M shape and its two 0.5x prunings (all layers with a narrower FFN; half the
layers) as pocketlm folders and measures each with `pocketlm profile` (one fresh process per setting) in
pocketlm's torch runtime (fp32) and in llama.cpp (the folder exported to GGUF F16): decode ms/token after
a 128-token context and peak RSS, each against the unpruned model.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pocketlm.compress.structured.study import minitron_study  # noqa: E402
from pocketlm.profile.system import cpu_model  # noqa: E402


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def bench_prune(threads: int, calib_dtypes: list[str], n: int = 128) -> dict:
    from pocketlm.compress.structured.activation import activation_importance
    from pocketlm.compress.structured.driver import plan_for
    from pocketlm.compress.structured.shapes import explicit_shape
    from pocketlm.compress.structured.slicing import slice_model
    from pocketlm.model.costs import param_counts
    from pocketlm.runtime import open_model

    torch.set_num_threads(threads)
    model = open_model("SmolLM-135M", "fp32")
    cfg = model.config
    calib = torch.randint(0, cfg.vocab_size, (n, 512), generator=torch.Generator().manual_seed(0))
    load_before = _load()
    t, c = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for i in range(0, n, 8):
            model(calib[i:i + 8])
    forward, forward_cpu = time.perf_counter() - t, time.process_time() - c
    shape = explicit_shape(cfg, width=0.5, depth=0.75)
    runs = {}
    for name in calib_dtypes:
        t, c = time.perf_counter(), time.process_time()
        imp = activation_importance(model, calib, compute_dtype={"fp32": None, "bf16": torch.bfloat16}[name])
        t_imp = time.perf_counter() - t  # block influence is measured on the same pass
        t = time.perf_counter()
        pruned = slice_model(model, plan_for(cfg, imp, shape, imp.block_influence))
        t_slice = time.perf_counter() - t
        total, cpu = t_imp + t_slice, time.process_time() - c
        runs[name] = {"activation_importance_and_block_influence_s": t_imp, "slice_s": t_slice, "total_s": total,
                      "cpu_s": cpu, "vs_forward": total / forward, "cpu_vs_forward": cpu / forward_cpu,
                      "target_met": total <= 180 if n == 128 else None}
    return {"what": "prune", "model": "SmolLM-135M shape", "calib": f"{n}x512", "threads": threads,
            "dense_forward_fp32_s": forward, "dense_forward_fp32_cpu_s": forward_cpu, "runs": runs, "shape": str(shape),
            "params": [param_counts(cfg)["total"], param_counts(pruned.config)["total"]],
            "cpu": cpu_model(), "load_before": load_before, "load_after": _load()}


def bench_distill(threads: int, steps: int) -> dict:
    from pocketlm.compress.structured.driver import prune_structured
    from pocketlm.compress.structured.shapes import explicit_shape
    from pocketlm.data.shards import TokenSplit
    from pocketlm.interop import load_model
    from pocketlm.train.distill import DistillConfig, Distillation
    from pocketlm.train.fixtures import trained_preset
    from pocketlm.train.loop import finetune

    torch.set_num_threads(threads)
    teacher_dir, summary = trained_preset("tiny")
    teacher = load_model(teacher_dir).eval()
    split = TokenSplit.open(summary["data_dir"], "train")
    g = torch.Generator().manual_seed(0)
    tokens = torch.from_numpy(split.tokens[: 200_000].astype("int64"))
    starts = torch.randint(0, tokens.numel() - 130, (16 * steps,), generator=g)
    windows = torch.stack([tokens[s:s + 129] for s in starts.tolist()])
    student0 = prune_structured(teacher, None, explicit_shape(teacher.config, width=0.5), method="magnitude").model
    rows = {}
    with torch.no_grad():
        top = [teacher(windows[i:i + 16, :-1]).topk(32, dim=-1) for i in range(0, windows.shape[0], 16)]
    cached = {"values": torch.stack([t.values for t in top]), "indices": torch.stack([t.indices for t in top])}

    def cached_batches(step: int):
        i = step % steps
        return {"tokens": windows[16 * i:16 * (i + 1)], "teacher_values": cached["values"][i],
                "teacher_indices": cached["indices"][i]}, {}

    for name in ("plain", "distill_live", "distill_cached_top32", "plain_again"):
        student = copy.deepcopy(student0).train()
        objective = None if name.startswith("plain") else Distillation(teacher, student, DistillConfig(alpha=1.0))
        batches = cached_batches if name == "distill_cached_top32" else windows
        t = time.perf_counter()
        finetune(student, batches, steps, 1e-3, objective=objective, batch_size=16, threads=threads)
        rows[name] = 16 * 128 * steps / (time.perf_counter() - t)
    plain = (rows["plain"] + rows["plain_again"]) / 2
    return {"what": "distill", "tokens_per_s": rows, "live_vs_plain": rows["distill_live"] / plain,
            "cached_vs_plain": rows["distill_cached_top32"] / plain, "steps": steps, "batch": "16x128",
            "threads": threads, "teacher_params": sum(p.numel() for p in teacher.parameters()),
            "student_params": sum(p.numel() for p in student0.parameters()), "cpu": cpu_model(), "load": _load()}


def _half_size_135m(arch: str = "SmolLM-135M") -> dict:
    """A SmolLM-135M-shaped model (seeded random weights, fp32) and its two 0.5x prunings: all layers with a
    narrower FFN, and half the layers at full width (magnitude importance; the weights are random)."""
    from pocketlm.compress.structured.driver import plan_for, target_shapes
    from pocketlm.compress.structured.magnitude import magnitude_importance
    from pocketlm.compress.structured.slicing import slice_model
    from pocketlm.runtime import open_model

    full = open_model(arch, "fp32")
    cfg = full.config
    shapes = target_shapes(cfg, "0.5x", max_candidates=64)
    imp, by_depth = magnitude_importance(full), torch.arange(cfg.n_layer, 0, -1).float()
    models = {"full": full}
    for name, shape in (("all layers", max(shapes, key=lambda s: (s.n_layer, s.d_model))),
                        ("half the layers", min(shapes, key=lambda s: (s.n_layer, -s.d_model)))):
        models[f"{name} {shape}"] = slice_model(full, plan_for(cfg, imp, shape, by_depth)).eval()
    return models


def bench_latency(threads: int) -> dict:
    """Greedy decode latency (pocketlm's torch runtime, fp32) of a SmolLM-135M-shaped model and of two 0.5x
    prunings, in this process, interleaved."""
    from pocketlm.compress.measure import decode_latency
    from pocketlm.model.costs import param_counts

    torch.set_num_threads(threads)
    models = _half_size_135m()
    rows = {k: {"params": param_counts(m.config)["total"], "ms_per_token": []} for k, m in models.items()}
    for _ in range(3):
        for k, m in models.items():
            rows[k]["ms_per_token"].append(decode_latency(m, depth=128, n_gen=16, repeat=1)["ms_per_token"])
    base = sorted(rows["full"]["ms_per_token"])[1]
    for r in rows.values():
        r["median_ms"] = sorted(r["ms_per_token"])[1]
        r["speedup"] = base / r["median_ms"]
        r["param_ratio"] = r["params"] / rows["full"]["params"]
    return {"what": "latency", "rows": rows, "threads": threads, "cpu": cpu_model(), "load": _load()}


def bench_profile(threads: int, out: Path, arch: str = "SmolLM-135M") -> dict:
    """`pocketlm profile` (torch fp32 and llama.cpp F16, one process per setting) of the 135M shape and its
    two 0.5x prunings: decode ms/token at depth 128, peak RSS, and the ratios to the unpruned model."""
    import tempfile

    from pocketlm.interop import save_native
    from pocketlm.model.costs import param_counts
    from pocketlm.profile.runner import profile
    from pocketlm.profile.setting import Setting

    rows, load_before = {}, _load()
    with tempfile.TemporaryDirectory(prefix="bench-structured-") as tmp:
        settings = []
        for name, model in _half_size_135m(arch).items():
            folder = Path(tmp) / name.replace(" ", "_").replace("/", "-")
            save_native(model, folder)
            rows[name] = {"params": param_counts(model.config)["total"], "folder": folder.name}
            for backend, dtype in (("torch", "fp32"), ("llamacpp", "F16")):
                settings.append(Setting(str(folder), backend=backend, dtype=dtype, threads=threads, prompts=(32,),
                                        gen=16, depths=(128,), repeat=2, warmup=1))
        del model
        results = profile(settings, out, progress=False)["results"]
    for setting, res in zip(settings, results):
        name = next(k for k, r in rows.items() if setting.model.endswith(r["folder"]))
        rows[name][setting.backend] = {"ms_per_token": res["decode"][0]["median_ms"],
                                       "peak_rss_mib": res["run_peak_rss_bytes"] / 2**20,
                                       "peak_above_base_mib": (res["run_peak_rss_bytes"]
                                                               - res["memory"]["rss_base_bytes"]) / 2**20}
    full = rows["full"]
    for r in rows.values():
        r["param_reduction"] = full["params"] / r["params"]
        for backend in ("torch", "llamacpp"):
            r[backend]["speedup"] = full[backend]["ms_per_token"] / r[backend]["ms_per_token"]
            r[backend]["rss_ratio"] = r[backend]["peak_rss_mib"] / full[backend]["peak_rss_mib"]
            r[backend]["above_base_ratio"] = r[backend]["peak_above_base_mib"] / full[backend]["peak_above_base_mib"]
    return {"what": "profile", "rows": rows, "threads": threads, "cpu": cpu_model(), "load_before": load_before,
            "load_after": _load(), "profile_out": str(out)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["prune", "distill", "slicegpt", "minitron", "latency", "per-layer", "profile"])
    ap.add_argument("--preset", default="base", help="minitron: the teacher preset")
    ap.add_argument("--out", default="runs/minitron", help="minitron / profile: output folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--n", type=int, default=128, help="prune: calibration sequences of 512 tokens")
    ap.add_argument("--calib-dtype", default="fp32,bf16", help="prune: calibration forward dtypes to time")
    a = ap.parse_args()
    out = {"prune": lambda: bench_prune(a.threads, a.calib_dtype.split(","), a.n), "distill": lambda: bench_distill(a.threads, a.steps),
           "slicegpt": lambda: bench_slicegpt(a.threads), "latency": lambda: bench_latency(a.threads),
           "per-layer": lambda: bench_per_layer(a.threads, a.steps if "--steps" in sys.argv else 0, a.out),
           "profile": lambda: bench_profile(a.threads, Path(a.out)),
           "minitron": lambda: minitron_study(a.out, a.preset, tokens=a.steps * 16 * 128, threads=a.threads)}[a.what]()
    print(json.dumps(out, indent=2))




def _tiny_teacher(threads: int):
    """The trained tiny preset, 64 x 128 calibration windows of its training split, 32 validation windows."""
    from pocketlm.compress.calibration import CalibSpec, calibration_from_shards
    from pocketlm.data.shards import TokenSplit
    from pocketlm.interop import load_model
    from pocketlm.train.batches import eval_windows
    from pocketlm.train.distill import _folder_tokenizer
    from pocketlm.train.fixtures import trained_preset

    torch.set_num_threads(threads)
    teacher_dir, summary = trained_preset("tiny")
    data = summary["data_dir"]
    calib, _ = calibration_from_shards(data, CalibSpec(data, 64, 128), _folder_tokenizer(Path(teacher_dir)))
    return load_model(teacher_dir).eval(), calib, eval_windows(TokenSplit.open(data, "val"), 128, 32)


def bench_slicegpt(threads: int) -> dict:
    """SliceGPT (shared rotation) against Minitron embedding-channel pruning at equal parameters, right
    after pruning (no training): validation loss and KL to the unpruned tiny preset."""
    from pocketlm.compress.structured.driver import prune_structured
    from pocketlm.compress.structured.shapes import ROUND, Shape
    from pocketlm.compress.structured.slicegpt import slicegpt
    from pocketlm.model.costs import param_counts
    from pocketlm.train.distill import mean_forward_kl
    from pocketlm.train.loop import evaluate_loss

    model, calib, val = _tiny_teacher(threads)
    rows = []
    C = model.config.d_model
    for keep in (0.875, 0.75, 0.625):
        d = int(C * keep) // ROUND * ROUND
        sg = slicegpt(model, calib, d)
        p = param_counts(sg.config)["total"]
        base = Shape.of(model.config)
        # Minitron: embedding channels only, the residual width whose (tied) count is nearest SliceGPT's
        width = min(range(ROUND, C + 1, ROUND), key=lambda w: abs(
            Shape(base.n_layer, base.n_head, base.n_kv_head, base.intermediate, w).params(model.config) - p))
        mt = prune_structured(model, calib, Shape(base.n_layer, base.n_head, base.n_kv_head, base.intermediate,
                                                  width)).model
        for name, m in (("slicegpt", sg), ("minitron_embedding", mt)):
            rows.append({"method": name, "d_model": m.config.d_model, "params": param_counts(m.config)["total"],
                         "val_loss": evaluate_loss(m, val), "kl": mean_forward_kl(model, m, val)})
    return {"what": "slicegpt", "teacher_params": param_counts(model.config)["total"],
            "teacher_val_loss": evaluate_loss(model, val), "rows": rows, "cpu": cpu_model(), "load": _load()}


def bench_per_layer(threads: int, steps: int = 0, out: str = "runs/per_layer") -> dict:
    """Uniform against per-layer widths under the same parameter budget: the best ranked shape's
    validation loss and KL to the unpruned tiny preset right after pruning, per method; with `steps`,
    the 0.5x activation-pruned pair also distilled as `pocketlm shrink` distils (logit KL, cosine)."""
    from pocketlm.compress.structured.driver import layer_widths, prune_structured, target_shapes
    from pocketlm.compress.structured.shrink import ShrinkConfig, _train_config
    from pocketlm.train.distill import DistillConfig, distill, mean_forward_kl
    from pocketlm.train.fixtures import trained_preset
    from pocketlm.train.loop import evaluate_loss

    model, calib, val = _tiny_teacher(threads)
    scfg = ShrinkConfig(threads=threads, progress=False)
    rows = []
    for target in ("0.75x", "0.5x"):
        shapes = target_shapes(model.config, target, max_candidates=8)
        for method in ("activation", "taylor"):
            for per_layer in (False, True):
                res = prune_structured(model, calib, shapes, method=method, per_layer=per_layer)
                rows.append({"target": target, "method": method, "per_layer": per_layer, "shape": str(res.shape),
                             "params": res.params_after, **layer_widths(res.model.config),
                             "val_loss": evaluate_loss(res.model, val), "kl": mean_forward_kl(model, res.model, val)})
                if steps and target == "0.5x" and method == "activation":
                    tcfg = _train_config(scfg, Path(trained_preset("tiny")[1]["data_dir"]),
                                         Path(out) / f"per_layer_{per_layer}", steps, scfg.seed + 1, True)
                    kd = distill(model, res.model, tcfg, DistillConfig(temperature=1.0, alpha=1.0), resume=False)
                    rows[-1].update(distilled_tokens=steps * scfg.batch_size * scfg.seq_len,
                                    distilled_val_loss=kd.val_loss, distilled_kl=kd.kl_after)
    return {"what": "per-layer", "teacher_val_loss": evaluate_loss(model, val), "rows": rows, "cpu": cpu_model(),
            "load": _load()}


if __name__ == "__main__":
    main()
