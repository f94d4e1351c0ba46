"""Training throughput: `pocketlm train` vs a minimal plain PyTorch loop on the same model and data.

    python benchmarks/bench_train.py --preset tiny --steps 30 --threads 1

Both loops run in this process, interleaved (plain, pocketlm, plain, pocketlm, ...), so machine drift
hits both; each round reports tokens/s over its timed optimizer steps (the first `--warmup` steps of
each round are not timed). Prints the ratio pocketlm / plain (target >= 1.0), the same for bf16
autocast, the median of the per-round ratios (steadier on a loaded machine), and MFU against this
process's measured matmul throughput. `pocketlm train` runs the shared loop (pocketlm/train/loop.py)
that distillation and recovery fine-tuning also use.

    python benchmarks/bench_train.py --parallel-memory --preset base --steps 3

runs the shared loop under torchrun with 2 processes (gloo, CPU), once with DDP and once with FSDP, on
the preset's model and batch, and prints per process: peak RSS, parameter and AdamW-state bytes held
(FSDP's are the process's shards; expected: about half of DDP's at 2 processes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
import torch.nn.functional as F

from pocketlm.data.shards import TokenSplit, read_manifest
from pocketlm.model.transformer import Transformer
from pocketlm.train.config import TrainConfig, preset
from pocketlm.train.fixtures import bundled_data_dir
from pocketlm.train.metrics import measured_matmul_flops, read_log, train_flops_per_token
from pocketlm.train.trainer import train


def plain_loop(cfg, tokens: np.ndarray, steps: int, warmup: int, batch: int, seq_len: int, lr: float,
               bf16: bool) -> float:
    """The textbook loop: random windows, forward, cross-entropy, backward, clip, AdamW. Returns tokens/s."""
    torch.manual_seed(0)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    data = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    gen = torch.Generator().manual_seed(0)
    t0 = 0.0
    for step in range(steps + warmup):
        if step == warmup:
            t0 = time.perf_counter()
        starts = torch.randint(0, data.numel() - seq_len - 1, (batch,), generator=gen)
        rows = torch.stack([data[s:s + seq_len + 1] for s in starts.tolist()])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(rows[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * batch * seq_len / (time.perf_counter() - t0)


def pocketlm_loop(cfg, data_dir, steps: int, warmup: int, batch: int, seq_len: int, lr: float, bf16: bool) -> float:
    """`pocketlm train` (the Python API the CLI calls); tokens/s over the steps after `warmup`."""
    with tempfile.TemporaryDirectory() as tmp:
        tcfg = TrainConfig(data_dir=str(data_dir), out_dir=tmp, steps=steps + warmup, batch_size=batch,
                           seq_len=seq_len, lr=lr, warmup_steps=1, eval_every=10**9, ckpt_every=10**9,
                           autocast_bf16=bf16, progress=False)
        train(tcfg, cfg, resume=False)
        rows = [r for r in read_log(f"{tmp}/train_log.jsonl") if r["kind"] == "train"][warmup:]
        # per-step wall times as logged by the trainer (data sampling + forward/backward + optimizer)
        seconds = sum(batch * seq_len / r["tokens_per_s"] for r in rows)
        return len(rows) * batch * seq_len / seconds


def memory_worker(preset_name: str, steps: int) -> None:
    """One torchrun process: `steps` of the shared loop on random tokens; prints this process's memory."""
    import resource

    from pocketlm.train.loop import LanguageModeling, distributed, train_loop, window_batches

    data_dir = bundled_data_dir()
    cfg, ov = preset(preset_name, read_manifest(data_dir)["tokenizer"]["vocab_size"])
    torch.manual_seed(0)
    model = Transformer(cfg)
    windows = torch.randint(0, cfg.vocab_size, (ov["batch_size"] * steps, ov["seq_len"] + 1),
                            generator=torch.Generator().manual_seed(0))
    tcfg = TrainConfig(steps=steps, batch_size=ov["batch_size"], seq_len=ov["seq_len"], lr=ov["lr"], warmup_steps=0,
                       eval_every=10**9, ckpt_every=10**9, progress=False, threads=1,
                       parallel=os.environ["BENCH_PARALLEL"])
    run = train_loop(model, LanguageModeling(), window_batches(windows, ov["batch_size"]), tcfg)
    world, rank = distributed()
    print("RESULT " + json.dumps({"rank": rank, "world": world, "peak_rss_bytes": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss * 1024, **run.state_bytes, "tokens_per_s": run.tokens_per_s,
        "n_params": sum(p.numel() for p in model.parameters())}), flush=True)


def parallel_memory(preset_name: str, steps: int) -> dict:
    """DDP vs FSDP at 2 processes: each process's peak RSS and parameter / optimizer-state bytes."""
    out: dict = {"preset": preset_name, "steps": steps, "processes": 2}
    for engine in ("ddp", "fsdp"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
               "--memory-worker", "--preset", preset_name, "--steps", str(steps)]
        env = {**os.environ, "BENCH_PARALLEL": engine, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        rows = sorted((json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")),
                      key=lambda r: r["rank"])
        out[engine] = rows
    for key in ("peak_rss_bytes", "params", "optimizer"):
        out[f"fsdp_over_ddp_{key}"] = round(max(r[key] for r in out["fsdp"]) / max(r[key] for r in out["ddp"]), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="pocketlm train vs plain PyTorch loop throughput")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--parallel-memory", action="store_true", help="DDP vs FSDP memory at 2 processes")
    ap.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_worker:
        return memory_worker(args.preset, args.steps)
    if args.parallel_memory:
        from pocketlm.profile.system import cpu_model

        result = parallel_memory(args.preset, args.steps)
        print(json.dumps({**result, "cpu": cpu_model(), "load": os.getloadavg()}, indent=2))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = bundled_data_dir()
    vocab = read_manifest(data_dir)["tokenizer"]["vocab_size"]
    cfg, ov = preset(args.preset, vocab)
    batch, seq_len, lr = ov["batch_size"], ov["seq_len"], ov["lr"]
    tokens = TokenSplit.open(data_dir, "train").tokens
    res: dict[str, list[float]] = {"plain_fp32": [], "pocketlm_fp32": [], "plain_bf16": [], "pocketlm_bf16": []}
    for _ in range(args.rounds):
        for bf16 in (False, True):
            tag = "bf16" if bf16 else "fp32"
            res[f"plain_{tag}"].append(plain_loop(cfg, tokens, args.steps, args.warmup, batch, seq_len, lr, bf16))
            res[f"pocketlm_{tag}"].append(
                pocketlm_loop(cfg, data_dir, args.steps, args.warmup, batch, seq_len, lr, bf16))
    med = {k: statistics.median(v) for k, v in res.items()}
    flops_tok = train_flops_per_token(Transformer(cfg), seq_len)
    peak32, peak16 = measured_matmul_flops(torch.float32), measured_matmul_flops(torch.bfloat16)
    out = {
        "preset": args.preset, "threads": torch.get_num_threads(), "batch": batch, "seq_len": seq_len,
        "tokens_per_s": {k: round(v) for k, v in med.items()},
        "ratio_pocketlm_over_plain_fp32": round(med["pocketlm_fp32"] / med["plain_fp32"], 3),
        "ratio_pocketlm_over_plain_bf16": round(med["pocketlm_bf16"] / med["plain_bf16"], 3),
        # each round runs plain then pocketlm back to back: the median of the per-round ratios is the
        # statistic least moved by load that changes between rounds on a shared machine
        "median_round_ratio": {tag: round(statistics.median(p / q for p, q in zip(res[f"pocketlm_{tag}"],
                                                                                  res[f"plain_{tag}"])), 3)
                               for tag in ("fp32", "bf16")},
        "speedup_bf16_over_fp32_pocketlm": round(med["pocketlm_bf16"] / med["pocketlm_fp32"], 3),
        "train_flops_per_token": round(flops_tok),
        "matmul_peak_gflops": {"fp32": round(peak32 / 1e9, 1), "bf16": round(peak16 / 1e9, 1)},
        "mfu": {"pocketlm_fp32": round(med["pocketlm_fp32"] * flops_tok / peak32, 3),
                "pocketlm_bf16": round(med["pocketlm_bf16"] * flops_tok / peak16, 3)},
        "rounds": {k: [round(x) for x in v] for k, v in res.items()},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
