"""Pruning against analytic values: Wanda's mask is an independent per-row top-k of |W|·||x||₂, N:M groups
hold exactly N zeros, SparseGPT at sparsity 0 is the identity, reconstruction error orders SparseGPT <
Wanda < magnitude on one layer, OWL's block sparsities follow the outlier ratios, and the walk feeds each
block the outputs of the already-pruned blocks."""

from __future__ import annotations

import pytest
import torch

from pocketlm.compress.layerwise import walk
from pocketlm.compress.prune import magnitude, owl, prune, sparsegpt, wanda
from pocketlm.compress.prune.masks import NM, PatternError
from pocketlm.compress.recipe import PruneRecipe, RecipeError
from pocketlm.compress.stats import Hessian, InputNorms
from pocketlm.compress.targets import select
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import Transformer

CFG = ModelConfig(vocab_size=256, d_model=64, n_layer=2, n_head=4, n_kv_head=2, intermediate_size=128,
                  max_seq_len=128, tie_embeddings=False)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one thread (two OpenMP threads spin-wait on a shared 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(cfg: ModelConfig = CFG) -> Transformer:
    torch.manual_seed(0)
    return Transformer(cfg).eval()


def _calib(n: int = 8, length: int = 32, vocab: int = 256) -> torch.Tensor:
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(1))


def _layer_data(rows: int = 48, cols: int = 64, tokens: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight and inputs with heavy-tailed channel scales and correlated channels, as LLM activations have."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(rows, cols, generator=g)
    mix = torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=g) / cols ** 0.5
    X = (torch.randn(tokens, cols, generator=g) @ mix) * torch.exp(torch.randn(cols, generator=g))
    return W, X


def _feed(acc, X: torch.Tensor, batches: int = 4):
    for chunk in X.reshape(batches, -1, X.shape[1]):
        acc.add_batch(chunk[None])
    return acc


def test_wanda_mask_is_topk_of_weight_times_input_norm_per_row():
    W, X = _layer_data()
    pruned = wanda.prune_matrix(W, _feed(InputNorms(64), X), 0.5, None)
    score = W.abs() * torch.linalg.vector_norm(X, dim=0)[None]  # independent: norm over all tokens
    keep = torch.zeros_like(W, dtype=torch.bool).scatter_(1, score.topk(32, dim=1).indices, True)
    assert torch.equal(pruned != 0, keep)
    assert torch.equal(pruned[keep], W[keep])


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_every_nm_group_has_exactly_n_zeros(method, pattern):
    model = _model()
    report = prune(model, method, pattern=pattern, calib=_calib())
    nm = NM.parse(pattern)
    for t in select(model):
        zeros = (t.weight == 0).reshape(t.shape[0], -1, nm.m).sum(-1)
        assert torch.all(zeros == nm.n), t.name
    assert report.sparsity == pytest.approx(nm.n / nm.m)


def test_sparsegpt_at_sparsity_zero_returns_the_weights():
    W, X = _layer_data()
    assert torch.equal(sparsegpt.prune_matrix(W, _feed(Hessian(64), X), 0.0, None), W)


def test_reconstruction_error_orders_sparsegpt_wanda_magnitude():
    W, X = _layer_data()

    def err(Wp):
        return float(((X @ W.T - X @ Wp.T) ** 2).sum())

    e_mag = err(magnitude.prune_matrix(W, None, 0.5, None))
    e_wanda = err(wanda.prune_matrix(W, _feed(InputNorms(64), X), 0.5, None))
    e_sgpt = err(sparsegpt.prune_matrix(W, _feed(Hessian(64), X), 0.5, None))
    assert e_sgpt < e_wanda < e_mag


def test_sparsegpt_loss_estimate_equals_measured_error_without_damping():
    """The solver's reported loss is the OBS error ½Σ(w-q)²/U_jj², which equals ||ΔW X||²/n for damp → 0."""
    W, X = _layer_data()
    H = _feed(Hessian(64), X)
    Wp, loss = sparsegpt.prune_with_loss(W.double(), H, 0.5, None, damp=1e-9)
    measured = float(((X.double() @ (W.double() - Wp).T) ** 2).sum()) / H.n
    assert loss == pytest.approx(measured, rel=1e-3)


def test_magnitude_scopes_match_their_definitions():
    W, _ = _layer_data()
    layer = magnitude.prune_matrix(W, None, 0.25, None, scope="layer")
    row = magnitude.prune_matrix(W, None, 0.25, None, scope="row")
    k = int(W.numel() * 0.25)
    assert (layer == 0).sum() == k + 1  # the reference prunes up to and including the k-th smallest
    assert float(W.abs()[layer == 0].max()) <= float(W.abs()[layer != 0].min())
    assert torch.all((row == 0).sum(1) == int(W.shape[1] * 0.25))


def test_walk_feeds_each_block_the_pruned_blocks_outputs():
    """Block 1's statistics come from the pruned block 0: they equal those of the final model's activations."""
    model = _model()
    calib = _calib()
    seen = {}

    def record(step):
        for t in step.targets:
            pruned = wanda.prune_matrix(t.weight, step.stats[t.input_key], 0.5, None)
            t.weight.copy_(pruned)
        seen[step.index] = step.stats["blocks.1.attn:qkv"].norms().clone() if step.index == 1 else None
        return True

    walk(model, calib, lambda t: InputNorms(t.shape[1]), record)
    after = InputNorms(CFG.d_model)
    hook = model.blocks[1].attn.q_proj.register_forward_hook(lambda m, a, o: after.add_batch(a[0]))
    with torch.no_grad():
        model(calib)
    hook.remove()
    torch.testing.assert_close(seen[1], after.norms(), rtol=1e-4, atol=1e-5)


def test_owl_block_sparsities_follow_outlier_ratios():
    ratios = [1.0, 3.0, 2.0, 6.0]
    s = owl.block_sparsities(ratios, 0.6, lam=0.08)
    assert sum(s) / len(s) == pytest.approx(0.6)
    assert max(s) - min(s) == pytest.approx(0.16)
    assert s[3] == min(s) and s[0] == max(s)  # the most outliers keep the most weights
    scores = [torch.tensor([1.0] * 98 + [100.0, 100.0])]  # mean ≈ 2.98: the two 100s exceed 5x mean
    assert owl.outlier_ratio(scores, 5.0) == pytest.approx(2.0)


def test_owl_prunes_blocks_to_their_sparsities():
    model = _model()
    report = prune(model, "wanda", 0.5, calib=_calib(), owl=True)
    assert len(report.owl_outlier_ratios) == CFG.n_layer
    assert sum(report.block_sparsity) / CFG.n_layer == pytest.approx(0.5)
    for target, realised in zip(report.block_sparsity, report.per_block()):
        assert realised == pytest.approx(target, abs=1 / CFG.d_model)


def test_moe_experts_are_pruned_as_views_and_routers_left_dense():
    cfg = CFG.replace(n_experts=4, top_k=2, moe_intermediate_size=32, n_shared_experts=1,
                      shared_expert_intermediate_size=48, shared_expert_gate=True)
    model = _model(cfg)
    router_before = model.blocks[0].mlp.router.weight.clone()
    report = prune(model, "sparsegpt", 0.5, calib=_calib(16))
    experts = model.blocks[0].mlp.experts
    names = {m.name for m in report.matrices}
    assert "blocks.0.mlp.experts.3.down_proj" in names and "blocks.0.mlp.shared.up_proj" in names
    assert not any("router" in n or "shared_gate" in n for n in names)
    assert float((experts.gate_up_proj == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    assert float((experts.down_proj == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    assert torch.equal(model.blocks[0].mlp.router.weight, router_before)


def test_block_sharing_and_parallel_residual_models_prune():
    for cfg in (CFG.replace(block_repeat=2, n_layer=4), CFG.replace(parallel_residual=True),
                CFG.replace(attention="mla", kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8,
                            qk_nope_head_dim=16, v_head_dim=16)):
        model = _model(cfg)
        report = prune(model, "wanda", 0.5, calib=_calib(4))
        assert report.sparsity == pytest.approx(0.5), cfg
        with torch.no_grad():
            assert torch.isfinite(model(_calib(2))).all()


def test_skip_patterns_leave_matrices_dense():
    model = _model()
    report = prune(model, "magnitude", 0.5, skip=["*.down_proj", "blocks.0.*"])
    names = [m.name for m in report.matrices]
    assert names and all(n.startswith("blocks.1.") and not n.endswith("down_proj") for n in names)
    assert not (model.blocks[0].attn.q_proj.weight == 0).any()


def test_recipe_round_trips_through_yaml_and_validates():
    r = PruneRecipe(method="sparsegpt", pattern="4:8", calib="wikitext2:64x256", seed=3, skip=["*.o_proj"])
    assert PruneRecipe.from_yaml(r.to_yaml()) == r
    assert r.sparsity == 0.5
    for bad, match in [(dict(sparsity=1.0), r"\[0, 1\)"), (dict(sparsity=-0.1), r"\[0, 1\)"),
                       (dict(method="obs"), "unknown method"), (dict(owl=True, pattern="2:4"), "N:M"),
                       (dict(pattern="4:4"), "0 < N < M"), (dict(pattern="5:4"), "0 < N < M"),
                       (dict(pattern="2-4"), "N:M")]:
        with pytest.raises(ValueError, match=match):
            PruneRecipe(**bad)
    with pytest.raises(RecipeError, match="unknown field"):
        PruneRecipe.from_yaml("method: wanda\nsparsty: 0.5\n")


def test_pattern_that_does_not_divide_the_input_width_is_refused():
    model = _model()
    with pytest.raises(PatternError, match="not a multiple of M=6"):
        prune(model, "wanda", pattern="2:6", calib=_calib())
    assert not any((t.weight == 0).any() for t in select(model))  # refused before touching anything


def test_calibration_free_methods_and_calibrated_methods():
    with pytest.raises(ValueError, match="needs calibration"):
        prune(_model(), "wanda", 0.5)
    report = prune(_model(), "magnitude", 0.5)
    assert report.sparsity == pytest.approx(0.5, abs=1e-3) and report.matrices[0].rel_error is None


def test_magnitude_error_probe_equals_a_forward_of_the_pruned_model():
    """Magnitude walks only the rows its error probe reads; the errors are still ||(W - Ŵ)X||² / ||WX||² on
    the first `error_samples` calibration sequences, X each matrix's inputs with the blocks before its own
    pruned and its own block dense (the sequential walk's convention)."""
    import copy

    calib, dense = _calib(32), _model()
    pruned = _model()
    report = prune(pruned, "magnitude", 0.5, calib=calib)
    errors = {m.name: m.rel_error for m in report.matrices}
    weights = {t.name: (t.weight, dict((u.name, u.weight) for u in select(pruned))[t.name]) for t in select(dense)}
    for b in range(CFG.n_layer):
        hybrid = copy.deepcopy(dense)
        for i in range(b):
            hybrid.blocks[i].load_state_dict(pruned.blocks[i].state_dict())
        inputs: dict[str, torch.Tensor] = {}

        def grab(module, args, output, t) -> None:
            inputs[t.name] = t.extract(args).reshape(-1, t.shape[1])

        handles = [t.module.register_forward_hook(lambda m, a, o, t=t: grab(m, a, o, t))
                   for t in select(hybrid) if t.block == b]
        with torch.no_grad():
            hybrid(calib[:PruneRecipe().error_samples])
        for h in handles:
            h.remove()
        for name, X in inputs.items():
            W, Wp = weights[name]
            expected = float(((W - Wp) @ X.T).pow(2).sum() / (W @ X.T).pow(2).sum())
            assert errors[name] == pytest.approx(expected, rel=1e-4)


def test_bf16_calibration_forward_keeps_fp32_statistics_and_nearly_the_same_masks():
    calib = _calib(16)
    seen: list[torch.dtype] = []

    def stat(t):
        acc = InputNorms(t.shape[1])
        add = acc.add_batch
        acc.add_batch = lambda x: (seen.append(x.dtype), add(x))
        return acc

    walk(_model(), calib, stat, lambda step: False, compute_dtype=torch.bfloat16)
    assert torch.bfloat16 in seen  # the block ran in bf16 (o_proj and down_proj read bf16 activations)
    reports, weights = {}, {}
    for dtype in ("fp32", "bf16"):
        model = _model()
        reports[dtype] = prune(model, "wanda", 0.5, calib=calib, calib_dtype=dtype)
        weights[dtype] = torch.cat([t.weight.flatten() != 0 for t in select(model)])
    agree = float((weights["fp32"] == weights["bf16"]).float().mean())
    assert 0.97 < agree < 1.0  # bf16 rounding moves a few near-threshold weights, no more
    for a, b in zip(reports["fp32"].matrices, reports["bf16"].matrices):
        assert b.rel_error == pytest.approx(a.rel_error, rel=0.1)
    with pytest.raises(RecipeError, match="calib_dtype"):
        PruneRecipe(calib_dtype="fp8")


def test_inverse_hessian_factor_is_the_upper_cholesky_factor_of_the_damped_inverse() -> None:
    """One Cholesky of the reversed H gives the factor the reference forms as chol(H⁻¹) (SparseGPT/GPTQ)."""
    torch.manual_seed(0)
    x = torch.randn(300, 40, dtype=torch.float64)
    H = x.T @ x
    H[7, :], H[:, 7] = 0, 0  # a dead input: its row and column become the identity's, its weights zero
    W = torch.randn(5, 40, dtype=torch.float64)
    U = sparsegpt.inverse_hessian_factor(H.clone(), W, damp=0.01)
    damped = H.clone()
    damped[7, 7] = 1
    damped.diagonal().add_(0.01 * torch.mean(torch.diag(damped)))
    reference = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(damped)), upper=True)
    assert torch.equal(U, U.triu()) and bool((U.diagonal() > 0).all())
    assert torch.allclose(U, reference, atol=1e-10)
    assert torch.allclose(U.T @ U, torch.linalg.inv(damped), atol=1e-10)
    assert bool((W[:, 7] == 0).all())


def test_hessian_over_batches_is_two_over_n_x_xt() -> None:
    """The running Hessian over batches equals 2/n XᵀX of all rows at once (n = sequences seen)."""
    torch.manual_seed(0)
    a, b = torch.randn(2, 5, 8), torch.randn(3, 5, 8)
    stat = Hessian(8)
    stat.add_batch(a)
    stat.add_batch(b)
    rows = torch.cat([a, b]).reshape(-1, 8).double()
    assert stat.n == 5
    assert torch.allclose(stat.H.double(), 2 / 5 * rows.T @ rows, atol=1e-5)


def test_hessian_and_gram_accumulate_the_upper_triangle_into_a_symmetric_matrix() -> None:
    """Over panels of the upper triangle (the last one narrower), H and the error Gram are exactly symmetric
    and are XᵀX (float64 reference); assigning G (AWQ's rescale) keeps what was assigned."""
    from pocketlm.compress.stats import PANEL, Gram

    torch.manual_seed(0)
    width = PANEL + 8
    a, b = torch.randn(2, 16, width), torch.randn(3, 16, width)
    stat, gram = Hessian(width), Gram(width, max_samples=2)
    for x in (a, b):
        stat.add_batch(x)
        gram.add_batch(x)
    rows, first = torch.cat([a, b]).reshape(-1, width).double(), a.reshape(-1, width).double()
    assert torch.equal(stat.H, stat.H.T) and torch.equal(gram.G, gram.G.T)
    torch.testing.assert_close(stat.H.double(), 2 / 5 * rows.T @ rows, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gram.G.double(), first.T @ first, rtol=1e-5, atol=1e-4)
    gram.G = gram.G * 2
    torch.testing.assert_close(gram.G.double(), 2 * first.T @ first, rtol=1e-5, atol=1e-4)
