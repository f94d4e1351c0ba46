"""Dense -> mixture of experts: sparse upcycling, and mergekit-moe-style assembly from fine-tunes.

- `upcycle(model, n_experts, top_k)`: every FFN becomes E experts initialised as copies of it
  (Komatsuzaki et al. 2023, "Sparse Upcycling", arXiv:2212.05055), optionally perturbed by
  Gaussian noise of `noise` × the weight's std so experts can diverge; the router starts random
  (N(0, 0.02)) or, with `router="hidden"`, at the k-means centroids (cosine) of the MLP inputs of
  calibration text, one expert per cluster. With identical experts and renormalised top-k weights
  the MoE computes exactly the dense function, whatever the router says.
- `assemble_moe(base, experts, gate_mode)`: mergekit-moe's construction. Attention, norms and
  embeddings come from the base; expert e's FFN from fine-tune e; the router row of expert e at
  layer l is the normalised hidden state (the residual stream entering layer l, last prompt token,
  averaged over prompts; negative prompts subtracted) of its positive prompts ("hidden"), the
  normalised sum of their token embeddings ("cheap_embed", every layer alike) or N(0, 1) ("random"),
  as mergekit/moe/router.py computes them. `read_moe_recipe` reads mergekit-moe's YAML.

The result is a pocketlm Transformer whose config Hugging Face expresses as Mixtral (save_hf picks
it: routed experts, renormalised top-k); training continues with `compress.tune.continue_training`,
whose objective adds the Switch load-balancing loss (`train.load_balance`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pocketlm.model.transformer import Transformer
from pocketlm.utils import load_yaml

ROUTER_INITS = ("random", "hidden")
GATE_MODES = ("hidden", "cheap_embed", "random")


class UpcycleError(ValueError):
    """A model or recipe that cannot become an MoE as asked; names the reason and the fix."""


def _moe_config(model: Transformer, n_experts: int, top_k: int, shared_expert: bool = False):
    cfg = model.config
    if cfg.n_experts:
        raise UpcycleError(f"{cfg.name or 'model'} is already a mixture of experts ({cfg.n_experts} experts)")
    if cfg.ffn_type != "gated" or cfg.mlp_bias or cfg.shared_ffn:
        raise UpcycleError("upcycling needs gated bias-free FFNs in every block (Llama/Mistral/Qwen style: "
                           f"ffn_type='gated', mlp_bias=False); this model has ffn_type={cfg.ffn_type!r}, "
                           f"mlp_bias={cfg.mlp_bias}")
    widths = {cfg.ffn_dim(i) for i in range(cfg.n_stored_layers)}
    if len(widths) != 1:
        raise UpcycleError(f"upcycling needs one FFN width in every layer, got {sorted(widths)}")
    if not 1 <= top_k <= n_experts:
        raise UpcycleError(f"top_k must be between 1 and n_experts ({n_experts}), got {top_k}")
    extra = {k: v for k, v in cfg.extra.items() if k != "hf_model_type"}
    width = widths.pop()
    shared = dict(n_shared_experts=1, shared_expert_intermediate_size=width, shared_expert_gate=True,
                  moe_intermediate_size=width) if shared_expert else {}
    return cfg.replace(**{"n_experts": n_experts, "top_k": top_k, "moe_intermediate_size": None,
                          "router_norm_topk": True, "first_dense_layers": 0, "extra": extra,
                          "name": f"{cfg.name or 'model'}-moe{n_experts}x{top_k}", **shared})


def _copy_shared(dense: Transformer, moe: Transformer) -> None:
    """Every tensor except the FFNs (embeddings, attention, norms, head) copied from the dense model."""
    own = moe.state_dict()
    with torch.no_grad():
        for name, t in dense.state_dict().items():
            if ".mlp." not in name and name in own:
                own[name].copy_(t)


def _expert_weights(mlp: torch.nn.Module) -> tuple[Tensor, Tensor]:
    """(gate_up [2I, C], down [C, I]) of a dense gated MLP, in the experts' stacked layout."""
    return torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), mlp.down_proj.weight


@torch.no_grad()
def upcycle(model: Transformer, n_experts: int, top_k: int = 2, *, noise: float = 0.0, router: str = "random",
            calibration: Tensor | None = None, shared_expert: bool | None = None, seed: int = 0) -> Transformer:
    """A Transformer whose FFNs are `n_experts` copies of `model`'s (see the module docstring).

    `shared_expert` (default: when the model has q/k/v biases, i.e. Qwen2, whose MoE form is
    Qwen2-MoE) adds an always-on gated shared expert, a copy of the FFN with its down projection
    zeroed, so it starts contributing nothing and the upcycled model still equals the dense one."""
    if router not in ROUTER_INITS:
        raise UpcycleError(f"router init {router!r}: choose one of {ROUTER_INITS}")
    if router == "hidden" and calibration is None:
        raise UpcycleError("router='hidden' needs calibration token ids [B, T] to cluster the MLP inputs of")
    if shared_expert is None:
        shared_expert = model.config.qkv_bias
    cfg = _moe_config(model, n_experts, top_k, shared_expert)
    gen = torch.Generator().manual_seed(seed)
    moe = Transformer(cfg).to(next(model.parameters()).dtype)
    _copy_shared(model, moe)
    inputs = _mlp_inputs(model, calibration) if router == "hidden" else None
    for i, (dense_block, block) in enumerate(zip(model.blocks, moe.blocks)):
        gate_up, down = _expert_weights(dense_block.mlp)
        for e in range(n_experts):
            for stacked, w in ((block.mlp.experts.gate_up_proj, gate_up), (block.mlp.experts.down_proj, down)):
                stacked[e] = w + noise * w.std() * torch.randn(w.shape, generator=gen)
        if shared_expert:
            for name in ("gate_proj", "up_proj"):
                getattr(block.mlp.shared, name).weight.copy_(getattr(dense_block.mlp, name).weight)
            block.mlp.shared.down_proj.weight.zero_()
            block.mlp.shared_gate.weight.zero_()
        if inputs is None:
            block.mlp.router.weight.copy_(0.02 * torch.randn(block.mlp.router.weight.shape, generator=gen))
        else:
            block.mlp.router.weight.copy_(spherical_kmeans(inputs[i], n_experts, gen))
    return moe.eval()


def _mlp_inputs(model: Transformer, ids: Tensor) -> list[Tensor]:
    """Per block, the inputs its FFN sees on `ids` (after the FFN norm): [B*T, C]."""
    seen: list[Tensor] = [torch.empty(0)] * len(model.blocks)

    def keep(i: int):
        return lambda module, inp, out: seen.__setitem__(i, inp[0].reshape(-1, inp[0].shape[-1]))

    hooks = [b.mlp.register_forward_hook(keep(i)) for i, b in enumerate(model.blocks)]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    return seen


def spherical_kmeans(x: Tensor, k: int, gen: torch.Generator, iters: int = 20) -> Tensor:
    """k unit centroids of the rows of x under cosine similarity (Lloyd's iterations)."""
    x = torch.nn.functional.normalize(x.float(), dim=-1)
    if x.shape[0] < k:
        raise UpcycleError(f"router='hidden': {x.shape[0]} calibration tokens cannot seed {k} clusters")
    c = x[torch.randperm(x.shape[0], generator=gen)[:k]].clone()
    for _ in range(iters):
        assign = (x @ c.T).argmax(-1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c[j] = torch.nn.functional.normalize(members.mean(0), dim=0)
    return c


# ---- mergekit-moe -----------------------------------------------------------------------------------

@dataclass
class ExpertSpec:
    source_model: str
    positive_prompts: list[str] = field(default_factory=list)
    negative_prompts: list[str] = field(default_factory=list)


@dataclass
class MoeRecipe:
    base_model: str
    experts: list[ExpertSpec]
    gate_mode: str = "hidden"
    experts_per_token: int = 2
    dtype: str | None = None
    text: str = ""


MOE_KEYS = {"base_model", "experts", "gate_mode", "experts_per_token", "dtype", "architecture"}


def read_moe_recipe(path: str | Path) -> MoeRecipe:
    """mergekit-moe's YAML (base_model, gate_mode, experts_per_token, experts with source_model and
    positive/negative prompts); shared experts and other architectures are refused by name."""
    path = Path(path)
    text = path.read_text()
    raw = load_yaml(text, str(path), error=UpcycleError)
    if not isinstance(raw, dict):
        raise UpcycleError(f"{path}: a mergekit-moe recipe is a mapping with base_model and experts")
    extra = sorted(set(raw) - MOE_KEYS)
    if extra:
        raise UpcycleError(f"{path}: unsupported field(s) {extra} (shared_experts: Qwen2-MoE assembly is not "
                           f"supported); supported: {sorted(MOE_KEYS)}")
    if raw.get("architecture", "mixtral") != "mixtral":
        raise UpcycleError(f"{path}: architecture {raw['architecture']!r} is not supported; pocketlm assembles mixtral")
    for key in ("base_model", "experts"):
        if not raw.get(key):
            raise UpcycleError(f"{path}: missing {key}")
    experts = []
    for i, e in enumerate(raw["experts"]):
        if not isinstance(e, dict) or "source_model" not in e:
            raise UpcycleError(f"{path}: experts[{i}] needs source_model")
        bad = sorted(set(e) - {"source_model", "positive_prompts", "negative_prompts"})
        if bad:
            raise UpcycleError(f"{path}: experts[{i}]: unsupported field(s) {bad}")
        experts.append(ExpertSpec(str(e["source_model"]), list(e.get("positive_prompts") or []),
                                  list(e.get("negative_prompts") or [])))
    recipe = MoeRecipe(str(raw["base_model"]), experts, str(raw.get("gate_mode", "hidden")),
                       int(raw.get("experts_per_token", 2)), raw.get("dtype"), text)
    if recipe.gate_mode not in GATE_MODES:
        raise UpcycleError(f"{path}: gate_mode {recipe.gate_mode!r}: choose one of {GATE_MODES}")
    return recipe


def _prompt_ids(tokenizer: Any, prompt: str) -> Tensor:
    if not callable(tokenizer):  # a pocketlm TextTokenizer
        return torch.tensor([tokenizer.encode(prompt)])
    bos = getattr(tokenizer, "bos_token", None) or ""
    return torch.tensor([tokenizer(bos + prompt, add_special_tokens=False)["input_ids"]])


def _gate_vectors(base: Transformer, tokenizer: Any, experts: list[ExpertSpec], mode: str,
                  gen: torch.Generator) -> Tensor:
    """[n_layers, E, C] router rows, as mergekit-moe computes them (see the module docstring)."""
    L, E, C = base.config.n_stored_layers, len(experts), base.config.d_model
    if mode == "random":
        return torch.randn((L, E, C), generator=gen)

    def vec(prompts: list[str]) -> Tensor:
        rows = []
        for p in prompts:
            ids = _prompt_ids(tokenizer, p)
            if mode == "cheap_embed":
                rows.append(base.embed.weight[ids[0]].float().sum(0).expand(L, C))
            else:
                x = base.embed_tokens(ids, torch.arange(ids.shape[1])[None])
                _, outs = base.forward_hidden(ids, collect_layers=True)
                states = [x] + outs[:-1]  # the residual stream entering each layer
                rows.append(torch.stack([s[0, -1].float() for s in states]))
        return torch.stack(rows).mean(0)

    out = []
    with torch.no_grad():
        for e in experts:
            if not e.positive_prompts and mode != "random":
                raise UpcycleError(f"expert {e.source_model!r}: gate_mode {mode!r} needs positive_prompts")
            v = vec(e.positive_prompts)
            if e.negative_prompts:
                v = v - vec(e.negative_prompts)
            out.append(v / v.norm(dim=-1, keepdim=True).clamp(min=1e-8))
    return torch.stack(out, dim=1)


@torch.no_grad()
def assemble_moe(base: Transformer, experts: list[Transformer], specs: list[ExpertSpec], tokenizer: Any = None,
                 gate_mode: str = "hidden", top_k: int = 2, seed: int = 0) -> Transformer:
    """An MoE with `base`'s attention/embeddings/norms and expert e = `experts[e]`'s FFN."""
    if gate_mode != "random" and tokenizer is None:
        raise UpcycleError(f"gate_mode {gate_mode!r} needs the base model's tokenizer to read the prompts")
    cfg = _moe_config(base, len(experts), top_k)
    for spec, m in zip(specs, experts):
        if m.config.to_dict() | {"name": "", "extra": {}} != base.config.to_dict() | {"name": "", "extra": {}}:
            raise UpcycleError(f"expert {spec.source_model!r} has a different architecture from the base; "
                               "mergekit-moe experts are fine-tunes of one base model")
    moe = Transformer(cfg).to(next(base.parameters()).dtype)
    _copy_shared(base, moe)
    gates = _gate_vectors(base, tokenizer, specs, gate_mode, torch.Generator().manual_seed(seed))
    for i, block in enumerate(moe.blocks):
        for e, m in enumerate(experts):
            gate_up, down = _expert_weights(m.blocks[i].mlp)
            block.mlp.experts.gate_up_proj[e] = gate_up
            block.mlp.experts.down_proj[e] = down
        block.mlp.router.weight.copy_(gates[i].to(block.mlp.router.weight.dtype))
    return moe.eval()


def moe_costs(cfg) -> dict[str, int]:
    """Total and active (per token) parameters, from the analytic cost model."""
    from pocketlm.model.costs import param_counts

    c = param_counts(cfg)
    return {"params_total": c["total"], "params_active": c["active"]}
