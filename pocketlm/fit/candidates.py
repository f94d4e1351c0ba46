"""The candidate space as data: a small registry of *builders*, each one compression choice with its values.

A candidate is one value per axis, e.g. `prune_nm=2:4 + gguf_qtype=Q4_K_M`. Two kinds of builder:

- a *weights* builder changes the float weights (or the architecture) before export: `prune_structured`
  (width / depth pruning by compress/structured, then a short distillation when the fit has a token budget)
  and `prune_nm` (Wanda N:M), applied in that order. `apply(model, value, ctx)`
  returns the changed float model; `config(cfg, value)` the architecture it has afterwards (the cost
  model's input); `"none"` is always a value and leaves the model as it is.
- a *format* builder is what the runtime runs: `precision` (torch: fp32/bf16/int8/int4, and int4/int3
  codes chosen by GPTQ or AWQ: `int4-gptq`, `int3-awq`) and `gguf_qtype` (llama.cpp's types, and
  `Q4_0-gptq` / `Q8_0-awq`: GPTQ's or AWQ's codes written into that type's blocks). `dtype(value)` is the profile Setting's dtype; `bits(value)` the stored bits
  per weight (scales included) the cost model reads; `emulate(model, value, ctx)` a model that computes
  what the runtime computes (for quality), `write(model, value, out, ctx)` the deployable files, and
  `file(model, value, path, ctx)` the runtime's own weights file where it has one (GGUF): fit builds it
  once per candidate and passes it (`file=`) to `emulate`, `write` and the measurement.
  A runtime has one format axis, so a calibrated solver is a value suffix (`-gptq`, `-awq`) whose
  `dtype` is the plain format's: same kernels and bytes, so same cost and one shared measurement.

Only builders that work today are registered; see docs/fit.md for adding one.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch


class CandidateError(ValueError):
    """An unknown axis or value in --candidates; the message lists what exists."""


@dataclass
class BuildContext:
    """What builders may need: calibration tokens, the tokenizer, threads, a scratch folder."""

    calib: torch.Tensor | None = None
    tokenizer: Any = None
    threads: int | None = None
    scratch: Path | None = None
    group_size: int = 32
    calibrate: Callable[[], torch.Tensor] | None = None  # computes `calib` on first use
    distill_tokens: int = 0  # recovery distillation after structured pruning (0: none)
    distill_windows: Callable[[int, int], torch.Tensor] | None = None  # (n, length) -> token windows [n, length]

    def calibration(self) -> torch.Tensor:
        """The calibration tokens, computed on first use (GPTQ / AWQ / Wanda need them, RTN does not)."""
        if self.calib is None and self.calibrate is not None:
            self.calib = self.calibrate()
        if self.calib is None:
            raise ValueError("this candidate needs calibration tokens: give BuildContext calib= or calibrate=")
        return self.calib


@dataclass(frozen=True)
class Builder:
    name: str
    kind: str  # "weights" | "format"
    runtimes: tuple[str, ...]
    values: tuple[str, ...]  # the default axis; "none" first for weights builders
    apply: Callable[[Any, str, BuildContext], Any] | None = None  # weights: float model -> float model
    config: Callable[[Any, str], Any] | None = None  # weights: cfg -> cfg after the change
    dtype: Callable[[str], str] | None = None  # format: the profile Setting's dtype
    bits: Callable[..., float] | None = None  # format: (value, cfg=None) -> stored bits per weight, scales included
    emulate: Callable[[Any, str, BuildContext], Any] | None = None  # format: what the runtime computes
    write: Callable[..., dict] | None = None  # format: (model, value, out, ctx, file=None) -> the deployable files
    # format: (model, value, path, ctx) -> the runtime's own weights file (GGUF), when it has one; fit writes
    # it once per candidate and hands it to `emulate` / `write` (`file=`) and to the measurement
    file: Callable[[Any, str, Path, BuildContext], Path] | None = None
    file_suffix: str = ""
    doc: str = ""


BUILDERS: dict[str, Builder] = {}


def register(builder: Builder) -> Builder:
    if builder.kind not in ("weights", "format"):
        raise ValueError(f"builder {builder.name}: kind must be 'weights' or 'format'")
    BUILDERS[builder.name] = builder
    return builder


@dataclass(frozen=True)
class Candidate:
    """One point of the space: (axis, value) pairs, weights axes first, the format axis last."""

    steps: tuple[tuple[str, str], ...]

    @property
    def key(self) -> str:
        return " + ".join(f"{a}={v}" for a, v in self.steps if v != "none")

    @property
    def weights(self) -> tuple[tuple[str, str], ...]:
        return tuple((a, v) for a, v in self.steps if BUILDERS[a].kind == "weights")

    @property
    def format(self) -> tuple[str, str]:
        return next((a, v) for a, v in self.steps if BUILDERS[a].kind == "format")

    @property
    def weights_key(self) -> str:
        return " + ".join(f"{a}={v}" for a, v in self.weights if v != "none") or "dense"

    def config(self, cfg: Any) -> Any:
        for axis, value in self.weights:
            if value != "none":
                cfg = BUILDERS[axis].config(cfg, value)
        return cfg

    def to_dict(self) -> dict:
        return {"key": self.key, "steps": [list(s) for s in self.steps]}


def format_axis(runtime: str) -> Builder:
    found = [b for b in BUILDERS.values() if b.kind == "format" and runtime in b.runtimes]
    if len(found) != 1:
        raise CandidateError(f"runtime {runtime!r}: no single format builder ({[b.name for b in found]}); "
                             f"choose --runtime from {sorted({r for b in BUILDERS.values() for r in b.runtimes})}")
    return found[0]


def parse_axes(spec: str | None, runtime: str) -> dict[str, tuple[str, ...]]:
    """'precision=int8,int4;prune_nm=none,2:4' -> axes; None: every registered builder's default values.

    An axis left out keeps its default (weights axes: all defaults; give `prune_nm=none` to drop one)."""
    fmt = format_axis(runtime)
    axes = {b.name: b.values for b in BUILDERS.values() if b.kind == "weights" and runtime in b.runtimes}
    axes[fmt.name] = fmt.values
    for part in filter(None, (p.strip() for p in (spec or "").split(";"))):
        name, _, values = part.partition("=")
        name = name.strip()
        if name not in axes:
            raise CandidateError(f"--candidates: unknown axis {name!r} for runtime {runtime}; axes are "
                                 f"{sorted(axes)}")
        vals = tuple(v.strip() for v in values.split(",") if v.strip())
        if not vals:
            raise CandidateError(f"--candidates {part!r}: give values, e.g. {name}={','.join(axes[name][:2])}")
        allowed = BUILDERS[name].values + (("none",) if BUILDERS[name].kind == "weights" else ())
        bad = [v for v in vals if v not in allowed and not _open_value(name, v)]
        if bad and name == "gguf_qtype" and "-" in bad[0]:
            raise CandidateError(f"--candidates: {bad[0]!r}: GPTQ / AWQ GGUF candidates are {GGUF_SOLVER_TYPES} "
                                 f"with a suffix from {SOLVERS} (e.g. Q4_0-gptq); the other types' files mix in "
                                 "tensors from llama.cpp's quantizer, so their cost is not the RTN file's")
        if bad:
            raise CandidateError(f"--candidates: {name} has no value {bad[0]!r}; choose from {allowed}")
        axes[name] = vals
    return axes


def _open_value(axis: str, value: str) -> bool:
    """Values outside the default list that a builder still accepts (N:M patterns, GGUF types)."""
    if axis == "prune_structured":
        kind, _, ratio = value.partition("-")
        try:
            return kind in ("width", "depth") and 0 < float(ratio) < 1
        except ValueError:
            return False
    if axis == "prune_nm":
        n, _, m = value.partition(":")
        return n.isdigit() and m.isdigit() and 0 < int(n) < int(m)
    if axis == "gguf_qtype":
        from pocketlm.export.gguf import GGUF_TYPES

        qtype, _, method = value.partition("-")
        if method:
            return qtype.upper() in GGUF_SOLVER_TYPES and method.lower() in SOLVERS
        return value.upper() in GGUF_TYPES
    return False


def space(axes: dict[str, tuple[str, ...]]) -> list[Candidate]:
    """Every combination of the axes' values (weights axes in registry order, the format axis last)."""
    names = [n for n in axes if BUILDERS[n].kind == "weights"] + [n for n in axes if BUILDERS[n].kind == "format"]
    return [Candidate(tuple(zip(names, combo))) for combo in itertools.product(*(axes[n] for n in names))]


def build_weights(base: Any, cand: Candidate, ctx: BuildContext) -> Any:
    """A float copy of `base` with the candidate's weights steps applied (`base` is untouched)."""
    model = base
    for axis, value in cand.weights:
        if value != "none":
            model = BUILDERS[axis].apply(copy.deepcopy(model) if model is base else model, value, ctx)
    return model


# ---- weights builders -------------------------------------------------------------------------------

STRUCTURED_ROUND = 32  # pruned widths stay multiples of 32: ggml's blocks and the int4 groups of 32 need it
DISTILL_SEQ_LEN = 128


def structured_shape(cfg: Any, value: str):
    """The uniform shape `width-0.75` / `depth-0.5` names: width scales the FFN and residual widths
    (Minitron's best width axes; heads kept), depth the number of blocks."""
    from pocketlm.compress.structured.shapes import Shape

    kind, _, ratio = value.partition("-")
    r, base = float(ratio), Shape.of(cfg)
    if kind == "depth":
        return dataclasses.replace(base, n_layer=max(1, round(base.n_layer * r)))

    def narrow(width: int) -> int:
        return min(width, max(STRUCTURED_ROUND, int(width * r / STRUCTURED_ROUND + 0.5) * STRUCTURED_ROUND))

    return dataclasses.replace(base, intermediate=narrow(base.intermediate), d_model=narrow(base.d_model))


def _prune_structured(model: Any, value: str, ctx: BuildContext) -> Any:
    """Minitron's recipe on a budget: activation importance (and Block Influence for depth) on the
    calibration tokens, slice to the shape, then distil from the unpruned model on `ctx.distill_tokens`."""
    from pocketlm.compress.structured.driver import prune_structured

    shape = structured_shape(model.config, value)
    student = prune_structured(model, ctx.calibration(), shape).model
    if ctx.distill_tokens:
        distil(model, student, ctx)
    return student.eval()


def distil(teacher: Any, student: Any, ctx: BuildContext, lr: float = 1e-4, batch_size: int = 8) -> None:
    """Logit KL from `teacher` (Minitron: alpha 1, temperature 1) on `ctx.distill_tokens` tokens, in place."""
    from pocketlm.train.distill import DistillConfig, Distillation
    from pocketlm.train.loop import finetune

    if ctx.distill_windows is None:
        raise ValueError("distillation needs token windows: give BuildContext distill_windows=")
    length = min(DISTILL_SEQ_LEN, teacher.config.max_seq_len - 1)
    steps = max(1, ctx.distill_tokens // (batch_size * length))
    windows = ctx.distill_windows(min(steps * batch_size, 4096), length + 1)
    teacher.eval()
    finetune(student, windows, steps, lr, batch_size=batch_size, threads=ctx.threads,
             objective=Distillation(teacher, student, DistillConfig(alpha=1.0, temperature=1.0)))


register(Builder(
    "prune_structured", "weights", ("torch", "llamacpp"), ("none", "width-0.75", "depth-0.75"),
    apply=_prune_structured, config=lambda cfg, v: structured_shape(cfg, v).config(cfg),
    doc="width / depth pruning at a ratio (compress/structured: Minitron activation importance, Block "
        "Influence), then a short logit distillation from the original under --distill-tokens; any "
        "`width-R` / `depth-R` with 0 < R < 1 on request. A smaller architecture: the cost model predicts "
        "it from the pruned config and it gets its own measurement."))


def _prune_nm(model: Any, value: str, ctx: BuildContext) -> Any:
    from pocketlm.compress.prune.driver import prune

    prune(model, "wanda", pattern=value, calib=ctx.calibration())
    return model


register(Builder(
    "prune_nm", "weights", ("torch", "llamacpp"), ("none", "2:4"), apply=_prune_nm, config=lambda cfg, v: cfg,
    doc="N:M semi-structured sparsity by Wanda (compress/prune); zeros are stored densely, so no runtime "
        "here gains speed or memory from it: its cost is the dense model's."))


# ---- format builders ---------------------------------------------------------------------------------

# stored bits per weight of each format, scales included (int4: a bf16 scale and zero per group of 32)
TORCH_BITS = {"fp32": 32.0, "bf16": 16.0, "fp16": 16.0, "int8": 8.0 + 32 / 4096, "int4": 4.0 + 32 / 32}
SOLVERS = ("gptq", "awq")  # calibrated quantizers (compress/quantize), a `-method` suffix on a format value
# torch: 3-bit codes live in the int4 kernel's container, so int3 runs (and costs) what int4 does
TORCH_VALUES = ("fp32", "bf16", "int8", "int4", "int4-gptq", "int4-awq", "int3", "int3-gptq", "int3-awq")
# llama.cpp's averages (ggml block layouts; K-quant mixes as llama.cpp's quantize tool lists them for 7B)
GGUF_BITS = {"F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.5625, "Q5_K_M": 5.69,
             "Q5_K_S": 5.54, "Q5_1": 6.0, "Q5_0": 5.5, "Q4_K_M": 4.85, "Q4_K_S": 4.58, "Q4_1": 5.0,
             "Q4_0": 4.5, "IQ4_NL": 4.5, "IQ4_XS": 4.25, "Q3_K_L": 4.27, "Q3_K_M": 3.91, "Q3_K_S": 3.5,
             "Q2_K": 3.35}


def torch_dtype(value: str) -> str:
    """The runtime format of a precision value: `int3-gptq` -> `int4` (its kernels and bytes)."""
    base = value.partition("-")[0]
    return "int4" if base == "int3" else base


def _torch_emulate(model: Any, value: str, ctx: BuildContext) -> Any:
    from pocketlm.model.quantize import quantize_model
    from pocketlm.runtime.open import FLOAT_DTYPES

    model = copy.deepcopy(model)
    if value in FLOAT_DTYPES:
        return model.to(FLOAT_DTYPES[value]).eval()
    if value in ("int8", "int4"):
        return quantize_model(model.to(torch.bfloat16), value, ctx.group_size, skip_unsupported=True).eval()
    return _solver_int(model.to(torch.bfloat16), value, ctx).eval()


def _solver_int(model: Any, value: str, ctx: BuildContext) -> Any:
    """`int4-gptq`, `int3-awq`, `int3` (RTN): compress.quantize's driver on the block matrices, then the LM
    head by RTN int4 as `quantize_model` does, so the model holds the int4 candidate's very tensors."""
    from pocketlm.compress.quantize.driver import quantize
    from pocketlm.model.quantize import round_to_grid, to_kernels

    base, _, method = value.partition("-")
    method = method or "rtn"
    quantize(model, method, int(base.removeprefix("int")), ctx.group_size, sym=False,
             calib=ctx.calibration() if method != "rtn" else None)
    recipe = model.transforms.quantization
    head = [n for n in recipe.float_layers if n == "lm_head"]
    if head:
        recipe = dataclasses.replace(recipe, float_layers=tuple(n for n in recipe.float_layers if n != "lm_head"))
        to_kernels(model, lambda name, lin: round_to_grid(lin.weight, "int4", recipe.group_size)
                   if name == "lm_head" else None, recipe)
    return model


def _torch_write(model: Any, value: str, out: Path, ctx: BuildContext) -> dict:
    from pocketlm.interop import UnsupportedModelError, save_hf, save_native

    if torch_dtype(value) in ("int8", "int4"):  # integers: pocketlm's format keeps codes, scales and zeros
        save_native(_torch_emulate(model, value, ctx), out, tokenizer=ctx.tokenizer)
        return {"format": "pocketlm (quantized)", "model_dir": str(out)}
    try:
        save_hf(_torch_emulate(model, value, ctx), out, tokenizer=ctx.tokenizer)
        return {"format": "huggingface", "model_dir": str(out)}
    except UnsupportedModelError:
        save_native(_torch_emulate(model, value, ctx), out, tokenizer=ctx.tokenizer)
        return {"format": "pocketlm", "model_dir": str(out)}


register(Builder(
    "precision", "format", ("torch",), TORCH_VALUES, dtype=torch_dtype,
    bits=lambda v, cfg=None: TORCH_BITS[torch_dtype(v)], emulate=_torch_emulate, write=_torch_write,
    doc="pocketlm's torch runtime: float precisions, RTN weight-only int8 / int4 (group 32), and int4 / "
        "int3 codes by RTN, GPTQ or AWQ (compress/quantize) in the int4 kernels."))


# llama.cpp's quantizer needs rows of 256 for the K-quants and IQ4_XS; other rows fall back to these
K_FALLBACK = {"Q2_K": "Q4_0", "Q3_K_S": "Q4_0", "Q3_K_M": "Q4_0", "Q3_K_L": "Q4_0", "Q4_K_S": "Q5_0",
              "Q4_K_M": "Q5_0", "Q5_K_S": "Q5_1", "Q5_K_M": "Q5_1", "Q6_K": "Q8_0", "IQ4_XS": "IQ4_NL"}


def gguf_bits(value: str, cfg: Any = None) -> float:
    """Bits per weight of a GGUF type, with llama.cpp's fallback for matrices whose rows are not a multiple
    of 256 (dense, standard-attention configs; the table value otherwise)."""
    q = value.upper()
    if cfg is None or q not in K_FALLBACK or cfg.attention == "mla" or cfg.n_experts:
        return GGUF_BITS[q]
    from pocketlm.model import costs

    C, I, L = cfg.d_model, cfg.ffn_dim(0), cfg.n_layer
    qd, kvd = cfg.heads(0) * cfg.dim_head, cfg.kv_heads(0) * cfg.dim_head
    by_row = {C: L * C * (qd + 2 * kvd + 2 * I)}  # q/k/v, gate/up
    by_row[qd] = by_row.get(qd, 0) + L * qd * C  # attention output
    by_row[I] = by_row.get(I, 0) + L * I * C  # FFN down
    total = costs.param_counts(cfg)["total"]
    vocab = cfg.vocab_size * C * (1 if cfg.tie_embeddings else 2)
    bad = sum(n for row, n in by_row.items() if row % 256)
    # the output matrix (the tied embedding too) is written as Q6_K by the K-quant mixes, Q8_0 on fallback
    head_bits = GGUF_BITS["Q8_0" if C % 256 else "Q6_K"]
    rest = total - bad - vocab
    return (GGUF_BITS[q] * rest + GGUF_BITS[K_FALLBACK[q]] * bad + head_bits * vocab) / total


# the types whose every tensor pocketlm writes itself: GPTQ's / AWQ's blocks beside the others in the same
# type make the very tensor types (and bytes) of the RTN file, so the two share one measurement
GGUF_SOLVER_TYPES = ("Q8_0", "Q4_0")


def gguf_dtype(value: str) -> str:
    """The GGUF type of a gguf_qtype value: `Q4_0-gptq` -> `Q4_0`."""
    return value.partition("-")[0].upper()


def _gguf_file(model: Any, value: str, path: Path, ctx: BuildContext) -> Path:
    from pocketlm.export.gguf import export_gguf

    qtype, _, method = value.partition("-")
    if not method:
        return export_gguf(model, path, qtype.upper(), threads=ctx.threads)
    from pocketlm.compress.quantize.gguf_export import export_quantized_gguf

    export_quantized_gguf(copy.deepcopy(model), path, qtype.upper(), method.lower(), ctx.calibration(),
                          rest=qtype.upper())
    return path


def _gguf_emulate(model: Any, value: str, ctx: BuildContext, file: Path | None = None) -> Any:
    """The float model with the GGUF file's dequantized weights: what llama.cpp multiplies by. `file`: the
    candidate's GGUF already written (fit's cache); without it, one is exported to a temporary file."""
    from pocketlm.export.gguf import load_gguf_weights

    with tempfile.TemporaryDirectory(prefix="pocketlm-fit-", dir=ctx.scratch) as tmp:
        path = file or _gguf_file(model, value, Path(tmp) / "m.gguf", ctx)
        emulated = copy.deepcopy(model)
        load_gguf_weights(emulated, path)
    return emulated.eval()


def _gguf_write(model: Any, value: str, out: Path, ctx: BuildContext, file: Path | None = None) -> dict:
    """The float weights (HF directory, or pocketlm's where HF cannot hold them) and the GGUF file beside
    them: `file` copied when the candidate's was written already, else exported."""
    from pocketlm.interop import UnsupportedModelError, save_hf, save_native

    try:
        save_hf(model, out, tokenizer=ctx.tokenizer)
        fmt = "huggingface + GGUF"
    except UnsupportedModelError:
        save_native(model, out, tokenizer=ctx.tokenizer)
        fmt = "pocketlm + GGUF"
    path = out / f"model-{value.upper()}.gguf"
    if file is not None:
        shutil.copyfile(file, path)
    else:
        _gguf_file(model, value, path, ctx)
    return {"format": fmt, "model_dir": str(out), "gguf": str(path)}


register(Builder(
    "gguf_qtype", "format", ("llamacpp",),
    ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_0", "IQ4_XS", "Q3_K_M", "Q3_K_S", "Q2_K",
     "Q4_0-gptq", "Q4_0-awq"),
    dtype=gguf_dtype, bits=lambda v, cfg=None: gguf_bits(gguf_dtype(v), cfg), emulate=_gguf_emulate,
    write=_gguf_write, file=_gguf_file, file_suffix=".gguf",
    doc="llama.cpp's tensor types, written by pocketlm's exporter and llama.cpp's own quantizer; Q8_0 / "
        "Q4_0 also with GPTQ's or AWQ's codes in their blocks (compress/quantize/gguf_export)."))
