"""Speculative decoding (model/speculative.py): greedy output identical to the target decoding alone,
and sampling that draws from the target's own distribution (a chi-square test against the exact
distribution enumerated from the target's logits, with the draft's distribution as the control)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pocketlm.model.config import ModelConfig
from pocketlm.model.speculative import SpeculativeError, speculative_generate, verify
from pocketlm.model.transformer import Transformer
from tests.threads import one_thread  # noqa: F401 (autouse)


def _model(seed: int, n_layer: int = 2, vocab: int = 128, sharpen: float = 1.0, **kw) -> Transformer:
    cfg = ModelConfig(vocab_size=vocab, d_model=32, n_layer=n_layer, n_head=4, n_kv_head=2, intermediate_size=64,
                      max_seq_len=256, tie_embeddings=False, **kw)
    torch.manual_seed(seed)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)  # random init is near uniform; sharpen to make the models disagree
    return model



@pytest.fixture(scope="module")
def pair() -> tuple[Transformer, Transformer]:
    return _model(0, n_layer=3, sharpen=30.0), _model(1, n_layer=1, sharpen=30.0)


@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_greedy_output_is_the_targets_own(pair, k) -> None:
    target, draft = pair
    for seed in range(3):
        prompt = torch.randint(0, 128, (1, 5 + 3 * seed), generator=torch.Generator().manual_seed(seed))
        alone = target.generate(prompt, max_new_tokens=20)
        fast, stats = speculative_generate(target, draft, prompt, max_new_tokens=20, k=k)
        assert torch.equal(fast, alone), (k, seed)
        assert torch.equal(target.generate(prompt, max_new_tokens=20, draft=draft, k=k), alone)
        assert stats.new_tokens == 20 and stats.target_forwards <= 20


def test_a_draft_equal_to_the_target_is_always_accepted(pair) -> None:
    target, _ = pair
    prompt = torch.tensor([[1, 2, 3]])
    out, stats = speculative_generate(target, target, prompt, max_new_tokens=17, k=4)
    assert torch.equal(out, target.generate(prompt, max_new_tokens=17))
    assert stats.acceptance_rate == 1.0 and stats.target_forwards == math.ceil(17 / 5)


def test_stop_tokens_end_the_output_as_the_target_alone_does(pair) -> None:
    target, draft = pair
    prompt = torch.tensor([[5, 6, 7, 8]])
    alone = target.generate(prompt, max_new_tokens=20)
    stop = int(alone[0, 4 + 6])  # the 7th new token
    first = (alone[0, 4:] == stop).nonzero()[0].item()
    ended = speculative_generate(target, draft, prompt, max_new_tokens=20, k=3, stop_tokens=[stop])[0]
    assert torch.equal(ended, alone[:, :4 + first + 1])


def _joint(model: Transformer, prompt: list[int], n: int, vocab: int) -> torch.Tensor:
    """The exact probability of every n-token continuation under `model` at temperature 1."""
    out = torch.zeros([vocab] * n)
    with torch.inference_mode():
        for seq in itertools.product(range(vocab), repeat=n):
            logits = model(torch.tensor([prompt + list(seq[:-1])]))[0, len(prompt) - 1:].float()
            logp = logits.log_softmax(-1)
            out[seq] = float(sum(logp[i, t] for i, t in enumerate(seq)).exp())
    return out


def _chi2(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def _chi2_quantile(df: int, z: float = 3.72) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (z = 3.72: upper tail 1e-4)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_sampling_preserves_the_target_distribution() -> None:
    vocab, n, samples = 5, 2, 2000
    target, draft = _model(2, vocab=vocab, sharpen=80.0), _model(3, n_layer=1, vocab=vocab, sharpen=80.0)
    prompt = [1, 3]
    p, q = _joint(target, prompt, n, vocab), _joint(draft, prompt, n, vocab)
    counts = torch.zeros([vocab] * n)
    accepted = 0
    for s in range(samples):  # k = 2 drafts cover both tokens: every rule (keep, resample, bonus) is exercised
        out, stats = speculative_generate(target, draft, torch.tensor([prompt]), max_new_tokens=n + 1, k=2,
                                          temperature=1.0, seed=s)
        counts[tuple(out[0, len(prompt):len(prompt) + n].tolist())] += 1
        accepted += stats.accepted
    limit = _chi2_quantile(vocab ** n - 1)
    assert _chi2(counts, p) < limit, "speculative samples do not follow the target's distribution"
    assert _chi2(counts, q) > 5 * limit, "control: the draft's distribution must be told apart from the target's"
    assert 0 < accepted < 2 * samples  # some drafts kept, some rejected


def test_the_rejection_rule_on_known_distributions() -> None:
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    q = torch.tensor([[0.1, 0.8, 0.1]])
    gen = torch.Generator().manual_seed(0)
    outcomes = torch.zeros(3)
    resampled = torch.zeros(3)
    for _ in range(4000):  # token 1 (q = 0.8, p = 0.2) is kept 1 time in 4; p - q > 0 only for token 0
        d = int(torch.multinomial(q[0], 1, generator=gen))
        kept, nxt = verify(p, q, [d], False, gen)
        outcomes[d if kept else nxt] += 1
        resampled[nxt] += 0 if kept else 1
    assert resampled[1] == resampled[2] == 0
    assert torch.allclose(outcomes / outcomes.sum(), p[0], atol=0.03)
    assert verify(p, q, [0], True, None) == (1, 2)  # greedy: the target's argmax is kept, then its next argmax


def test_mismatched_vocabularies_and_batches_are_refused(pair) -> None:
    target, _ = pair
    with pytest.raises(SpeculativeError, match="vocabulary"):
        speculative_generate(target, _model(4, vocab=96), torch.tensor([[1, 2]]))
    with pytest.raises(SpeculativeError, match="one prompt"):
        speculative_generate(target, target, torch.tensor([[1, 2], [3, 4]]))
    with pytest.raises(SpeculativeError, match="ring caches"):
        windowed = _model(5, sliding_window=8)
        speculative_generate(windowed, windowed, torch.tensor([[1, 2]]), max_new_tokens=10)
