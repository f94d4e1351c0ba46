"""Insight 1: GQA vs MHA at equal parameters — KV-cache memory and decode latency against context depth."""

from __future__ import annotations

from pathlib import Path

from pocketlm.insights.analysis import parting_point, verdict
from pocketlm.insights.bench import by_depth, match_params, profile_models, total_params, write_configs
from pocketlm.insights.plots import line_panels
from pocketlm.insights.record import Record
from pocketlm.model import costs
from pocketlm.model.config import ModelConfig
from pocketlm.survey.figures import write_csv

CLAIM = ("Grouped-query attention shrinks the KV cache by n_head / n_kv_head and so lowers decode latency and "
         "memory at long contexts; at short contexts the cache is too small for the attention type to matter.")
DEPTHS = (128, 512, 1024, 2048, 4096)
QUICK_DEPTHS = (64, 256, 512)
PART_AT = 0.10  # curves "part" once decode latency differs by more than 10 % and stays apart


def configs(max_depth: int, d_model: int = 512, n_layer: int = 8, n_head: int = 8, n_kv_head: int = 2,
            vocab: int = 32000) -> dict[str, ModelConfig]:
    """An MHA model and a GQA model with the same total parameters (the GQA model's FFN is wider)."""
    mha = ModelConfig(vocab_size=vocab, d_model=d_model, n_layer=n_layer, n_head=n_head, intermediate_size=1376,
                      max_seq_len=max_depth + 64, tie_embeddings=True)
    gqa = match_params(mha.replace(n_kv_head=n_kv_head), total_params(mha))
    return {"MHA": mha, f"GQA-{n_head // n_kv_head}x": gqa}


def run(out_dir: Path, quick: bool = False, depths: tuple[int, ...] | None = None, threads: int = 1) -> Record:
    depths = depths or (QUICK_DEPTHS if quick else DEPTHS)
    cfgs = configs(max(depths))
    paths = write_configs(cfgs, out_dir)
    # the fastest of 3 rounds x 32 tokens per depth: a ~10 ms step on a loaded machine is rarely uninterrupted
    results = profile_models(paths, rounds=2 if quick else 3, dtype="fp32", threads=threads, prompts=(16,),
                             gen=4 if quick else 32, depths=depths, repeat=1, warmup=0, pack=True)
    rows, decode, kv = [], {}, {}
    for label, cfg in cfgs.items():
        dec = by_depth(results[label])
        decode[label] = [dec[d] for d in depths]
        kv[label] = [costs.kv_cache_bytes(cfg, d, dtype_bytes=4) / 2**20 for d in depths]
        rows += [{"model": label, "params": total_params(cfg), "n_kv_head": cfg.kv_heads(0),
                  "intermediate_size": cfg.intermediate_size, "depth": d, "kv_cache_mb": round(k, 2),
                  "decode_ms": round(ms, 3)} for d, k, ms in zip(depths, kv[label], decode[label])]
    (mha, gqa), labels = decode.values(), list(cfgs)
    parted = parting_point(list(depths), mha, gqa, PART_AT)
    measured_kv = {lab: results[lab]["memory"]["kv_cache_bytes"] / 2**20 for lab in labels}
    kv_ratio = measured_kv[labels[0]] / measured_kv[labels[1]]
    expected = cfgs[labels[0]].kv_heads(0) / cfgs[labels[1]].kv_heads(0)
    short, long = mha[0] / gqa[0], mha[-1] / gqa[-1]
    checks = [abs(kv_ratio - expected) < 0.05 * expected, short < 1 + PART_AT, parted is not None]
    csv = write_csv(rows, out_dir / "gqa_vs_mha.csv")
    fig = line_panels(out_dir / "gqa_vs_mha.png",
                      f"MHA vs GQA at equal parameters ({total_params(cfgs['MHA']) / 1e6:.1f}M, fp32, "
                      f"{threads} thread, random weights)", "context depth (tokens)",
                      [("KV cache (MB, fp32)", {lab: (list(depths), kv[lab]) for lab in labels}),
                       ("decode latency (ms / token, best of repeats)",
                        {lab: (list(depths), decode[lab]) for lab in labels})],
                      logx=True, mark_x=parted, mark_label="curves part")
    where = f"they part from depth {parted}" if parted else f"they do not part by depth {depths[-1]}"
    summary = (f"KV cache {kv_ratio:.2f}x smaller with GQA (analytic {expected:.0f}x); decode MHA/GQA "
               f"{short:.2f}x at depth {depths[0]} and {long:.2f}x at depth {depths[-1]}: {where} "
               f"(> {PART_AT:.0%} apart from there on).")
    return Record("gqa", "GQA vs MHA against context depth", CLAIM,
                  "pocketlm insights gqa --out insights_out", {
                      "params": {lab: total_params(c) for lab, c in cfgs.items()},
                      "kv_cache_mb_at_longest": {k: round(v, 2) for k, v in measured_kv.items()},
                      "decode_ratio_mha_over_gqa": {d: round(a / b, 3) for d, a, b in zip(depths, mha, gqa)},
                      "parting_depth": parted}, verdict(checks), summary, str(fig), str(csv))
