"""µP learning-rate transfer: sweep the learning rate at a base width and at a 4x wider model, under µP
and under standard parametrisation; under µP the best learning rate should not move.

    python -m pocketlm.train.lr_transfer --out docs/figures/lr_transfer   (bundled corpus)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from pocketlm.train.config import TrainConfig, family_config
from pocketlm.train.fixtures import bundled_data_dir
from pocketlm.train.trainer import train
from pocketlm.utils import atomic_path, atomic_write_text

DEFAULT_LRS = (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2, 6.4e-2)


def lr_sweep(data_dir: Path, widths: tuple[int, ...], lrs: tuple[float, ...], mup: bool, steps: int,
             base_width: int, n_layer: int = 2, n_head: int = 4, seq_len: int = 64, batch: int = 8,
             threads: int | None = None) -> dict:
    """Validation loss after `steps` WSD steps for every (width, lr); the best lr per width."""
    vocab = json.loads((data_dir / "manifest.json").read_text())["tokenizer"]["vocab_size"]
    losses: dict[int, dict[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for width in widths:
            losses[width] = {}
            for lr in lrs:
                tcfg = TrainConfig(data_dir=str(data_dir), out_dir=f"{tmp}/{width}_{lr}", steps=steps, lr=lr,
                                   batch_size=batch, seq_len=seq_len, warmup_steps=steps // 10, hq_weight=0.0,
                                   mup=mup, mup_base_width=base_width, eval_every=steps, ckpt_every=steps,
                                   eval_windows=32, threads=threads, progress=False)
                try:
                    val = train(tcfg, family_config(width, n_layer, n_head, vocab)).final_val_loss
                except FloatingPointError:
                    val = float("inf")  # diverged
                losses[width][lr] = val
    best = {w: min(v, key=v.get) for w, v in losses.items()}
    return {"mup": mup, "steps": steps, "base_width": base_width, "losses": losses, "best_lr": best}


def plot(runs: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), sharey=True)
    for ax, run in zip(axes if len(runs) > 1 else [axes], runs):
        for width, by_lr in run["losses"].items():
            lrs = sorted(by_lr)
            line, = ax.plot(lrs, [by_lr[lr] for lr in lrs], "o-", label=f"d_model {width}")
            best = run["best_lr"][width]
            ax.plot([best], [by_lr[best]], "*", ms=14, color=line.get_color())
        ax.set_xscale("log", base=2)
        ax.set_xlabel("learning rate (hidden matrices at base width)")
        ax.set_title("µP" if run["mup"] else "standard parametrisation")
        ax.grid(alpha=0.3)
        ax.legend()
    (axes[0] if len(runs) > 1 else axes).set_ylabel(f"validation loss after {runs[0]['steps']} steps")
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/lr_transfer"))
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--lrs", type=float, nargs="+", default=list(DEFAULT_LRS))
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    data = bundled_data_dir()
    runs = [lr_sweep(data, tuple(args.widths), tuple(args.lrs), mup, args.steps, args.widths[0],
                     threads=args.threads) for mup in (True, False)]
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "lr_transfer.json", json.dumps(
        [{**r, "losses": {str(w): {str(lr): v for lr, v in d.items()} for w, d in r["losses"].items()}} for r in runs],
        indent=2))
    plot(runs, args.out / "lr_transfer.png")
    for r in runs:
        print(("muP" if r["mup"] else "SP "), "best lr per width:", r["best_lr"])


if __name__ == "__main__":
    main()
