"""The Switch Transformer load-balancing loss for MoE models (Fedus et al. 2021, arXiv:2101.03961, eq. 4)
and the objective that adds it to next-token cross-entropy.

aux = E · Σₑ fₑ · Pₑ, with fₑ the share of top-k assignments routed to expert e and Pₑ its mean router
probability, averaged over MoE layers (1.0 when balanced, E when every token picks one expert). The
router logits are read with forward hooks on the routers for the length of one loss call; the model's
forward is unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pocketlm.model.transformer import MoE
from pocketlm.train.loop import Batch, Objective, lm_loss, tokens_of


def load_balancing_loss(router_logits: list[torch.Tensor], top_k: int) -> torch.Tensor:
    """Switch-style auxiliary loss over the router logits [N, E] of each MoE layer (1.0 = balanced)."""
    total = torch.zeros(())
    for logits in router_logits:
        probs = logits.float().softmax(-1)
        E = probs.shape[-1]
        chosen = probs.topk(top_k, dim=-1).indices
        share = F.one_hot(chosen, E).float().sum(1).mean(0) / top_k  # f_e
        total = total + E * (share * probs.mean(0)).sum()
    return total / max(1, len(router_logits))


class MoELanguageModeling(Objective):
    """Next-token cross-entropy plus `aux_weight` times the load-balancing loss of the model's routers;
    logs both parts ("lm", "aux")."""

    name = "moe_language_modeling"

    def __init__(self, aux_weight: float, top_k: int) -> None:
        self.aux_weight, self.top_k = aux_weight, top_k

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        routers: list[torch.Tensor] = []
        hooks = [m.router.register_forward_hook(lambda mod, inp, out: routers.append(out))
                 for m in model.modules() if isinstance(m, MoE)]
        try:
            lm = lm_loss(model, tokens_of(batch))
        finally:
            for h in hooks:
                h.remove()
        aux = load_balancing_loss(routers, self.top_k)
        return lm + self.aux_weight * aux, {"lm": lm.detach(), "aux": aux.detach()}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "aux_weight": self.aux_weight, "top_k": self.top_k}
