"""Insight 7: quality filtering pays at equal tokens — the same preset trained for the same number of tokens
on a corpus polluted with low-quality documents, once through pocketlm's quality filters and once with them
switched off; both scored on the same held-out clean stories.

The pollution is made from the bundled corpus itself (seeded), in the shapes web filters exist for:
word salad (a story's words shuffled: fluent-looking, meaningless), spam (one line repeated), symbol noise
('#' and '...' runs) and navigation boilerplate."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import replace
from pathlib import Path

from pocketlm.insights.analysis import verdict
from pocketlm.insights.record import Record
from pocketlm.survey.figures import write_csv
from pocketlm.utils import atomic_write_text

CLAIM = ("Data quality matters more than quantity for SLMs: filtering the pre-training corpus improves the "
         "model at the same number of training tokens.")
PRESET = "micro"  # the cheapest preset: two full runs fit a loaded 2-core machine
JUNK_SHARE = 0.5  # junk documents per clean document
KEEP_QUANTILE = 0.7  # the filtered run keeps documents up to this perplexity quantile (CCNet's head + middle)
STEPS, QUICK_STEPS = 600, 40
MARGIN = 0.02  # nats: a difference smaller than this is noise between two short runs


def junk_documents(texts: list[str], share: float = JUNK_SHARE, seed: int = 0) -> list[str]:
    """Low-quality documents derived from `texts`, one of four kinds in turn."""
    rng = random.Random(seed)
    out = []
    for i in range(int(len(texts) * share)):
        words = rng.choice(texts).split()
        kind = i % 4
        if kind == 0:  # word salad
            rng.shuffle(words)
            out.append(" ".join(words))
        elif kind == 1:  # spam: one sentence over and over
            line = " ".join(words[:12])
            out.append("\n".join([line] * rng.randint(8, 20)))
        elif kind == 2:  # symbol noise
            out.append(" ".join(w + (" ### ..." if j % 3 == 0 else "") for j, w in enumerate(words)))
        else:  # navigation boilerplate around a fragment
            nav = "Home | Login | Sign up | Cart | FAQ | Contact | Terms | Privacy"
            out.append("\n".join([nav] * 6 + [" ".join(words[:15])] + [nav] * 6))
    return out


def permissive():
    """A HeuristicConfig no document fails (every Gopher/C4 rule off, lorem ipsum aside)."""
    from pocketlm.data.quality import HeuristicConfig

    return HeuristicConfig(min_words=1, max_words=10**9, min_mean_word_len=0.0, max_mean_word_len=1e9,
                           max_symbol_ratio=1e9, max_bullet_lines=1.1, max_ellipsis_lines=1.1, min_alpha_words=0.0,
                           min_stop_words=0, max_dup_line_frac=1.1, max_dup_para_frac=1.1,
                           max_top_ngram_frac=(1.1,) * 3, max_dup_ngram_frac=(1.1,) * 6)


def prepared(out_dir: Path, filtered: bool) -> tuple[Path, dict]:
    """Shards of bundled corpus + junk, with the bundled tokenizer (so losses compare); cached in out_dir."""
    from pocketlm.data import bundled_corpus_files
    from pocketlm.data.prepare import PrepareConfig, prepare
    from pocketlm.data.quality import HeuristicConfig
    from pocketlm.data.readers import read_documents
    from pocketlm.data.shards import MANIFEST
    from pocketlm.train.fixtures import BUNDLED_MIN_WORDS, bundled_data_dir

    junk = out_dir / "junk.jsonl"
    if not junk.is_file():
        texts = [d.text for d in read_documents(bundled_corpus_files())]
        atomic_write_text(junk, "".join(json.dumps({"text": t}) + "\n" for t in junk_documents(texts)))
    dest = out_dir / ("filtered" if filtered else "unfiltered")
    if (dest / MANIFEST).is_file():
        return dest, json.loads((dest / MANIFEST).read_text())
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cfg = PrepareConfig([*map(str, bundled_corpus_files()), str(junk)], str(tmp),
                        tokenizer=str(bundled_data_dir() / "tokenizer.json"))
    if filtered:
        cfg = replace(cfg, heuristics=HeuristicConfig(min_words=BUNDLED_MIN_WORDS),
                      max_perplexity_quantile=KEEP_QUANTILE)
    else:
        cfg = replace(cfg, heuristics=permissive(), max_perplexity_quantile=1.0)
    manifest = prepare(cfg, progress=False)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest, manifest


def junk_kept(manifest: dict) -> int:
    return manifest["sources"].get("junk", {}).get("documents_kept", 0)


def held_out_loss(model_dir: Path, seq_len: int = 128, windows: int = 64) -> float:
    """Mean next-token loss on the bundled corpus's validation split (clean stories no run trained on)."""
    from pocketlm.data.shards import TokenSplit
    from pocketlm.runtime import open_model
    from pocketlm.train.batches import eval_windows
    from pocketlm.train.fixtures import bundled_data_dir
    from pocketlm.train.loop import evaluate_loss

    val = eval_windows(TokenSplit.open(bundled_data_dir(), "val"), seq_len, windows)
    return evaluate_loss(open_model(model_dir, "fp32"), val)


def run(out_dir: Path, quick: bool = False) -> Record:
    from pocketlm.train.fixtures import trained_preset

    steps = QUICK_STEPS if quick else STEPS
    rows, loss = [], {}
    for filtered in (True, False):
        data_dir, manifest = prepared(out_dir, filtered)
        label = "filtered" if filtered else "unfiltered"
        model_dir, summary = trained_preset(PRESET, data_dir=data_dir, steps=steps, hq_weight=0.0,
                                            warmup_steps=max(steps // 10, 1), eval_every=steps, ckpt_every=steps)
        loss[label] = held_out_loss(model_dir)
        train_tokens = manifest["splits"]["train"]["tokens"]
        rows.append({"corpus": label, "documents_kept": manifest["documents"]["kept"],
                     "junk_documents_kept": junk_kept(manifest), "train_split_tokens": train_tokens,
                     "tokens_trained": summary["tokens"], "held_out_loss": round(loss[label], 4)})
    gain = loss["unfiltered"] - loss["filtered"]
    checks = [gain > MARGIN]
    csv = write_csv(rows, out_dir / "filtering.csv")
    fig = _figure(rows, out_dir / "filtering.png", steps)
    junk_total = len((out_dir / "junk.jsonl").read_text().splitlines())
    summary = (f"{PRESET} preset, {rows[0]['tokens_trained']:,} tokens each: held-out loss {loss['filtered']:.3f} "
               f"filtered vs {loss['unfiltered']:.3f} unfiltered ({gain:+.3f} nats); the filters kept "
               f"{rows[0]['junk_documents_kept']} of {junk_total} junk documents.")
    return Record("filtering", "Quality filtering at equal tokens", CLAIM,
                  "pocketlm insights filtering --out insights_out",
                  {"held_out_loss": {k: round(v, 4) for k, v in loss.items()}, "gain_nats": round(gain, 4),
                   "junk_kept": {r["corpus"]: f"{r['junk_documents_kept']} / {junk_total}" for r in rows},
                   "tokens_trained": rows[0]["tokens_trained"]},
                  verdict(checks), summary, str(fig), str(csv))


def _figure(rows: list[dict], path: Path, steps: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pocketlm.survey.figures import save_figure

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.bar([r["corpus"] for r in rows], [r["held_out_loss"] for r in rows], color=["tab:green", "tab:gray"])
    for i, r in enumerate(rows):
        ax.annotate(f"{r['held_out_loss']:.3f}\n{r['junk_documents_kept']} junk docs kept", (i, r["held_out_loss"]),
                    ha="center", fontsize=8, xytext=(0, 3), textcoords="offset points")
    ax.set_ylabel("held-out loss on clean stories (nats/token)")
    ax.set_title(f"{PRESET} preset, {steps} steps, same tokens", fontsize=9)
    ax.set_ylim(min(r["held_out_loss"] for r in rows) * 0.9, max(r["held_out_loss"] for r in rows) * 1.08)
    fig.tight_layout()
    return save_figure(fig, path)
