"""`pocketlm prune`, `merge`, `upcycle`, `moe`, `proxy`, `merge-study`: thin layers over pocketlm.compress.

Each command group registers from its own function, so other shrink commands (prune, quantize)
add theirs beside these without touching them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console


def register(app: typer.Typer) -> None:
    register_prune(app)
    register_merge(app)
    register_moe(app)
    register_proxy(app)
    register_studies(app)
    register_quantize(app)


def _save(model, out: Path, tokenizer) -> str:
    """Hugging Face directory when a family expresses the model, else a pocketlm checkpoint; the format used."""
    from pocketlm.interop import UnsupportedModelError, save_hf, save_native

    try:
        save_hf(model, out, tokenizer)
        return "hf"
    except UnsupportedModelError as e:
        typer.echo(f"note: {e}; saved as a pocketlm checkpoint", err=True)
        save_native(model, out)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out))
        return "pocketlm"


def register_merge(app: typer.Typer) -> None:
    @app.command("merge")
    def merge_cmd(
        recipe: Path = typer.Argument(..., help="a mergekit YAML recipe (merge_method, base_model, models/slices, "
                                      "parameters), used unchanged"),
        out: Path = typer.Option(..., "--out", help="Hugging Face directory to write (atomically)"),
        seed: int = typer.Option(0, help="DARE's random drop: each tensor draws from a generator seeded by this"),
        overwrite: bool = typer.Option(False, help="replace --out if it exists"),
        shard_gb: float = typer.Option(4.0, help="largest safetensors shard, GiB"),
        as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    ) -> None:
        """Merge models as a mergekit recipe says, streaming one tensor at a time (linear/WARM, slerp,
        task_arithmetic, ties, dare_linear, dare_ties, model_stock, passthrough)."""
        from pocketlm.compress.merge import merge

        result = merge(recipe, out, seed=seed, overwrite=overwrite, shard_bytes=int(shard_gb * 2**30),
                       progress=not as_json)
        if as_json:
            typer.echo(json.dumps(result.to_dict()))
        else:
            typer.echo(f"{result.method}: {result.tensors} tensors, {result.layers} layers, "
                       f"{result.bytes / 2**20:.1f} MiB in {result.seconds:.1f} s (peak RSS "
                       f"{result.peak_rss_mib:.0f} MiB) -> {result.out_dir}")


def register_moe(app: typer.Typer) -> None:
    @app.command("upcycle")
    def upcycle_cmd(
        model: str = typer.Argument(..., help="dense model directory (pocketlm or Hugging Face)"),
        out: Path = typer.Option(..., "--out", help="directory for the MoE (Hugging Face Mixtral / Qwen2-MoE)"),
        experts: int = typer.Option(8, help="experts per layer"),
        top_k: int = typer.Option(2, help="experts each token is routed to"),
        noise: float = typer.Option(0.0, help="Gaussian noise on each expert copy, in units of the weight's std"),
        router: str = typer.Option("random", help="router init: random, or hidden (k-means of MLP inputs on --text)"),
        text: Path = typer.Option(None, help="calibration text file for --router hidden"),
        seed: int = typer.Option(0),
    ) -> None:
        """Sparse upcycling: turn every FFN of a dense model into E copies with a top-k router."""
        import torch

        from pocketlm.compress.upcycle import moe_costs, upcycle
        from pocketlm.runtime import open_model, open_tokenizer

        dense = open_model(model)
        tok = open_tokenizer(model)
        calib = None
        if router == "hidden":
            if text is None or tok is None:
                raise typer.BadParameter("--router hidden needs --text and a model with a tokenizer")
            calib = torch.tensor([tok.encode(text.read_text())[:dense.config.max_seq_len]])
        moe = upcycle(dense, experts, top_k, noise=noise, router=router, calibration=calib, seed=seed)
        fmt = _save(moe, out, tok)
        typer.echo(json.dumps({"out": str(out), "format": fmt, "dense": moe_costs(dense.config),
                               "moe": moe_costs(moe.config)}))

    @app.command("moe")
    def moe_cmd(
        recipe: Path = typer.Argument(..., help="mergekit-moe YAML: base_model, gate_mode, experts (source_model, "
                                      "positive_prompts, negative_prompts)"),
        out: Path = typer.Option(..., "--out", help="directory for the Mixtral-style MoE"),
        seed: int = typer.Option(0, help="gate_mode random: the router's seed"),
    ) -> None:
        """mergekit-moe: an MoE from several fine-tunes of one base, routed by prompts."""
        from pocketlm.compress.upcycle import assemble_moe, moe_costs, read_moe_recipe
        from pocketlm.runtime import open_model, open_tokenizer

        r = read_moe_recipe(recipe)
        base = open_model(r.base_model)
        tok = open_tokenizer(r.base_model)
        experts = [open_model(e.source_model) for e in r.experts]
        moe = assemble_moe(base, experts, r.experts, tok, r.gate_mode, r.experts_per_token, seed)
        fmt = _save(moe, out, tok)
        typer.echo(json.dumps({"out": str(out), "format": fmt, "moe": moe_costs(moe.config)}))


def register_proxy(app: typer.Typer) -> None:
    @app.command("proxy")
    def proxy_cmd(
        spec: str = typer.Argument(..., help="proxy:base=DIR,expert=DIR,anti=DIR[,alpha=1.0]"),
        prompt: str = typer.Option("Once upon a time", help="prompt to continue"),
        max_new_tokens: int = typer.Option(48),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Decode with a proxy-tuned model next to its base alone: both texts, tokens/s and memory of each."""
        from pocketlm.runtime.proxy import decode_cost, open_proxy
        from pocketlm.runtime import open_tokenizer

        proxy = open_proxy(spec)
        tok = open_tokenizer(spec)
        report = decode_cost(proxy, tok, [prompt], max_new_tokens)
        if as_json:
            typer.echo(json.dumps(report))
            return
        for who in ("base", "proxy"):
            r = report[who]
            typer.echo(f"[{who}] {r['tokens_per_s']:.1f} tok/s, weights {r['weights_mib']:.1f} MiB, "
                       f"KV {r['kv_mib']:.2f} MiB\n{r['texts'][0]}\n")


def register_studies(app: typer.Typer) -> None:
    @app.command("merge-study")
    def study_cmd(
        name: str = typer.Argument(..., help="warm, proxy or upcycle"),
        out: Path = typer.Option(Path("runs/merge-study"), "--out", help="folder for <name>.json and <name>.png"),
        steps: int = typer.Option(0, help="training steps per model (0: the study's default)"),
    ) -> None:
        """Reproduce a paper's finding on this machine: WARM, proxy tuning, or sparse upcycling."""
        from pocketlm.compress.studies import STUDIES

        if name not in STUDIES:
            raise typer.BadParameter(f"unknown study {name!r}; choose one of {sorted(STUDIES)}")
        payload = STUDIES[name](out, **({"steps": steps} if steps else {}))
        typer.echo(json.dumps(payload, default=str))


console = Console()


def prune_cmd(
    model: str = typer.Argument(..., help="HF or pocketlm model directory, a llama2.c .bin, or a catalog name (random weights)"),
    out: Path = typer.Option(..., "--out", help="output directory (written atomically)"),
    method: str = typer.Option("wanda", help="magnitude, wanda or sparsegpt"),
    sparsity: float = typer.Option(0.5, help="fraction of each matrix set to zero, in [0, 1)"),
    pattern: Optional[str] = typer.Option(None, help="N:M semi-structured pattern, e.g. 2:4 (N zeros per M inputs)"),
    owl: bool = typer.Option(False, "--owl", help="outlier-weighted per-block sparsity (wanda, sparsegpt)"),
    calib: str = typer.Option("bundled:128x512", help="calibration SOURCE:NxL: bundled, a task (wikitext2), "
                              "files/glob, or a data-prepare folder"),
    seed: int = typer.Option(0, help="calibration sampling seed"),
    skip: List[str] = typer.Option([], help="glob of matrix names to leave dense (repeatable), e.g. '*.down_proj'; "
                                    "routers are always skipped unless --recipe says otherwise"),
    tokenizer: Optional[Path] = typer.Option(None, help="tokenizer directory when the model has none"),
    recipe: Optional[Path] = typer.Option(None, help="recipe.yaml of an earlier run: repeat it exactly "
                                          "(overrides the method/sparsity/pattern/owl/calib/seed/skip flags)"),
    eval_text: Optional[Path] = typer.Option(None, help="held-out text for perplexity and KL (default: the bundled "
                                             "corpus's held-out documents, which no fixture trains on)"),
    eval_tokens: int = typer.Option(16384, help="at most this many held-out tokens"),
    measure: bool = typer.Option(True, help="measure perplexity, KL, decode latency and file size before/after"),
    gguf: Optional[str] = typer.Option(None, help="also write model.gguf of this type (F32, F16, Q8_0...)"),
    overwrite: bool = typer.Option(False, help="replace an existing --out directory"),
    calib_dtype: str = typer.Option("fp32", help="fp32, or bf16: calibration forwards under bf16 autocast "
                                    "(~1.7x faster matmuls on AVX-512 BF16 CPUs; statistics still fp32)"),
) -> None:
    """Prune a model (magnitude, Wanda, SparseGPT; unstructured or N:M; OWL) and write an HF directory + report."""
    from pocketlm.compress.prune.checkpoint import prune_checkpoint
    from pocketlm.compress.recipe import PruneRecipe
    from pocketlm.compress.targets import DEFAULT_SKIP

    if recipe is not None:
        rec = PruneRecipe.load(recipe)
    else:
        rec = PruneRecipe(method=method, sparsity=sparsity, pattern=pattern, owl=owl, calib=calib, seed=seed,
                          skip=list(DEFAULT_SKIP) + list(skip), calib_dtype=calib_dtype)
    report = prune_checkpoint(model, rec, out, tokenizer=tokenizer, eval_text=eval_text, eval_tokens=eval_tokens,
                              measure=measure, gguf=gguf, overwrite=overwrite, progress=True)
    ev = report.evaluation
    console.print(f"{rec.method} {rec.pattern or f'{rec.sparsity:.0%}'}{' + OWL' if rec.owl else ''}: realised "
                  f"sparsity {report.sparsity:.2%} over {len(report.matrices)} matrices in {report.wall_s:.1f} s, "
                  f"peak RSS {report.peak_rss_bytes / 2**20:.0f} MiB")
    if ev:
        console.print(f"held-out perplexity {ev['ppl_before']:.3f} -> {ev['ppl_after']:.3f}, KL {ev['kl_mean']:.4f} "
                      f"nats/token, top-1 agreement {ev['top1_agreement']:.1%} ({ev['tokens']} tokens)")
    for note in report.notes:
        console.print(note)
    console.print(f"wrote {out} (prune_report.json, recipe.yaml)")


def register_prune(app: typer.Typer) -> None:
    app.command("prune")(prune_cmd)


def quantize_cmd(
    model: str = typer.Argument(..., help="HF or pocketlm model directory, a llama2.c .bin, or a catalog name"),
    out: Path = typer.Option(..., "--out", help="output directory (written atomically)"),
    method: str = typer.Option("gptq", help="rtn, gptq or awq"),
    bits: int = typer.Option(4, help="2, 3, 4 (int4 kernel) or 8 (int8 kernel: symmetric, per channel)"),
    group_size: int = typer.Option(128, help="input columns per scale: 32, 64, 128, 256; 0 = per output channel"),
    sym: bool = typer.Option(False, "--sym", help="symmetric grid (no offset); 8 bits always is"),
    act_order: bool = typer.Option(False, "--act-order", help="GPTQ: quantize columns by decreasing Hessian diagonal"),
    static_groups: bool = typer.Option(False, "--static-groups", help="GPTQ: fit every group on the original weight first"),
    awq_clip: bool = typer.Option(False, "--awq-clip", help="AWQ: also llm-awq's weight-clipping search (lower KL "
                                  "and in-domain perplexity; higher perplexity on unseen books, docs/compress.md)"),
    calib: str = typer.Option("bundled:128x512", help="calibration SOURCE:NxL (bundled, a task, files, a data folder)"),
    seed: int = typer.Option(0, help="calibration sampling seed"),
    gguf: Optional[str] = typer.Option(None, help="write model.gguf with the codes on this GGUF type's grid "
                                       "(Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q6_K) instead of a pocketlm checkpoint"),
    fmt: str = typer.Option("pocketlm", "--format", help="pocketlm (int kernels) or compressed-tensors (an HF "
                            "folder vLLM serves as W4A16/W8A16; 4 or 8 bits, any group size)"),
    dtype: Optional[str] = typer.Option(None, help="float32 (default), bfloat16 or float16 for the tensors left "
                                        "float (compressed-tensors: and its scales; vLLM serves bf16/fp16; "
                                        "pocketlm: bfloat16 decodes faster, as `--precision int4` runs)"),
    skip: List[str] = typer.Option([], help="glob of matrix names to leave float (repeatable)"),
    quantize_head: bool = typer.Option(False, "--quantize-head", help="pocketlm format: also the LM head, rounded "
                                       "to nearest on the same grid (as --precision int4 does; embedding stays float)"),
    eval_text: Optional[Path] = typer.Option(None, help="held-out text (default: the bundled corpus's held-out "
                                             "documents, which no fixture trains on)"),
    eval_tokens: int = typer.Option(16384, help="at most this many held-out tokens"),
    overwrite: bool = typer.Option(False, help="replace an existing --out directory"),
) -> None:
    """Quantize a model's block matrices (RTN, GPTQ, AWQ) into int8/int4 kernels or an exact GGUF, with a report."""
    from pocketlm.compress.quantize.checkpoint import quantize_checkpoint
    from pocketlm.compress.targets import DEFAULT_SKIP

    sym = sym or (bits == 8 and fmt == "pocketlm")
    report = quantize_checkpoint(model, out, method, bits, group_size or None, sym, calib=calib, seed=seed, gguf=gguf,
                                 fmt=fmt, dtype=dtype,
                                 eval_text=eval_text, eval_tokens=eval_tokens, overwrite=overwrite, progress=True,
                                 act_order=act_order, static_groups=static_groups, awq_clip=awq_clip,
                                 **({"quantize_head": True} if quantize_head else {}),
                                 skip=tuple(DEFAULT_SKIP) + tuple(skip))
    console.print(f"{method} {report.grid}: {len(report.layers)} matrices in {report.wall_s:.1f} s, peak RSS "
                  f"{report.peak_rss_bytes / 2**20:.0f} MiB, {report.disk_bytes / 1e6:.2f} MB on disk")
    ev = report.evaluation
    if ev:
        console.print(f"held-out perplexity {ev['ppl_before']:.3f} -> {ev['ppl_after']:.3f}, KL mean {ev['kl_mean']:.4f} "
                      f"p99 {ev['kl_p99']:.4f} nats/token, top-1 agreement {ev['top1_agreement']:.1%}")
    console.print(f"wrote {out} (quant_report.json)")


def register_quantize(app: typer.Typer) -> None:
    app.command("quantize")(quantize_cmd)
