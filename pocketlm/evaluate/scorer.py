"""Log-likelihood scoring and greedy generation, tokenised exactly as lm-eval's HF backend.

Speed: requests are grouped per example; the longest token prefix the example's requests share
(its few-shot prompt and question) runs once through the model, its KV cache is copied to one row
per choice, and only the choices' own tokens run after it. Examples are batched longest-first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .backends import Backend, ModelInputError


class Tokenizer:
    """lm-eval's HFLM tokenisation rules over a transformers tokenizer."""

    def __init__(self, tokenizer: Any):
        if tokenizer is None:
            raise ModelInputError("the model has no tokenizer: save tokenizer files (tokenizer.json or vocab + "
                                  "merges) next to the weights, or pass --tokenizer PATH")
        self.tok = tokenizer
        self.eos_token_id = tokenizer.eos_token_id
        bos = tokenizer.bos_token_id
        self.prefix_token_id = bos if bos is not None else tokenizer.eos_token_id
        if self.prefix_token_id is None:
            raise ModelInputError("the tokenizer has neither a BOS nor an EOS token; lm-eval scoring needs one to "
                                  "condition empty contexts on")
        self._prefix_str = tokenizer.decode(self.prefix_token_id)

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        kwargs = {}
        if add_special_tokens is not None:
            kwargs["add_special_tokens"] = add_special_tokens
        elif self._prefix_str and text.startswith(self._prefix_str):
            kwargs["add_special_tokens"] = False
        return self.tok.encode(text, **kwargs)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context tokens, continuation tokens) as lm-eval forms them."""
        if context == "":
            cont = self.encode(continuation, add_special_tokens=False)
            if cont and cont[0] == self.prefix_token_id:
                return cont[:1], cont[1:]
            return [self.prefix_token_id], cont
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx):]


@dataclass
class _Row:
    seq: list[int]      # context + continuation tokens (left-truncated to max_length + 1)
    n_cont: int         # scored tokens at the end of seq

    @property
    def inputs(self) -> list[int]:
        return self.seq[:-1]


def _common_prefix(rows: list[_Row]) -> int:
    first = rows[0].inputs
    n = min(len(r.inputs) for r in rows) - 1  # every row keeps at least one token of its own
    for i in range(max(n, 0)):
        tok = first[i]
        if any(r.inputs[i] != tok for r in rows[1:]):
            return i
    return max(n, 0)


def _score_segments(selected: Tensor, targets: Tensor, segments: Tensor, n: int) -> list[tuple[float, bool]]:
    """Per-segment sum of log p(target) (float32 log-softmax) and whether every target was the argmax.

    ``selected`` [N, V] holds the logits of every scored position of a batch (one op for all rows:
    few large kernels instead of many small ones).
    """
    selected = selected.float()
    tok_ll = selected.gather(-1, targets[:, None]).squeeze(-1) - selected.logsumexp(-1)
    miss = (selected.argmax(-1) != targets).to(torch.float64)
    ll = torch.zeros(n, dtype=torch.float64, device=selected.device).index_add_(0, segments, tok_ll.double())
    misses = torch.zeros(n, dtype=torch.float64, device=selected.device).index_add_(0, segments, miss)
    return [(float(a), bool(m == 0)) for a, m in zip(ll.tolist(), misses.tolist())]


class Scorer:
    """Scores (context, continuation) requests and generates text with one model."""

    def __init__(self, backend: Backend, tokenizer: Any, batch_tokens: int = 1024, logit_budget: int = 2**23,
                 share_prefix: bool = True):
        self.backend = backend
        self.tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer(tokenizer)
        self.batch_tokens = batch_tokens
        self.logit_budget = logit_budget  # max logits materialised at once (rows x positions x vocab)
        self.share_prefix = share_prefix and backend.supports_cache
        self.max_length = backend.max_length
        cfg = getattr(backend.model, "config", None)
        self._vocab = int(getattr(cfg, "vocab_size", 0) or len(self.tok.tok))

    # ------------------------------------------------------------------ log-likelihood
    def _rows(self, requests: Sequence[tuple[str, str]]) -> list[_Row]:
        rows = []
        for context, continuation in requests:
            ctx, cont = self.tok.encode_pair(context, continuation)
            if not cont:
                raise ValueError(f"continuation {continuation!r} encodes to no tokens")
            seq = (ctx + cont)[-(self.max_length + 1):]
            rows.append(_Row(seq, min(len(cont), len(seq) - 1)))
        return rows

    @torch.inference_mode()
    def loglikelihood_groups(self, groups: Sequence[Sequence[tuple[str, str]]],
                             progress: Callable[[int], None] | None = None) -> list[list[tuple[float, bool]]]:
        """For each group (one example's requests) the (log-likelihood, is_greedy) of every request."""
        token_groups = [self._rows(g) for g in groups]
        return self.loglikelihood_token_groups(token_groups, progress)

    def loglikelihood_token_groups(self, token_groups: list[list[_Row]],
                                   progress: Callable[[int], None] | None = None) -> list[list[tuple[float, bool]]]:
        results: list[list[tuple[float, bool]] | None] = [None] * len(token_groups)
        shared = [i for i, g in enumerate(token_groups) if self.share_prefix and len(g) > 1 and _common_prefix(g) > 0]
        shared_set = set(shared)
        single = [(i, j) for i, g in enumerate(token_groups) if i not in shared_set for j in range(len(g))]
        flat: dict[tuple[int, int], tuple[float, bool]] = {}
        self._score_full(token_groups, single, flat, progress)
        for i, j in single:
            results[i] = results[i] or [None] * len(token_groups[i])  # type: ignore[assignment]
            results[i][j] = flat[(i, j)]  # type: ignore[index]
        self._score_shared(token_groups, shared, results, progress)
        return results  # type: ignore[return-value]

    def _batches(self, items: list, length: Callable[[Any], int], width: Callable[[Any], int]) -> list[list]:
        """Longest-first batches bounded by padded tokens and by materialised logits."""
        vocab = self._vocab
        items = sorted(items, key=length, reverse=True)
        batches, cur = [], []
        for it in items:
            longest = length(cur[0]) if cur else length(it)
            rows = sum(width(x) for x in cur) + width(it)
            if cur and (longest * (len(cur) + 1) > self.batch_tokens or rows * longest * vocab > self.logit_budget):
                batches.append(cur)
                cur = []
            cur.append(it)
        if cur:
            batches.append(cur)
        return batches

    def _score_full(self, groups, keys, out, progress) -> None:
        device = self.backend.device
        for batch in self._batches(keys, lambda k: len(groups[k[0]][k[1]].inputs), lambda k: 1):
            rows = [groups[i][j] for i, j in batch]
            T = max(len(r.inputs) for r in rows)
            keep = max(r.n_cont for r in rows)
            ids = torch.zeros(len(rows), T, dtype=torch.long)
            mask = torch.zeros(len(rows), T, dtype=torch.long)
            for b, r in enumerate(rows):  # left padding: every row's scored tokens end at T
                ids[b, T - len(r.inputs):] = torch.tensor(r.inputs)
                mask[b, T - len(r.inputs):] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self.backend.forward(ids.to(device), mask.to(device), positions.to(device), keep)
            self._vocab = logits.shape[-1]
            b_idx = [b for b, r in enumerate(rows) for _ in range(r.n_cont)]
            p_idx = [keep - r.n_cont + t for r in rows for t in range(r.n_cont)]
            targets = [tok for r in rows for tok in r.seq[-r.n_cont:]]
            seg = [b for b, r in enumerate(rows) for _ in range(r.n_cont)]
            dev = logits.device
            scored = _score_segments(logits[torch.tensor(b_idx, device=dev), torch.tensor(p_idx, device=dev)],
                                     torch.tensor(targets, device=dev), torch.tensor(seg, device=dev), len(rows))
            for key, sc in zip(batch, scored):
                out[key] = sc
            if progress:
                progress(len(batch))

    def _score_shared(self, groups, idx, results, progress) -> None:
        device = self.backend.device
        prefix = {i: _common_prefix(groups[i]) for i in idx}
        for batch in self._batches(idx, lambda i: prefix[i] + max(len(r.inputs) - prefix[i] for r in groups[i]),
                                   lambda i: len(groups[i])):
            P = max(prefix[i] for i in batch)
            E = max(len(r.inputs) - prefix[i] for i in batch for r in groups[i])
            ids = torch.zeros(len(batch), P, dtype=torch.long)
            mask = torch.zeros(len(batch), P, dtype=torch.long)
            for b, i in enumerate(batch):  # left-padded prefixes
                p = prefix[i]
                ids[b, P - p:] = torch.tensor(groups[i][0].inputs[:p])
                mask[b, P - p:] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            # prefix positions whose logits score a token (a choice's first tokens may be shared)
            keep = max(prefix[i] - min(len(r.inputs) - r.n_cont for r in groups[i]) for i in batch)
            keep = max(keep, 1)
            pre_logits, cache = self.backend.prefill(ids.to(device), mask.to(device), positions.to(device), P + E,
                                                     keep)
            self._vocab = pre_logits.shape[-1]
            owner = [b for b, i in enumerate(batch) for _ in groups[i]]
            cache = self.backend.select(cache, torch.tensor(owner, device=device))
            rows = [(b, i, j, r) for b, i in enumerate(batch) for j, r in enumerate(groups[i])]
            ext = torch.zeros(len(rows), E, dtype=torch.long)
            ext_mask = torch.zeros(len(rows), E, dtype=torch.long)
            for k, (b, i, j, r) in enumerate(rows):
                tail = r.inputs[prefix[i]:]
                ext[k, :len(tail)] = torch.tensor(tail)
                ext_mask[k, :len(tail)] = 1
            full_mask = torch.cat([mask[owner], ext_mask], dim=1)
            ext_pos = torch.tensor([prefix[i] for _, i, _, _ in rows])[:, None] + torch.arange(E)[None]
            ext_logits = self.backend.extend(cache, ext.to(device), full_mask.to(device), ext_pos.to(device))
            pre_b, pre_p, pre_t, pre_s = [], [], [], []
            ext_b, ext_p, ext_t, ext_s = [], [], [], []
            for k, (b, i, j, r) in enumerate(rows):
                p, n_in = prefix[i], len(r.inputs)
                start = n_in - r.n_cont
                for s_pos in range(start, n_in):  # logits at s_pos score token s_pos + 1
                    if s_pos < p:  # a choice's first tokens may lie in the shared prefix
                        pre_b.append(b), pre_p.append(keep - (p - s_pos)), pre_t.append(r.seq[s_pos + 1])
                        pre_s.append(k)
                    else:
                        ext_b.append(k), ext_p.append(s_pos - p), ext_t.append(r.seq[s_pos + 1]), ext_s.append(k)
            dev = ext_logits.device
            sel = ext_logits[torch.tensor(ext_b, device=dev), torch.tensor(ext_p, device=dev)]
            if pre_b:
                sel = torch.cat([pre_logits[torch.tensor(pre_b, device=dev), torch.tensor(pre_p, device=dev)], sel])
            scored = _score_segments(sel, torch.tensor(pre_t + ext_t, device=dev),
                                     torch.tensor(pre_s + ext_s, device=dev), len(rows))
            for (b, i, j, r), sc in zip(rows, scored):
                if results[i] is None:
                    results[i] = [None] * len(groups[i])
                results[i][j] = sc
            if progress:
                progress(len(batch))

    # ------------------------------------------------------------------ rolling (perplexity)
    def rolling_windows(self, text: str) -> list[_Row]:
        """lm-eval's disjoint rolling windows (context length 1) over the whole text."""
        tokens = self.tok.encode(text)
        L = self.max_length
        rows: list[_Row] = []
        if not tokens:
            return rows
        first = min(L, len(tokens))
        rows.append(_Row([self.tok.prefix_token_id] + tokens[:first], first))
        done = first
        while done < len(tokens):
            n = min(len(tokens) - done, L)
            end = done + n
            ctx = tokens[max(end - L - 1, 0):end - 1]
            ctx = ctx[:len(ctx) - (n - 1)]
            rows.append(_Row(ctx + tokens[end - n:end], n))
            done = end
        return rows

    @torch.inference_mode()
    def loglikelihood_rolling(self, texts: Sequence[str], progress=None) -> list[float]:
        groups = [self.rolling_windows(t) for t in texts]
        keys = [(i, j) for i, g in enumerate(groups) for j in range(len(g))]
        out: dict = {}
        self._score_full(groups, keys, out, None)
        if progress:
            progress(len(texts))
        return [sum(out[(i, j)][0] for j in range(len(g))) for i, g in enumerate(groups)]

    # ------------------------------------------------------------------ generation
    @torch.inference_mode()
    def generate_until(self, contexts: Sequence[str], until: Sequence[str], max_gen_toks: int = 256,
                       batch_size: int = 8, progress=None) -> list[str]:
        """Greedy continuations, cut at the first stop sequence (the EOS text is always a stop)."""
        stops = list(until)
        eos_text = self.tok.tok.decode([self.tok.eos_token_id]) if self.tok.eos_token_id is not None else None
        if eos_text and eos_text not in stops:
            stops.append(eos_text)
        max_ctx = self.max_length - max_gen_toks
        if max_ctx <= 0:
            raise ValueError(f"max_gen_toks {max_gen_toks} leaves no room in the model's {self.max_length} tokens")
        encoded = [self.tok.encode(c)[-max_ctx:] for c in contexts]
        order = sorted(range(len(contexts)), key=lambda i: -len(encoded[i]))
        out: list[str] = [""] * len(contexts)
        device = self.backend.device
        for s in range(0, len(order), batch_size):
            chunk = order[s:s + batch_size]
            T = max(len(encoded[i]) for i in chunk)
            ids = torch.zeros(len(chunk), T, dtype=torch.long)
            mask = torch.zeros(len(chunk), T, dtype=torch.long)
            for b, i in enumerate(chunk):
                ids[b, T - len(encoded[i]):] = torch.tensor(encoded[i])
                mask[b, T - len(encoded[i]):] = 1
            texts = self._greedy(ids.to(device), mask.to(device), stops, max_gen_toks)
            for b, i in enumerate(chunk):
                text = texts[b]
                for stop in stops:
                    if stop:
                        text = text.split(stop)[0]
                out[i] = text
            if progress:
                progress(len(chunk))
        return out

    def _greedy(self, ids: Tensor, mask: Tensor, stops: list[str], max_new: int) -> list[str]:
        B, T = ids.shape
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        if self.backend.supports_cache:
            logits, cache = self.backend.prefill(ids, mask, positions, T + max_new, 1)
        else:
            logits, cache = self.backend.forward(ids, mask, positions, 1), None
        last = logits[:, -1]
        new: list[list[int]] = [[] for _ in range(B)]
        done = [False] * B
        eos = self.tok.eos_token_id
        for step in range(max_new):
            nxt = last.argmax(-1)
            for b in range(B):
                if done[b]:
                    continue
                t = int(nxt[b])
                if t == eos:
                    done[b] = True
                    continue
                new[b].append(t)
                tail = self.tok.decode(new[b][-12:])
                if any(s and s in tail for s in stops):
                    done[b] = True
            if all(done) or step == max_new - 1:
                break
            mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=mask.device)], dim=1)
            pos = positions[:, -1:] + 1
            positions = torch.cat([positions, pos], dim=1)
            if cache is not None:
                last = self.backend.extend(cache, nxt[:, None], mask, pos)[:, -1]
            else:
                ids = torch.cat([ids, nxt[:, None]], dim=1)
                last = self.backend.forward(ids, mask, positions, 1)[:, -1]
        return [self.tok.decode(n) for n in new]
