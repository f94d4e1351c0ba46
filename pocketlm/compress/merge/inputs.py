"""The inputs of a merge: Hugging Face directories opened lazily, one tensor at a time.

Tensors are read from their safetensors files through the safetensors library (memory-mapped);
names stay Hugging Face's, and the family table (pocketlm.interop.families) only says which names
belong to which layer and which come before or after the blocks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from pocketlm.compress.merge.recipe import Recipe
from pocketlm.compress.merge.registry import MergeError
from pocketlm.compress.merge.writer import DTYPES

IGNORED_CONFIG_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache",
                       "bos_token_id", "eos_token_id", "pad_token_id"}
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
PRE_PREFIXES = ("embed", "pos_embed", "project_in")  # pocketlm names of tensors before the first block

class ModelFiles:
    """A Hugging Face model directory opened lazily: config, tensor index and per-tensor reads."""

    def __init__(self, ref: str, path: Path):
        from pocketlm.interop import config_from_hf
        from pocketlm.interop.families import FAMILIES

        self.ref, self.path = ref, path
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            hint = (" (a pocketlm checkpoint: save it as Hugging Face first with pocketlm.interop.save_hf)"
                    if (path / "pocketlm.json").is_file() else "")
            raise MergeError(f"{ref}: {path} has no config.json{hint}; merging reads Hugging Face directories")
        self.config: dict[str, Any] = json.loads(cfg_file.read_text())
        model_type = self.config.get("model_type")
        if model_type not in FAMILIES:
            raise MergeError(f"{ref}: model_type {model_type!r} is not a family pocketlm loads "
                             f"({', '.join(sorted(FAMILIES))})")
        config_from_hf(self.config)  # raises UnsupportedModelError for what pocketlm cannot represent
        self.family = FAMILIES[model_type]
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise MergeError(f"{ref}: no *.safetensors in {path}; streaming merges read safetensors only "
                             "(convert pytorch_model.bin with transformers' save_pretrained)")
        self._where: dict[str, Any] = {}
        for f in files:
            handle = safe_open(str(f), framework="pt")
            for name in handle.keys():
                self._where[name] = handle
        self.names = list(self._where)
        pre, at = self.family.layer_prefix.split("{i}")
        self._layer_re = re.compile(re.escape(pre) + r"(\d+)" + re.escape(at) + r"(.+)")
        self.layer_prefix = self.family.layer_prefix
        self._stacked: dict[str, list[list[str]]] = {}
        self._stack_legacy_experts()
        layers = [self.split_layer(n) for n in self.names]
        self.n_layers = 1 + max((x[0] for x in layers if x), default=-1)
        own_top = {hf: own for own, hf in self.family.top.items()}
        self.pre = [n for n in self.names if not self.split_layer(n) and own_top.get(n, "").startswith(PRE_PREFIXES)]
        self.post = [n for n in self.names if not self.split_layer(n) and n not in self.pre]

    def _stack_legacy_experts(self) -> None:
        """Show per-expert tensors (transformers < 5 layout, which transformers 5 still writes for
        Mixtral) as the stacked experts.gate_up_proj [E, 2I, C] / experts.down_proj [E, C, I] that
        mergekit 0.1.5 merges, each stacked tensor as one (so TIES' top-k and SLERP's angle span all
        experts of a layer, as there)."""
        present = set(self.names)
        renamed: dict[str, str | None] = {}
        for name in self.names:
            split = self.split_layer(name)
            if not split:
                continue
            prefix = self.layer_prefix.format(i=split[0])
            for gate, up, down, router in self.family.legacy_experts:
                if split[1] != gate.format(e=0):
                    continue
                n = 0
                while prefix + gate.format(e=n) in present:
                    n += 1
                g, u, d = ([prefix + pat.format(e=e) for e in range(n)] for pat in (gate, up, down))
                self._stacked[prefix + "mlp.experts.gate_up_proj"] = [g, u]
                self._stacked[prefix + "mlp.experts.down_proj"] = [d]
                renamed.update({x: None for x in g + u + d})
                renamed[name] = prefix + "mlp.experts.gate_up_proj"
                renamed[d[0]] = prefix + "mlp.experts.down_proj"
                if prefix + router in present and router != "mlp.gate.weight":
                    self._stacked[prefix + "mlp.gate.weight"] = [[prefix + router]]
                    renamed[prefix + router] = prefix + "mlp.gate.weight"
        if renamed:
            self.names = [renamed.get(n, n) for n in self.names if renamed.get(n, n) is not None]

    def split_layer(self, name: str) -> tuple[int, str] | None:
        m = self._layer_re.fullmatch(name)
        return (int(m.group(1)), m.group(2)) if m else None

    def layer_names(self, layer: int) -> list[str]:
        return [n for n in self.names if (x := self.split_layer(n)) and x[0] == layer]

    def has(self, name: str) -> bool:
        return name in self._where or name in self._stacked

    def meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        if name in self._stacked:
            parts = [[self.meta(n) for n in group] for group in self._stacked[name]]
            (rows, *rest), dtype = parts[0][0]
            if len(parts[0]) == 1 and len(parts) == 1:  # a renamed router
                return (rows, *rest), dtype
            return (len(parts[0]), rows * len(parts), *rest), dtype
        s = self._where[name].get_slice(name)
        return tuple(s.get_shape()), DTYPES[s.get_dtype()]

    def get(self, name: str) -> Tensor:
        if name in self._stacked:
            groups = self._stacked[name]
            if len(groups) == 1 and len(groups[0]) == 1:
                return self.get(groups[0][0])
            return torch.stack([torch.cat([self.get(g[e]) for g in groups]) for e in range(len(groups[0]))])
        return self._where[name].get_tensor(name)


def _architecture(cfg: dict[str, Any], n_layers: int) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in IGNORED_CONFIG_KEYS and k not in LAYER_COUNT_KEYS
            and not (isinstance(v, list) and len(v) == n_layers)}


def open_models(recipe: Recipe, root: Path | None = None) -> dict[str, ModelFiles]:
    """Open every model of the recipe; refuse mismatched architectures with the differing fields."""
    models = {}
    for ref in recipe.models():
        path = Path(ref)
        if not path.is_absolute() and not path.exists() and root is not None and (root / ref).exists():
            path = root / ref
        if not path.is_dir():
            raise MergeError(f"model {ref!r}: no such directory (pocketlm merges local Hugging Face "
                             "directories; download hub models first)")
        models[ref] = ModelFiles(ref, path)
    first = next(iter(models.values()))
    want = _architecture(first.config, first.n_layers)
    for m in models.values():
        got = _architecture(m.config, m.n_layers)
        differ = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        if differ:
            detail = ", ".join(f"{k}: {want.get(k)!r} vs {got.get(k)!r}" for k in differ[:4])
            raise MergeError(f"models {first.ref!r} and {m.ref!r} have different architectures ({detail}); "
                             "merging needs models of one architecture and size")
    return models
