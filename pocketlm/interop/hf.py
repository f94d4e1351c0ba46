"""Load and save Hugging Face model directories (config.json + safetensors) exactly.

Weights are read with safetensors; a legacy `pytorch_model.bin` only with
`torch.load(weights_only=True)`. No remote code is ever executed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from pocketlm.interop.families import FAMILIES, Family, export_family, get_family
from pocketlm.interop.hf_config import UnsupportedModelError, config_from_hf, hf_config_from
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import Transformer
from pocketlm.utils import atomic_dir, atomic_write_text, check_finite_weights, read_json

# a folder holding one of these is a model folder that a save may replace whole
MODEL_FOLDER_FILES = ("config.json", "pocketlm.json", "model.safetensors", "model.safetensors.index.json")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as it is: names the file or tensor and the fix."""


# ---- reading tensors -------------------------------------------------------------------------------

def weight_files(path: Path) -> list[Path]:
    """The weight files of a HF directory, chosen as transformers chooses them: model.safetensors, else
    the files model.safetensors.index.json names, else one pytorch_model.bin (or its index). Any other
    *.safetensors (a backup, a stray copy) is never merged in; several candidates and no index is an error."""
    for f in (*path.glob("*.safetensors"), *path.glob("*.bin"), *path.glob("*.index.json")):
        if not f.is_file():
            raise CheckpointError(f"{f}: not a regular file (a folder, FIFO or broken link); weights are read "
                                  "from plain files only")
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (path / single).is_file():
            return [path / single]
        if (path / index).is_file():
            return _indexed_files(path / index)
    loose = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if len(loose) == 1:
        return loose
    if not loose:
        raise CheckpointError(f"{path}: no weights found (expected model.safetensors, model-0000x-of-0000y."
                              "safetensors with model.safetensors.index.json, or pytorch_model.bin)")
    raise CheckpointError(f"{path}: {len(loose)} weight files ({', '.join(f.name for f in loose[:4])}) and neither "
                          "model.safetensors nor model.safetensors.index.json to say which hold the model; "
                          "remove the stray files or add the index")


def _indexed_files(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index}: not a valid weight index (needs a 'weight_map' of tensor name -> "
                              f"file; {type(e).__name__}: {e})") from e
    files = []
    for name in names:
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise CheckpointError(f"{index}: weight file {name!r} is not a plain file name in the model folder")
        if not (index.parent / name).is_file():
            raise CheckpointError(f"{index}: names {name}, which is missing; the download is incomplete")
        files.append(index.parent / name)
    if not files:
        raise CheckpointError(f"{index}: the weight_map is empty")
    return files


def read_hf_tensors(path: Path) -> dict[str, Tensor]:
    """All tensors of a HF directory's weight files (see `weight_files`).

    Read with pread, each tensor in memory of its own: memory-mapped tensors would share the
    file's mapping, whose pages stay resident until the last tensor goes, so every matrix the
    runtime then fuses, transposes or packs would be held twice."""
    tensors: dict[str, Tensor] = {}
    for f in weight_files(path):
        if f.suffix == ".safetensors":
            try:
                tensors.update(load_file(str(f), backend="pread"))
            except (SafetensorError, OSError, ValueError) as e:
                raise CheckpointError(f"{f}: not a readable safetensors file ({e}); the file may be truncated "
                                      "or corrupted: re-download or re-save it") from e
        else:
            try:
                tensors.update(torch.load(str(f), map_location="cpu", weights_only=True))
            except Exception as e:  # pickle errors surface as many types
                raise CheckpointError(f"{f}: cannot be read with torch.load(weights_only=True) ({type(e).__name__}: "
                                      "it holds objects other than tensors, or is not a PyTorch file; pocketlm "
                                      "never unpickles code); convert it to safetensors") from e
    return tensors


def check_finite(model: torch.nn.Module, where: Path | str) -> None:
    """Refuse loaded weights holding NaN or infinity (a CheckpointError naming the tensor)."""
    check_finite_weights(model, where, CheckpointError)


# ---- name mapping --------------------------------------------------------------------------------------

def _layer_of(name: str) -> tuple[int, str] | None:
    if not name.startswith("blocks."):
        return None
    _, i, rest = name.split(".", 2)
    return int(i), rest


def _hf_state(model: Transformer, family: Family) -> dict[str, Tensor]:
    """pocketlm state dict -> HF state dict for `family`."""
    cfg = model.config
    own = {k: v for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        own.pop("lm_head.weight", None)
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for name, t in own.items():
        if name in family.top:
            out[family.top[name]] = t
            used.add(name)
    for i in range(cfg.n_stored_layers):
        prefix = family.layer_prefix.format(i=i)
        for rel, hf_rel in family.block.items():
            name = f"blocks.{i}.{rel}"
            if name in own:
                out[prefix + hf_rel] = own[name]
                used.add(name)
        for hf_rel, names, codec in family.packed:
            full = [f"blocks.{i}.{n}" for n in names]
            if all(n in own for n in full):
                out[prefix + hf_rel] = codec.pack([own[n] for n in full], cfg.heads(i))
                used.update(full)
    missing = sorted(set(own) - used)
    if missing:
        raise UnsupportedModelError(f"{family.model_type}: no place in the checkpoint for {missing[:5]}")
    return {k: v.contiguous() for k, v in out.items()}


def _legacy_experts(hf: dict[str, Tensor], prefix: str, n_experts: int, family: Family) -> dict[str, Tensor] | None:
    """Stack per-expert tensors of transformers<5 checkpoints into gate_up / down / router."""
    for gate, up, down, router in family.legacy_experts:
        first = prefix + gate.format(e=0)
        if first in hf:
            gates = [hf.pop(prefix + gate.format(e=e)) for e in range(n_experts)]
            ups = [hf.pop(prefix + up.format(e=e)) for e in range(n_experts)]
            downs = [hf.pop(prefix + down.format(e=e)) for e in range(n_experts)]
            return {"mlp.experts.gate_up_proj": torch.stack([torch.cat([g, u]) for g, u in zip(gates, ups)]),
                    "mlp.experts.down_proj": torch.stack(downs), "mlp.router.weight": hf.pop(prefix + router)}
    return None


def _own_state(hf: dict[str, Tensor], model: Transformer, family: Family, where: Path | str) -> dict[str, Tensor]:
    """HF state dict -> pocketlm state dict; every tensor accounted for, shapes checked."""
    cfg = model.config
    expected = model.state_dict()
    if cfg.tie_embeddings:
        expected.pop("lm_head.weight", None)
    hf = dict(hf)
    out: dict[str, Tensor] = {}
    for name, hf_name in family.top.items():
        if name in expected:
            if hf_name not in hf:
                for alias in family.lm_head_aliases if name == "lm_head.weight" else ():
                    if alias in hf:
                        hf_name = alias
            if hf_name in hf:
                out[name] = hf.pop(hf_name)
    for i in range(cfg.n_stored_layers):
        prefix = family.layer_prefix.format(i=i)
        if cfg.is_moe(i):
            legacy = _legacy_experts(hf, prefix, cfg.n_experts, family)
            if legacy:
                out.update({f"blocks.{i}.{k}": v for k, v in legacy.items()})
        for rel, hf_rel in family.block.items():
            name = f"blocks.{i}.{rel}"
            if name in expected and name not in out and prefix + hf_rel in hf:
                out[name] = hf.pop(prefix + hf_rel)
        for hf_rel, names, codec in family.packed:
            full = [f"blocks.{i}.{n}" for n in names]
            if prefix + hf_rel in hf and all(n in expected for n in full):
                parts = [expected[n].shape[0] for n in full]
                for n, t in zip(full, codec.unpack(hf.pop(prefix + hf_rel), parts, cfg.heads(i))):
                    out[n] = t
    missing = [n for n in expected if n not in out]
    if missing:
        raise CheckpointError(f"{where}: tensor(s) missing for this config: {missing[:6]}"
                              f"{' ...' if len(missing) > 6 else ''}; the checkpoint is incomplete or "
                              "config.json does not describe these weights")
    leftover = [k for k in hf if not any(frag in k for frag in family.ignore)]
    if leftover:
        raise CheckpointError(f"{where}: tensor(s) not used by a {family.model_type} model with this config: "
                              f"{leftover[:6]}; config.json contradicts the weights (wrong layer count, "
                              "tied embeddings, or biases?)")
    for n, t in out.items():
        if tuple(t.shape) != tuple(expected[n].shape):
            raise CheckpointError(f"{where}: tensor {n!r} has shape {tuple(t.shape)} but config.json implies "
                                  f"{tuple(expected[n].shape)}; config.json contradicts the weights")
    return out


# ---- public API ------------------------------------------------------------------------------------------

def read_hf_config(path: Path) -> dict[str, Any]:
    """config.json of a HF directory (or the file itself) as a JSON object."""
    cfg_file = path if path.is_file() else path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path}: no config.json; a Hugging Face model directory needs config.json and "
                              "safetensors weights")
    data = read_json(cfg_file, CheckpointError)
    if not isinstance(data, dict):
        raise CheckpointError(f"{cfg_file}: expected a JSON object of config fields, found {type(data).__name__}")
    return data


def config_from_hf_checked(data: dict[str, Any], where: Path | str) -> ModelConfig:
    """config_from_hf, with every way a config.json can be wrong (transformers' strict field checks,
    zero heads, fields of the wrong type) reported as one CheckpointError naming `where`."""
    from huggingface_hub.errors import StrictDataclassError

    try:
        return config_from_hf(data)
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"{where}: {e}") from e
    except ZeroDivisionError as e:
        raise CheckpointError(f"{where}: a head count or width is 0 ({e}); every size must be positive") from e
    except (StrictDataclassError, ValueError, TypeError, AttributeError, KeyError) as e:
        detail = " ".join(str(e).split())
        raise CheckpointError(f"{where}: not a usable config ({type(e).__name__}: {detail}); fix that field") from e


def load_hf(path: str | Path, dtype: torch.dtype = torch.float32) -> Transformer:
    """A Transformer with the weights of a local HF directory, numerically identical."""
    path = Path(path)
    cfg = config_from_hf_checked(read_hf_config(path), path / "config.json")
    family = get_family(cfg.extra["hf_model_type"])
    with torch.device("meta"):
        model = Transformer(cfg)
    state = _own_state(read_hf_tensors(path), model, family, path)
    model = model.to_empty(device="cpu")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    return model.to(dtype).eval()


def _comparable(cfg: ModelConfig) -> dict[str, Any]:
    """The fields that define the network, with equivalent spellings made equal."""
    d = cfg.to_dict()
    for k in ("name", "extra"):
        d.pop(k)
    if cfg.attention == "standard":
        d["n_kv_head"] = [cfg.kv_heads(i) for i in range(cfg.n_stored_layers)]
        d["n_head"] = [cfg.heads(i) for i in range(cfg.n_stored_layers)]
        d["head_dim"] = cfg.dim_head
    d["intermediate_size"] = [cfg.ffn_dim(i) for i in range(cfg.n_stored_layers)]
    return d


def save_hf(model: Transformer, out_dir: str | Path, tokenizer: Any = None, model_type: str | None = None) -> Path:
    """Write a directory that transformers.AutoModelForCausalLM.from_pretrained loads as the same network."""
    hf_cfg, state, _ = hf_checkpoint(model, model_type)
    return write_hf_folder(out_dir, hf_cfg, state, tokenizer)


def hf_checkpoint(model: Transformer,
                  model_type: str | None = None) -> tuple[dict[str, Any], dict[str, Tensor], Family]:
    """(config.json contents, HF state dict on CPU, family) of `model` saved as `model_type` (default: its family),
    refused with UnsupportedModelError when that family cannot express the model."""
    model.check_savable("hf")
    cfg = model.config
    model_type = model_type or export_family(cfg)
    if model_type not in FAMILIES:
        raise UnsupportedModelError(f"cannot save as {model_type!r}; families: {', '.join(sorted(FAMILIES))}")
    family = FAMILIES[model_type]
    hf_cfg = hf_config_from(cfg, model_type)
    back = config_from_hf(hf_cfg)
    mine, theirs = _comparable(cfg), _comparable(back)
    differ = sorted(k for k in mine if mine[k] != theirs[k])
    if differ:
        detail = ", ".join(f"{k}={mine[k]!r} (as {model_type}: {theirs[k]!r})" for k in differ[:4])
        raise UnsupportedModelError(f"the {model_type} family cannot express this model: {detail}. "
                                    "Save it with save_native() instead.")
    state = {k: v.detach().to("cpu") for k, v in _hf_state(model, family).items()}
    hf_cfg["architectures"] = [family.architecture]
    hf_cfg["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    return hf_cfg, state, family


def hf_tensor_name(family: Family, name: str) -> str | None:
    """The HF name of pocketlm tensor `name` when the family stores it as one tensor under its own name
    (None when it is packed with others, e.g. a fused qkv, or has no place)."""
    layer = _layer_of(name)
    if layer is None:
        return family.top.get(name)
    i, rel = layer
    return family.layer_prefix.format(i=i) + family.block[rel] if rel in family.block else None


def write_hf_folder(out_dir: str | Path, hf_cfg: dict[str, Any], state: dict[str, Tensor],
                    tokenizer: Any = None) -> Path:
    """config.json + model.safetensors (+ tokenizer files), built beside `out_dir` and swapped in whole."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, MODEL_FOLDER_FILES, "model folder") as tmp:  # an old model is replaced whole
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_text(tmp / "config.json", json.dumps(hf_cfg, indent=2, sort_keys=True))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return out_dir
