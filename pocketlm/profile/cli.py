"""`pocketlm profile MODEL`, `pocketlm profile landscape`, `pocketlm profile compare A B ...`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from pocketlm.cli_support import RunByDefault, output_console
from pocketlm.profile.setting import Setting, grid

profile_app = typer.Typer(cls=RunByDefault, no_args_is_help=True,
                          help="Measure latency and memory: `pocketlm profile MODEL`, `... landscape`, `... compare`.")


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(float(x)) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what}: expected comma-separated integers, got {text!r}")


def _csv(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values))


def _words(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


@profile_app.command("run")
def run_cmd(
    model: str = typer.Argument(..., help="catalog name (random weights), HF / pocketlm directory, or config .json"),
    prompt: str = typer.Option(_csv(Setting.prompts), help="prompt lengths for prefill"),
    gen: int = typer.Option(Setting.gen, help="tokens decoded per decode test"),
    depth: str = typer.Option(_csv(Setting.depths), help="context depths at which decode is measured"),
    threads: str = typer.Option("", help="thread counts, e.g. 1,2 (default: all cores)"),
    dtype: str = typer.Option(Setting.dtype, help="fp32,bf16,fp16,int8,int4 (llamacpp also: F16,Q8_0,Q4_0,Q4_K_M,...)"),
    backend: str = typer.Option(Setting.backend, help="torch,llamacpp"),
    repeat: int = typer.Option(Setting.repeat), warmup: int = typer.Option(Setting.warmup),
    group_size: int = typer.Option(Setting.group_size, help="int4 group size (32, 64, 128, 256)"),
    breakdown: bool = typer.Option(False, help="also time attention / FFN / norms / embedding / LM head"),
    skip_unsupported: bool = typer.Option(False, help="int8/int4: keep layers the kernels cannot take in float"),
    pack: Optional[bool] = typer.Option(None, "--pack/--no-pack", help="override the per-device kernel choice: "
                                        "--pack = oneDNN-packed fp32/bf16 weights, --no-pack = plain nn.Linear "
                                        "(default: each linear shape timed once on this CPU, cached)"),
    compile: bool = typer.Option(False, "--compile", help="decode in one torch.compile'd flat step (static KV cache, "
                                 "one graph per power-of-two cache size; prefill stays eager; models it does not "
                                 "cover compile the module); compiling (1-3 min for 30 layers) is reported as compile_s"),
    decode_step: Optional[str] = typer.Option(None, "--decode-step", help="override the per-device decode step: "
                                              "native (one C call per token) or eager (default: the faster, timed "
                                              "once per model shape on this CPU, cached)"),
    device: str = typer.Option(Setting.device, help="cpu or cuda"),
    draft: Optional[str] = typer.Option(None, help="a small MODEL of the same tokenizer: also time speculative "
                                        "decoding (acceptance rate, speedup over the target alone)"),
    k: int = typer.Option(Setting.k, help="tokens the --draft model proposes per target forward"),
    out: Path = typer.Option(Path("profile_out"), help="folder for profile.csv and profile.json"),
) -> None:
    """Prefill / decode latency, tokens/s and memory of MODEL over a grid of settings."""
    from pocketlm.profile.report import breakdown_table, rich_table
    from pocketlm.profile.runner import profile
    from pocketlm.utils import check_writable

    check_writable(out, "--out")  # before minutes of measuring

    base = Setting(model, prompts=_ints(prompt, "--prompt"), gen=gen, depths=_ints(depth, "--depth"), repeat=repeat,
                   warmup=warmup, device=device, group_size=group_size, breakdown=breakdown,
                   skip_unsupported=skip_unsupported, pack=pack, compile=compile, draft=draft, k=k,
                   decode_step=decode_step)
    done = profile(grid(base, _words(backend), _words(dtype), _ints(threads, "--threads")), out)
    console = output_console()
    console.print(rich_table(done["rows"], title=f"pocketlm profile {model}"))
    if draft:
        from pocketlm.profile.speculative import speculative_line

        for result in done["results"]:
            if "speculative" in result:
                console.print(speculative_line(result))
    if breakdown:
        console.print(breakdown_table(done["results"]))
    print(json.dumps({"rows": done["rows"], "csv": done["csv"], "json": done["json"]}))


@profile_app.command("landscape")
def landscape_cmd(
    max_params: float = typer.Option(2e9, help="largest model (total parameters)"),
    min_params: float = typer.Option(0, help="smallest model"),
    dtype: str = typer.Option("bf16", help="one dtype for every model (bf16 keeps 2B models in RAM)"),
    prompt: int = typer.Option(64), gen: int = typer.Option(8), depth: int = typer.Option(64),
    threads: int = typer.Option(0, help="threads (default: all cores)"), repeat: int = typer.Option(3),
    models: str = typer.Option("", help="comma-separated catalog names instead of the whole catalog"),
    out: Path = typer.Option(Path("docs/profile_landscape"), help="folder for landscape.csv and figures"),
    pack: Optional[bool] = typer.Option(None, "--pack/--no-pack", help="override the per-device kernel choice "
                                        "(--pack: oneDNN-packed fp32/bf16; a tied LM head then holds a 2nd copy)"),
    backend: str = typer.Option("torch", help="torch | llamacpp (GGUF export, timed in llama.cpp)"),
    qtype: str = typer.Option("", help="llamacpp backend: the GGUF type (Q4_0, Q8_0, F16...; default Q4_0)"),
    gguf_dir: Optional[Path] = typer.Option(None, help="llamacpp backend: keep the exported GGUF files here and "
                                            "reuse them (random weights: same config, seed and type)"),
    export_only: bool = typer.Option(False, "--export-only", help="llamacpp backend: only fill --gguf-dir "
                                     "(the slow exports, ahead of a timing window); measure nothing"),
) -> None:
    """Latency and memory vs parameters over the catalog's architectures (random weights); resumable."""
    from pocketlm.profile.landscape import catalog_models, export_ggufs, landscape
    from pocketlm.utils import check_writable

    check_writable(out, "--out")

    if qtype and backend != "llamacpp":
        raise typer.BadParameter("--qtype is the GGUF type of the llamacpp backend; add --backend llamacpp")
    if backend == "llamacpp":
        dtype = qtype or "Q4_0"
    if (gguf_dir or export_only) and backend != "llamacpp":
        raise typer.BadParameter("--gguf-dir / --export-only are for the llamacpp backend; add --backend llamacpp")
    if export_only:
        if not gguf_dir:
            raise typer.BadParameter("--export-only writes the GGUF files into --gguf-dir; give one")
        names = _words(models) or catalog_models(max_params, min_params, "llamacpp")
        print(json.dumps({"exported": export_ggufs(names, dtype, gguf_dir, threads=threads)}))
        return
    done = landscape(max_params=max_params, min_params=min_params, dtype=dtype, prompt=prompt, gen=gen,
                     depth=depth, threads=threads, repeat=repeat, names=_words(models) or None, out_dir=out,
                     pack=pack, backend=backend, gguf_dir=gguf_dir)
    done.pop("points")
    print(json.dumps(done))


@profile_app.command("compare")
def compare_cmd(
    models: list[str] = typer.Argument(..., help="two or more catalog names / config files / directories"),
    dtype: str = typer.Option("bf16"), prompt: int = typer.Option(128), gen: int = typer.Option(16),
    depth: int = typer.Option(128), threads: int = typer.Option(0, help="threads (default: all cores)"),
    repeat: int = typer.Option(3), out: Path = typer.Option(Path("profile_compare")),
    pack: Optional[bool] = typer.Option(None, "--pack/--no-pack", help="override the per-device kernel choice"),
) -> None:
    """Side by side: e.g. MHA vs GQA at equal size, deep-thin vs wide-shallow."""
    from pocketlm.profile.landscape import compare
    from pocketlm.utils import check_writable

    check_writable(out, "--out")

    print(json.dumps(compare(models, dtype=dtype, prompt=prompt, gen=gen, depth=depth, threads=threads,
                             repeat=repeat, out_dir=out, pack=pack)))


def register(app: typer.Typer) -> None:
    app.add_typer(profile_app, name="profile")
