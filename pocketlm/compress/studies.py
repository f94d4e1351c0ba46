"""Reproductions of the merging papers' findings on this machine, one function (and command) each:

- `warm_study`: WARM / model soups. Fine-tune one checkpoint k times with different data orders;
  the weight average (a `linear` mergekit recipe run by pocketlm merge) against each fine-tune.
- `proxy_study`: proxy tuning. A larger base steered by a small model tuned on a held-out domain
  (WikiText-2) against its untuned self; how much of the base-vs-tuned-base gap the proxy closes.
- `upcycle_study`: sparse upcycling. An upcycled MoE (top-1 routing: the dense model's active
  parameters plus the routers) and the dense model, each trained N more tokens on the same batches.

Each writes `<name>.json` and `<name>.png` to its folder and returns the JSON payload.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from pocketlm.compress.tune import TuneConfig, continue_training, validation_loss
from pocketlm.utils import atomic_write_text

SHARED_TEXT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "text"
WIKITEXT = SHARED_TEXT / "wikitext-2"


def _bundled(preset: str = "tiny") -> tuple[Path, Any, Any, np.ndarray, np.ndarray]:
    """(model dir, model, tokenizer dir data, train tokens, val tokens) of a trained preset on the bundled corpus."""
    from pocketlm.data.shards import TokenSplit
    from pocketlm.interop import load_model
    from pocketlm.train.fixtures import trained_preset

    model_dir, summary = trained_preset(preset)
    data_dir = Path(summary["data_dir"])
    return (model_dir, load_model(model_dir), data_dir, TokenSplit.open(data_dir, "train").tokens,
            TokenSplit.open(data_dir, "val").tokens)


def _bar(path: Path, labels: list[str], values: list[float], title: str, ylabel: str = "validation loss (nats/token)",
         highlight: tuple[str, ...] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    colors = ["tab:orange" if lab in highlight else "tab:blue" for lab in labels]
    ax.bar(labels, values, color=colors)
    lo, hi = min(values), max(values)
    ax.set_ylim(lo - 0.6 * (hi - lo + 1e-3), hi + 0.3 * (hi - lo + 1e-3))
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.4f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _finish(out_dir: Path, name: str, payload: dict) -> dict:
    atomic_write_text(out_dir / f"{name}.json", json.dumps(payload, indent=2))
    return payload


def warm_study(out_dir: str | Path, k: int = 3, steps: int = 60, lr: float = 5e-4, batch_size: int = 8,
               seq_len: int = 128, preset: str = "tiny", eval_windows: int = 48) -> dict:
    """WARM: k fine-tunes of one checkpoint (data order seeds 0..k-1) and their weight average."""
    import copy

    from pocketlm.compress.merge import merge, parse_recipe
    from pocketlm.interop import load_model, load_tokenizer, save_hf

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir, base, _, train, val = _bundled(preset)
    tok = load_tokenizer(model_dir)
    t0 = time.perf_counter()
    losses = {"base": validation_loss(base, val, seq_len, eval_windows)}
    dirs = []
    for seed in range(k):
        ft = copy.deepcopy(base)
        continue_training(ft, train, TuneConfig(steps=steps, lr=lr, batch_size=batch_size, seq_len=seq_len,
                                                warmup_steps=max(1, steps // 10), seed=100 + seed))
        losses[f"fine-tune {seed}"] = validation_loss(ft, val, seq_len, eval_windows)
        dirs.append(save_hf(ft, out_dir / "finetunes" / str(seed), tok))
    tune_s = time.perf_counter() - t0
    recipe = "merge_method: linear\nmodels:\n" + "".join(f"  - model: {d}\n    parameters: {{weight: 1.0}}\n"
                                                         for d in dirs)
    (out_dir / "warm.yaml").write_text(recipe)
    result = merge(parse_recipe(recipe), out_dir / "warm", overwrite=True)
    warm = load_model(out_dir / "warm")
    losses["WARM (average)"] = validation_loss(warm, val, seq_len, eval_windows)
    individual = [losses[f"fine-tune {i}"] for i in range(k)]
    payload = {"k": k, "steps": steps, "lr": lr, "batch_size": batch_size, "seq_len": seq_len, "preset": preset,
               "val_loss": losses, "mean_individual": float(np.mean(individual)), "best_individual": min(individual),
               "warm_minus_mean": losses["WARM (average)"] - float(np.mean(individual)),
               "warm_minus_best": losses["WARM (average)"] - min(individual),
               "finetune_seconds": tune_s, "merge": result.to_dict()}
    _bar(out_dir / "warm.png", list(losses), list(losses.values()),
         f"WARM on {preset}: {k} fine-tunes x {steps} steps, then their weight average",
         highlight=("WARM (average)",))
    return _finish(out_dir, "warm", payload)


def _domain_tokens(tokenizer_dir: Path, domain_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    from pocketlm.data.tokenizer import TextTokenizer

    if not (domain_dir / "valid.txt").is_file():
        raise FileNotFoundError(f"{domain_dir}: expected valid.txt (tuning) and test.txt (evaluation), as in "
                                "WikiText-2; pass --domain DIR")
    tok = TextTokenizer.load(tokenizer_dir / "tokenizer.json")
    return tuple(np.asarray(tok.encode((domain_dir / f).read_text()), dtype=np.int64)
                 for f in ("valid.txt", "test.txt"))


def proxy_study(out_dir: str | Path, base_preset: str = "tiny", small_preset: str = "micro", steps: int = 150,
                lr: float = 2e-3, batch_size: int = 8, seq_len: int = 128, domain: Path = WIKITEXT,
                eval_windows: int = 48, alphas: tuple[float, ...] = (0.5, 1.5, 2.0, 3.0)) -> dict:
    """Proxy tuning: how much of the gap between `base_preset` and its domain fine-tune a proxy closes."""
    import copy

    from pocketlm.runtime.proxy import ProxyTuned, decode_cost
    from pocketlm.interop import load_tokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base_dir, base, _, _, _ = _bundled(base_preset)
    small_dir, anti, _, _, _ = _bundled(small_preset)
    tune_tokens, test_tokens = _domain_tokens(small_dir, Path(domain))
    cfg = TuneConfig(steps=steps, lr=lr, batch_size=batch_size, seq_len=seq_len, warmup_steps=max(1, steps // 10))
    expert = copy.deepcopy(anti)
    continue_training(expert, tune_tokens, cfg)
    tuned_base = copy.deepcopy(base)
    continue_training(tuned_base, tune_tokens, cfg)
    proxy = ProxyTuned(base, expert, anti)
    losses = {name: validation_loss(m, test_tokens, seq_len, eval_windows) for name, m in (
        (f"base ({base_preset})", base), (f"antiexpert ({small_preset})", anti),
        (f"expert ({small_preset}, tuned)", expert),
        ("proxy-tuned base", proxy), (f"tuned base ({base_preset})", tuned_base))}
    lb, lp, lt = losses[f"base ({base_preset})"], losses["proxy-tuned base"], losses[f"tuned base ({base_preset})"]
    sweep = {}
    for a in alphas:  # the paper fixes alpha = 1; how the gap closed moves with it
        proxy.alpha = a
        sweep[a] = validation_loss(proxy, test_tokens, seq_len, eval_windows)
    proxy.alpha = 1.0
    cost = decode_cost(proxy, load_tokenizer(base_dir), ["Once upon a time", "The little dog"], 32)
    for who in ("base", "proxy"):
        cost[who].pop("texts")
    payload = {"domain": str(domain), "steps": steps, "lr": lr, "batch_size": batch_size, "seq_len": seq_len,
               "test_loss": losses, "gap_closed": (lb - lp) / (lb - lt) if lb != lt else float("nan"),
               "alpha_sweep": {str(a): {"test_loss": v, "gap_closed": (lb - v) / (lb - lt)} for a, v in sweep.items()},
               "decode_cost": cost}
    _bar(out_dir / "proxy.png", [k.replace(" (", "\n(") for k in losses], list(losses.values()),
         f"Proxy tuning on {Path(domain).name}: gap closed {payload['gap_closed']:.0%}",
         ylabel="test loss (nats/token)", highlight=("proxy-tuned base",))
    return _finish(out_dir, "proxy", payload)


def upcycle_study(out_dir: str | Path, n_experts: int = 4, steps: int = 300, lr: float = 5e-4, batch_size: int = 8,
                  seq_len: int = 128, preset: str = "tiny", noise: float = 0.01, eval_every: int = 50,
                  eval_windows: int = 32) -> dict:
    """Upcycled MoE (top-1, equal active parameters) vs the dense model, trained on the same batches."""
    import copy

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pocketlm.compress.upcycle import moe_costs, upcycle

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _, dense, _, train, val = _bundled(preset)
    moe = upcycle(dense, n_experts, 1, noise=noise)
    cfg = TuneConfig(steps=steps, lr=lr, batch_size=batch_size, seq_len=seq_len, warmup_steps=max(1, steps // 10))
    curves, seconds = {}, {}
    for name, model in (("dense", copy.deepcopy(dense)), (f"upcycled MoE ({n_experts}x top-1)", moe)):
        t0 = time.perf_counter()
        res = continue_training(model, train, cfg, evaluate=lambda m: validation_loss(m, val, seq_len, eval_windows),
                                eval_every=eval_every)
        curves[name], seconds[name] = res.evals, time.perf_counter() - t0
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for name, pts in curves.items():
        ax.plot([t for t, _ in pts], [v for _, v in pts], marker="o", label=name)
    ax.set_xlabel("tokens trained after upcycling")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"Sparse upcycling of {preset}: same batches, same active parameters", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "upcycle.png", dpi=110)
    plt.close(fig)
    names = list(curves)
    payload = {"preset": preset, "n_experts": n_experts, "top_k": 1, "noise": noise, "steps": steps, "lr": lr,
               "batch_size": batch_size, "seq_len": seq_len, "curves": curves, "train_seconds": seconds,
               "final_val_loss": {n: curves[n][-1][1] for n in names},
               "moe_minus_dense": curves[names[1]][-1][1] - curves[names[0]][-1][1],
               "params": {"dense": moe_costs(dense.config), "moe": moe_costs(moe.config)}}
    return _finish(out_dir, "upcycle", payload)


STUDIES = {"warm": warm_study, "proxy": proxy_study, "upcycle": upcycle_study}
