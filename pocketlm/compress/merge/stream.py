"""The merge driver: plan every output tensor from the recipe, then stream them to disk one by one.

Each output tensor's inputs are read from the input directories (inputs.py, memory-mapped), merged by
the recipe's method, and written straight into a safetensors stream (writer.py), so a merge of k
models holds k input tensors and one output tensor, never a whole model. The output directory is
built beside its destination and renamed into place when complete.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pocketlm.compress.merge.inputs import LAYER_COUNT_KEYS, ModelFiles, open_models
from pocketlm.compress.merge.recipe import Recipe, Slice, resolve
from pocketlm.compress.merge.registry import MergeError, Method
from pocketlm.compress.merge.writer import SafetensorsStream, nbytes
from pocketlm.interop.vocab import TOKENIZER_FILES, TokenizerMismatch, check_same_tokenizer
from pocketlm.utils import replace_dir, temp_dir_beside

DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
               "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}

# ---- the plan ----------------------------------------------------------------------------------------

@dataclass
class Job:
    """One output tensor: its name, its inputs (model, tensor name), the layer fraction t, its slice."""
    out: str
    inputs: list[tuple[str, str]]
    t: float
    slice: Slice
    shape: tuple[int, ...] = ()
    dtype: torch.dtype = torch.float32


def _top_jobs(models: dict[str, ModelFiles], sl: Slice, kind: str) -> list[Job]:
    first = models[sl.sources[0].model]
    jobs = []
    for name in getattr(first, kind):
        having = [src.model for src in sl.sources if models[src.model].has(name)]
        if len(having) != len(sl.sources):
            missing = [src.model for src in sl.sources if src.model not in having]
            raise MergeError(f"tensor {name!r} is in {first.ref!r} but not in {missing}; the models differ in "
                             "structure (tied vs untied embeddings?)")
        jobs.append(Job(name, [(src.model, name) for src in sl.sources], 0.0, sl))
    return jobs


def plan(recipe: Recipe, models: dict[str, ModelFiles]) -> tuple[list[Job], list[tuple[str, int]]]:
    """Every output tensor in file order (embeddings, blocks, head), and (model, layer) of each out layer."""
    jobs: list[Job] = []
    layer_sources: list[tuple[str, int]] = []
    for sl in recipe.slices:
        for src in sl.sources:
            m = models[src.model]
            if src.layer_range is None:
                src.layer_range = (0, m.n_layers)
            if src.layer_range[1] > m.n_layers:
                raise MergeError(f"layer_range {list(src.layer_range)} of {src.model!r} exceeds its {m.n_layers} "
                                 "layers")
    for sl in recipe.slices:
        start = [src.layer_range[0] for src in sl.sources]
        n = sl.sources[0].layer_range[1] - start[0]
        for offset in range(n):
            out_layer = len(layer_sources)
            first = models[sl.sources[0].model]
            layer_sources.append((first.ref, start[0] + offset))
            t = offset / (n - 1) if n > 1 else 1.0
            for name in first.layer_names(start[0] + offset):
                suffix = first.split_layer(name)[1]
                inputs = []
                for src, s0 in zip(sl.sources, start):
                    m = models[src.model]
                    in_name = m.layer_prefix.format(i=s0 + offset) + suffix
                    if not m.has(in_name):
                        raise MergeError(f"tensor {in_name!r} is missing from {src.model!r} (present in "
                                         f"{first.ref!r}); the models differ in structure")
                    inputs.append((src.model, in_name))
                jobs.append(Job(first.layer_prefix.format(i=out_layer) + suffix, inputs, t, sl))
    jobs = _top_jobs(models, recipe.slices[0], "pre") + jobs + _top_jobs(models, recipe.slices[-1], "post")
    for field_name, value in (("dtype", recipe.dtype), ("out_dtype", recipe.out_dtype)):
        if value and value not in DTYPE_NAMES:
            raise MergeError(f"{field_name}: {value!r} is not a dtype; use one of {sorted(DTYPE_NAMES)}")
    compute = DTYPE_NAMES[recipe.dtype] if recipe.dtype else None
    out_dtype = DTYPE_NAMES[recipe.out_dtype] if recipe.out_dtype else compute
    for job in jobs:
        metas = [models[m].meta(n) for m, n in job.inputs]
        shapes = {s for s, _ in metas}
        if len(shapes) != 1:
            raise MergeError(f"tensor {job.out!r}: shapes differ between inputs "
                             f"({', '.join(f'{m}: {s}' for (m, _), (s, _) in zip(job.inputs, metas))})")
        job.shape, job.dtype = metas[0]
        if job.dtype.is_floating_point and (out_dtype or compute):
            job.dtype = out_dtype or compute
    return jobs, layer_sources


# ---- one tensor ---------------------------------------------------------------------------------------

def merge_tensor(method: Method, recipe: Recipe, job: Job, tensors: list[Tensor], seed: int) -> Tensor:
    """Resolve the parameters for this tensor (mergekit's precedence) and apply the method."""
    sl = job.slice
    base_ref = sl.base_model or recipe.base_model
    refs = [m for m, _ in job.inputs]
    if not tensors[0].is_floating_point():
        return tensors[0]
    base_i = refs.index(base_ref) if method.base != "ignored" and base_ref in refs else None
    shared_scopes = [sl.parameters, recipe.parameters]
    kwargs: dict[str, Any] = {}
    for p in method.params:
        if p.scope == "shared":
            kwargs[p.keyword] = resolve(p, shared_scopes, job.out, job.t, method.name)
            continue
        values = []
        for i, (ref, in_name) in enumerate(job.inputs):
            if p.scope == "non_base" and i == base_i:
                continue
            scopes = [src.parameters for src in sl.sources if src.model == ref] + shared_scopes
            values.append(resolve(p, scopes, in_name, job.t, f"{method.name}, model {ref!r}"))
        kwargs[p.keyword] = values
    if method.random:
        kwargs["generator"] = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(job.out.encode()))
    others = [t for i, t in enumerate(tensors) if i != base_i]
    try:
        return method.fn(others, tensors[base_i] if base_i is not None else None, **kwargs)
    except ValueError as e:
        raise MergeError(f"tensor {job.out!r}: {e}") from e


# ---- the output directory ----------------------------------------------------------------------------

@dataclass
class MergeResult:
    out_dir: Path
    method: str
    tensors: int
    layers: int
    bytes: int
    seconds: float
    peak_rss_mib: float  # the process's peak resident set size so far (includes what ran before)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "out_dir": str(self.out_dir)}


def _shards(jobs: list[Job], shard_bytes: int) -> list[list[Job]]:
    shards: list[list[Job]] = [[]]
    size = 0
    for job in jobs:
        b = nbytes(job.shape, job.dtype)
        if shards[-1] and size + b > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(job)
        size += b
    return shards


def _out_config(recipe: Recipe, models: dict[str, ModelFiles], layer_sources: list[tuple[str, int]],
                dtype: torch.dtype) -> dict[str, Any]:
    ref = recipe.base_model or recipe.slices[0].sources[0].model
    base = models[ref]
    cfg = dict(base.config)
    n_old = base.n_layers
    if len(layer_sources) != n_old:
        for key, value in base.config.items():
            if isinstance(value, list) and len(value) == n_old:  # per-layer fields (layer_types, ...)
                cfg[key] = [models[m].config[key][i] for m, i in layer_sources]
    for key in LAYER_COUNT_KEYS:
        if key in cfg:
            cfg[key] = len(layer_sources)
    cfg["dtype"] = str(dtype).removeprefix("torch.")
    cfg.pop("torch_dtype", None)
    return cfg


def _card(recipe: Recipe, result: MergeResult, models: dict[str, ModelFiles]) -> str:
    method = recipe.method
    lines = ["---", "library_name: transformers", "tags: [merge, pocketlm, mergekit]",
             *(["base_model:", *[f"- {m}" for m in models]]), "---", "",
             f"# Merged model ({method.name})", "",
             f"Made by `pocketlm merge` with **{method.name}** ({method.reference_url or 'pocketlm'}) from:", ""]
    base = recipe.base_model
    lines += [f"- `{m}`{' (base)' if m == base else ''}" for m in models]
    lines += ["", f"{result.tensors} tensors, {result.layers} layers, {result.bytes / 2**20:.1f} MiB written in "
              f"{result.seconds:.1f} s (peak RSS of the merging process: {result.peak_rss_mib:.0f} MiB).", "",
              "## Recipe (mergekit YAML, as given)", "", "```yaml", recipe.text.rstrip(), "```", ""]
    return "\n".join(lines)


def run_merge(recipe: Recipe, out_dir: str | Path, *, seed: int = 0, shard_bytes: int = 4 << 30,
              overwrite: bool = False, root: Path | None = None, progress: bool = False) -> MergeResult:
    """Execute `recipe` into the Hugging Face directory `out_dir` (written atomically)."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise MergeError(f"{out_dir} exists and is not empty; choose another --out or pass --overwrite")
    method = recipe.method
    models = open_models(recipe, root)
    try:
        check_same_tokenizer({m.ref: m.path for m in models.values()})
    except TokenizerMismatch as e:
        raise MergeError(f"{e}; a weight merge needs one shared tokenizer") from e
    jobs, layer_sources = plan(recipe, models)
    out_dtype = next((j.dtype for j in jobs if j.dtype.is_floating_point), torch.float32)
    tmp = temp_dir_beside(out_dir)
    written = 0
    try:
        shards = _shards(jobs, shard_bytes)
        names = (["model.safetensors"] if len(shards) == 1 else
                 [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
        bar = _progress(progress, len(jobs))
        for shard, fname in zip(shards, names):
            stream = SafetensorsStream(tmp / fname, [(j.out, j.shape, j.dtype) for j in shard],
                                       {"format": "pt", "merged_by": "pocketlm"})
            try:
                for job in shard:
                    tensors = [models[m].get(n) for m, n in job.inputs]
                    if recipe.dtype:
                        tensors = [t.to(DTYPE_NAMES[recipe.dtype]) if t.is_floating_point() else t for t in tensors]
                    merged = merge_tensor(method, recipe, job, tensors, seed).to(job.dtype)
                    stream.write(job.out, merged)
                    written += merged.numel() * merged.element_size()
                    del tensors, merged
                    bar.advance()
            except BaseException:
                stream.abort()
                raise
            stream.close()
        bar.close()
        if len(shards) > 1:
            index = {"metadata": {"total_size": written},
                     "weight_map": {j.out: fname for shard, fname in zip(shards, names) for j in shard}}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        cfg = _out_config(recipe, models, layer_sources, out_dtype)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        tok_ref = recipe.tokenizer_source or recipe.base_model or recipe.slices[0].sources[0].model
        if tok_ref not in models:
            raise MergeError(f"tokenizer_source {tok_ref!r} is not one of the recipe's models")
        for f in TOKENIZER_FILES + ("generation_config.json",):
            if (models[tok_ref].path / f).is_file():
                shutil.copy(models[tok_ref].path / f, tmp / f)
        (tmp / "mergekit_config.yml").write_text(recipe.text)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result = MergeResult(out_dir, method.name, len(jobs), len(layer_sources), written,
                             time.perf_counter() - t0, peak)
        (tmp / "README.md").write_text(_card(recipe, result, models))
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


class _progress:
    """A rich progress bar over the tensors, or nothing."""

    def __init__(self, enabled: bool, total: int):
        self._p = None
        if enabled:
            from rich.progress import Progress

            self._p = Progress(transient=True)
            self._p.start()
            self._task = self._p.add_task("merging tensors", total=total)

    def advance(self) -> None:
        if self._p is not None:
            self._p.advance(self._task)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
