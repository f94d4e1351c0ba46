"""Cut a model down to the structures a `SlicePlan` keeps, giving a standard smaller model.

The plan names, by original index, the blocks kept (depth), and in every kept block the query heads,
kv heads and FFN channels kept, plus the residual-stream channels kept everywhere (width). The result is
a fresh `Transformer` of a *uniform* smaller `ModelConfig` (every layer the same widths, heads dividing,
each kept kv group with the same number of query heads), so it saves to Hugging Face and GGUF like any
other model. A plan marked `per_layer` may keep different counts in each layer: the config then holds
per-layer lists (`n_head`, `n_kv_head`, `intermediate_size`, as OpenELM's layer-wise scaling does).
What a structure owns:

- query head h: rows h*D..(h+1)*D of q_proj (and its bias), the same columns of o_proj;
- kv head g: those rows of k_proj and v_proj;
- FFN channel j: row j of gate_proj and up_proj (and their biases), column j of down_proj;
- residual channel c: column c of the token embedding, learned positions, LM head and of every matrix
  reading the stream (q/k/v, gate/up), row c of every matrix writing it (o_proj, down_proj, their
  biases), and entry c of every norm on the stream (attn_norm, mlp_norm, embed_norm, final_norm).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from pocketlm.compress.structured.importance import StructuredError, check_sliceable
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import Transformer, Transforms


@dataclass
class SlicePlan:
    layers: list[int]  # kept stored blocks, original indices, in order
    q_heads: list[list[int]]  # per kept block: kept query heads
    kv_heads: list[list[int]]  # per kept block: kept kv heads
    ffn: list[list[int]]  # per kept block: kept FFN channels
    embed: list[int] = field(default_factory=list)  # kept residual channels
    per_layer: bool = False  # True: layers may keep different numbers of heads / FFN channels

    @classmethod
    def keep_all(cls, cfg: ModelConfig) -> "SlicePlan":
        L = cfg.n_layer
        return cls(list(range(L)), [list(range(cfg.heads(0)))] * L, [list(range(cfg.kv_heads(0)))] * L,
                   [list(range(cfg.ffn_dim(0)))] * L, list(range(cfg.d_model)))

    def check(self, cfg: ModelConfig) -> None:
        """Raise StructuredError unless the plan gives a uniform model whose query heads stay with their kv heads."""
        n = len(self.layers)
        if not n or len(self.q_heads) != n or len(self.kv_heads) != n or len(self.ffn) != n:
            raise StructuredError("a slice plan needs one entry per kept layer in q_heads, kv_heads and ffn")
        for name, kept in (("query heads", self.q_heads), ("kv heads", self.kv_heads), ("FFN channels", self.ffn)):
            sizes = {len(x) for x in kept}
            if 0 in sizes:
                raise StructuredError(f"every kept layer must keep at least one of its {name}")
            if len(sizes) != 1 and not self.per_layer:
                raise StructuredError(f"every kept layer must keep the same number of {name} (got {sorted(sizes)}); "
                                      "per-layer widths are not a uniform model (ask for them with per_layer)")
        if not self.embed:
            raise StructuredError("a slice plan must keep at least one residual channel")
        group = cfg.heads(0) // cfg.kv_heads(0)
        for layer, q, kv in zip(self.layers, self.q_heads, self.kv_heads):
            owners = [h // group for h in q]
            per = len(q) // len(kv)
            if len(q) % len(kv) or owners != [g for g in kv for _ in range(per)]:
                raise StructuredError(f"layer {layer}: kept query heads {q} are not {len(kv)} kept kv groups {kv} "
                                      "with the same number of their own query heads each")

    def config(self, cfg: ModelConfig) -> ModelConfig:
        """The smaller ModelConfig this plan gives (per-layer lists where the kept counts differ)."""
        self.check(cfg)
        H, K, F = (_widths(x) for x in (self.q_heads, self.kv_heads, self.ffn))
        C, hd = len(self.embed), cfg.dim_head
        n_kv = None if cfg.n_kv_head is None and K == H else K
        window = None if cfg.layer_window is None else [cfg.layer_window[i] for i in self.layers]
        uniform_heads = isinstance(H, int) and C % H == 0 and C // H == hd
        return cfg.replace(n_layer=len(self.layers), n_head=H, n_kv_head=n_kv, d_model=C,
                           head_dim=None if uniform_heads else hd, intermediate_size=F, layer_window=window)


def _widths(per_layer: list[list[int]]) -> int | list[int]:
    """One count when every layer keeps the same number, else the per-layer list."""
    counts = [len(x) for x in per_layer]
    return counts[0] if len(set(counts)) == 1 else counts


def _index(rows: list[int], width: int = 1) -> Tensor:
    """Indices of `width`-wide slices `rows` (head h -> h*width .. h*width + width - 1)."""
    r = torch.tensor(rows, dtype=torch.long)
    return (r[:, None] * width + torch.arange(width)).reshape(-1)


def _take(t: Tensor, out_idx: Tensor | None = None, in_idx: Tensor | None = None) -> Tensor:
    if out_idx is not None:
        t = t.index_select(0, out_idx)
    if in_idx is not None and t.dim() > 1:
        t = t.index_select(1, in_idx)
    return t


@torch.no_grad()
def slice_model(model: Transformer, plan: SlicePlan) -> Transformer:
    """A new Transformer holding only what `plan` keeps (the input model is untouched)."""
    cfg = model.config
    check_sliceable(cfg)
    if model.transforms != Transforms():
        raise StructuredError("structured pruning slices float, unfused models; prune before fuse / quantize / pack")
    new_cfg = plan.config(cfg)
    p = next(model.parameters())
    with torch.device("meta"):
        new = Transformer(new_cfg)
    E, hd = _index(plan.embed), cfg.dim_head
    sd = model.state_dict()
    out: dict[str, Tensor] = {}
    for key in ("embed.weight", "pos_embed.weight", "lm_head.weight"):
        if key in sd:
            out[key] = _take(sd[key], None, E)
    if "lm_head.bias" in sd:
        out["lm_head.bias"] = sd["lm_head.bias"]
    for norm in ("embed_norm", "final_norm"):
        for leaf in ("weight", "bias"):
            if f"{norm}.{leaf}" in sd:
                out[f"{norm}.{leaf}"] = sd[f"{norm}.{leaf}"][E]
    for j, (i, q, kv, f) in enumerate(zip(plan.layers, plan.q_heads, plan.kv_heads, plan.ffn)):
        Q, KV, F = _index(q, hd), _index(kv, hd), _index(f)
        rules = {"attn.q_proj": (Q, E), "attn.k_proj": (KV, E), "attn.v_proj": (KV, E), "attn.o_proj": (E, Q),
                 "mlp.gate_proj": (F, E), "mlp.up_proj": (F, E), "mlp.down_proj": (E, F),
                 "attn_norm": (E, None), "mlp_norm": (E, None), "attn.q_norm": (None, None),
                 "attn.k_norm": (None, None)}
        for module, (o_idx, i_idx) in rules.items():
            for leaf in ("weight", "bias"):
                key = f"blocks.{i}.{module}.{leaf}"
                if key in sd:
                    out[f"blocks.{j}.{module}.{leaf}"] = _take(sd[key], o_idx, i_idx if leaf == "weight" else None)
    missing = set(new.state_dict()) - set(out)
    if missing:
        raise StructuredError(f"slicing does not know the tensors {sorted(missing)[:4]}; this layout is unsupported")
    new.load_state_dict({k: v.to(p.dtype).clone() for k, v in out.items()}, assign=True)
    if new_cfg.tie_embeddings:
        new.lm_head.weight = new.embed.weight
    new.rotary = type(new.rotary)({k: type(v)(new_cfg, v.dim) for k, v in new.rotary.items()})
    return new.to(p.device).train(model.training)
