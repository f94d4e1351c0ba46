"""lm-eval adapter: run any lm-evaluation-harness task on a pocketlm (or compressed) model.

    from pocketlm.evaluate.lm_eval_adapter import PocketLM
    lm = PocketLM(pretrained="runs/my_model")          # or PocketLM(model=m, tokenizer=tok)
    lm_eval.simple_evaluate(model=lm, tasks=["hellaswag"])

or on the command line: ``lm_eval --model pocketlm --model_args pretrained=DIR --tasks ...``
(the class registers itself as ``pocketlm`` when this module is imported).
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from .backends import make_backend
from .loading import load_for_eval
from .scorer import Scorer


@register_model("pocketlm")
class PocketLM(LM):
    """lm-eval ``LM`` over pocketlm's scorer (prefix-shared log-likelihoods, cached greedy generation)."""

    def __init__(self, pretrained: str | None = None, model: Any = None, tokenizer: Any = None,
                 batch_tokens: int = 1024, max_length: int | None = None, dtype: str | None = None, **kwargs: Any):
        super().__init__()
        if model is None:
            if pretrained is None:
                raise ValueError("PocketLM needs pretrained=PATH or model=... and tokenizer=...")
            model, tokenizer = load_for_eval(pretrained, kwargs.get("tokenizer_path"), dtype=dtype)
        self.model = model
        self.scorer = Scorer(make_backend(model, tokenizer, max_length), tokenizer, batch_tokens=int(batch_tokens))

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        # requests sharing a context form one group, so its prefix is computed once
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(req.args[0], []).append(i)
        order = list(groups.values())
        scored = self.scorer.loglikelihood_groups([[requests[i].args for i in idx] for idx in order])
        out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        for idx, res in zip(order, scored):
            for i, r in zip(idx, res):
                out[i] = (float(r[0]), bool(r[1]))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        return self.scorer.loglikelihood_rolling([req.args[0] for req in requests])

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out: list[str] = [""] * len(requests)
        by_kwargs: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            by_kwargs.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        for idx in by_kwargs.values():
            kw = requests[idx[0]].args[1]
            until = kw.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_gen = int(kw.get("max_gen_toks", 256))
            if kw.get("do_sample") or float(kw.get("temperature", 0.0) or 0.0) > 0:
                raise NotImplementedError("PocketLM.generate_until supports greedy decoding only (do_sample=False)")
            texts = self.scorer.generate_until([requests[i].args[0] for i in idx], until, max_gen)
            for i, t in zip(idx, texts):
                out[i] = t
        return out
