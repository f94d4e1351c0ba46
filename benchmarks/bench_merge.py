"""Merging three SmolLM-135M-shaped models with TIES: pocketlm merge vs mergekit 0.1.5, wall time and
peak RSS, in the same run; then proxy-tuned decode throughput.

Merge: three Hugging Face directories (random base + two noisy "fine-tunes", bf16 like SmolLM's
release), one TIES recipe (weight 0.5, density 0.5 each), run by each tool in its own subprocess
(peak RSS is the child's ru_maxrss; wall time covers the whole process, imports included, and the
merge call alone). The tools alternate for `--repeat` rounds. The outputs are compared tensor by tensor.

Proxy decode: base = SmolLM-135M-shaped, expert = antiexpert shape = 6 layers x 256 wide, same vocab.
tokens/s of the proxy decoding a batch of `--batch` prompts vs the same proxy run one prompt at a time
(three models one after another, no batching), and the base alone on the batch.

    python benchmarks/bench_merge.py [--repeat 1] [--dtype bfloat16] [--skip-proxy]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SMOLLM_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                   num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                   rms_norm_eps=1e-5, tie_word_embeddings=True, rope_theta=10000.0)
RECIPE = """merge_method: ties
base_model: {d}/m0
models:
  - model: {d}/m1
    parameters: {{weight: 0.5, density: 0.5}}
  - model: {d}/m2
    parameters: {{weight: 0.5, density: 0.5}}
dtype: {dtype}
"""
RUNNERS = {
    "pocketlm": "from pocketlm.compress.merge import merge; merge({recipe!r}, {out!r}, overwrite=True)",
    "mergekit": ("import yaml; from mergekit.config import MergeConfiguration; from mergekit.merge import run_merge; "
                 "from mergekit.options import MergeOptions; run_merge(MergeConfiguration.model_validate("
                 "yaml.safe_load(open({recipe!r}))), {out!r}, MergeOptions(quiet=True, copy_tokenizer=False))"),
}


def make_models(root: Path, dtype: torch.dtype) -> None:
    import transformers as T

    torch.manual_seed(0)
    base = T.LlamaForCausalLM(T.LlamaConfig(**SMOLLM_135M)).to(dtype)
    base.save_pretrained(root / "m0")
    for i in (1, 2):
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in base.parameters():
                p.add_(0.002 * torch.randn(p.shape, generator=gen).to(dtype))
        base.save_pretrained(root / f"m{i}")


def run_tool(name: str, recipe: Path, out: Path) -> dict:
    code = ("import time, json; t0 = time.perf_counter(); " + RUNNERS[name].format(recipe=str(recipe), out=str(out))
            + "; print(json.dumps({'merge_s': time.perf_counter() - t0}))")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{name} failed:\n{stderr[-2000:]}")
    inner = json.loads(stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "merge_s": inner["merge_s"], "peak_rss_mib": usage.ru_maxrss / 1024}


def max_difference(a: Path, b: Path) -> float:
    from safetensors import safe_open

    worst = 0.0
    fa = {n: f for f in a.glob("*.safetensors") for n in safe_open(str(f), "pt").keys()}
    fb = {n: f for f in b.glob("*.safetensors") for n in safe_open(str(f), "pt").keys()}
    if set(fa) != set(fb):
        raise AssertionError(f"tensor names differ: {sorted(set(fa) ^ set(fb))[:5]}")
    for n in fa:
        x = safe_open(str(fa[n]), "pt").get_tensor(n).float()
        y = safe_open(str(fb[n]), "pt").get_tensor(n).float()
        worst = max(worst, (x - y).abs().max().item())
    return worst


def bench_merge(repeat: int, dtype_name: str) -> dict:
    dtype = getattr(torch, dtype_name)
    with tempfile.TemporaryDirectory(prefix="bench_merge_") as tmp:
        root = Path(tmp)
        make_models(root, dtype)
        recipe = root / "ties.yaml"
        recipe.write_text(RECIPE.format(d=root, dtype=dtype_name))
        runs: dict[str, list[dict]] = {n: [] for n in RUNNERS}
        for _ in range(repeat):
            for name in RUNNERS:
                runs[name].append(run_tool(name, recipe, root / f"out_{name}"))
        diff = max_difference(root / "out_pocketlm", root / "out_mergekit")
    med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in runs.items()}
    ratios = {k: med["pocketlm"][k] / med["mergekit"][k] for k in med["pocketlm"]}
    return {"runs": runs, "median": med, "pocketlm_over_mergekit": ratios, "max_abs_diff": diff}


def bench_proxy(batch: int, new: int) -> dict:
    from pocketlm.runtime.proxy import ProxyTuned
    from pocketlm.model.config import ModelConfig
    from pocketlm.model.transformer import Transformer

    torch.manual_seed(0)
    base = Transformer(ModelConfig(vocab_size=49152, d_model=576, n_layer=30, n_head=9, n_kv_head=3,
                                   intermediate_size=1536, max_seq_len=2048)).eval()
    small = ModelConfig(vocab_size=49152, d_model=256, n_layer=6, n_head=4, n_kv_head=2, intermediate_size=688,
                        max_seq_len=2048)
    expert, anti = Transformer(small).eval(), Transformer(small).eval()
    proxy = ProxyTuned(base, expert, anti)
    prompts = torch.randint(0, 49152, (batch, 32))

    def timed(model, ids) -> float:
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=new)
        return time.perf_counter() - t0

    timed(proxy, prompts[:1, :8])  # warm-up
    batched = timed(proxy, prompts)
    one_by_one = sum(timed(proxy, prompts[i:i + 1]) for i in range(batch))
    base_alone = timed(base, prompts)
    tokens = batch * new
    return {"batch": batch, "new_tokens": new, "proxy_batched_tok_s": tokens / batched,
            "proxy_unbatched_tok_s": tokens / one_by_one, "base_batched_tok_s": tokens / base_alone,
            "batched_over_unbatched": one_by_one / batched, "proxy_over_base": base_alone / batched}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--skip-proxy", action="store_true")
    args = ap.parse_args()
    try:
        import mergekit  # noqa: F401
    except ImportError:
        sys.exit("mergekit is not installed: pip install -c constraints.txt -e .[mergekit]")
    payload = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "load_avg": os.getloadavg(), "dtype": args.dtype}
    m = bench_merge(args.repeat, args.dtype)
    payload["merge"] = m
    print("TIES, 3 x SmolLM-135M shape     pocketlm   mergekit   ratio")
    for k in ("wall_s", "merge_s", "peak_rss_mib"):
        print(f"  {k:28s} {m['median']['pocketlm'][k]:9.1f} {m['median']['mergekit'][k]:9.1f} "
              f"{m['pocketlm_over_mergekit'][k]:7.2f}")
    print(f"  max |pocketlm - mergekit| = {m['max_abs_diff']:.3g}")
    if not args.skip_proxy:
        p = bench_proxy(args.batch, args.new)
        payload["proxy"] = p
        print(f"proxy decode: batched {p['proxy_batched_tok_s']:.1f} tok/s, one prompt at a time "
              f"{p['proxy_unbatched_tok_s']:.1f} tok/s ({p['batched_over_unbatched']:.2f}x); base alone "
              f"{p['base_batched_tok_s']:.1f} tok/s (proxy runs at {p['proxy_over_base']:.2f}x of it)")
    payload["load_avg_end"] = os.getloadavg()
    print(json.dumps(payload))


if __name__ == "__main__":
    main()
