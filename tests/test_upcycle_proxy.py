"""MoE upcycling against the dense model and transformers (Mixtral, Qwen2-MoE), mergekit-moe's router
rows against transformers' hidden states, the load-balancing loss's analytic values and the MoE objective's
term against it, continue_training against the one loop's finetune, and proxy tuning against separately
computed logits (expert == antiexpert returns the base exactly)."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from pocketlm.runtime.proxy import ProxyError, ProxyTuned, open_proxy, parse_spec
from pocketlm.compress.tune import TuneConfig, as_split, continue_training, validation_loss
from pocketlm.compress.upcycle import ExpertSpec, UpcycleError, assemble_moe, moe_costs, read_moe_recipe, upcycle
from pocketlm.evaluate.backends import make_backend
from pocketlm.interop import load_model, save_hf
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import MoE, Transformer
from pocketlm.runtime import open_model
from pocketlm.train.batches import BatchSampler
from pocketlm.train.load_balance import MoELanguageModeling, load_balancing_loss
from pocketlm.train.loop import LanguageModeling, finetune, lm_loss
from tests.merge_fixtures import hf_models


def _tiny(seed: int = 0, d: int = 32, **kw) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=64, d_model=d, n_layer=2, n_head=4, n_kv_head=2, intermediate_size=48,
                      max_seq_len=64, **kw)
    return Transformer(cfg).eval()


IDS = torch.tensor([[3, 9, 1, 7, 22, 5, 11, 2], [4, 4, 8, 15, 16, 23, 42, 1]])


@pytest.mark.parametrize("family,hf_type", [("llama", "mixtral"), ("qwen2", "qwen2_moe"), ("mistral", "mixtral")])
def test_upcycled_moe_equals_dense_and_loads_in_transformers(tmp_path_factory, family, hf_type):
    root = tmp_path_factory.mktemp("up")
    dense = load_model(hf_models(root, family, 1)[0])
    for router, calib in (("random", None), ("hidden", IDS)):
        moe = upcycle(dense, 4, 2, router=router, calibration=calib)
        with torch.no_grad():
            torch.testing.assert_close(moe(IDS), dense(IDS), atol=2e-6, rtol=1e-5)
    out = save_hf(moe, root / "moe")
    ref = T.AutoModelForCausalLM.from_pretrained(out).eval()
    assert ref.config.model_type == hf_type
    with torch.no_grad():
        torch.testing.assert_close(ref(IDS).logits, moe(IDS), atol=1e-5, rtol=1e-5)
    c = moe_costs(moe.config)
    assert c["params_total"] == sum({id(p): p.numel() for p in moe.parameters()}.values())
    assert c["params_active"] < c["params_total"]


def test_noisy_experts_diverge_and_top1_keeps_active_params():
    dense = _tiny()
    moe = upcycle(dense, 4, 1, noise=0.05, seed=3)
    e = moe.blocks[0].mlp.experts.gate_up_proj
    assert not torch.equal(e[0], e[1])
    d, m = moe_costs(dense.config), moe_costs(moe.config)
    assert m["params_active"] - d["params_active"] == 2 * 4 * dense.config.d_model  # the routers only
    assert m["params_total"] > 3 * d["params_active"] // 2


def test_upcycle_refuses_what_it_cannot_do():
    with pytest.raises(UpcycleError, match="gated bias-free"):
        upcycle(_tiny(ffn_type="standard", activation="gelu"), 4, 2)
    with pytest.raises(UpcycleError, match="top_k"):
        upcycle(_tiny(), 2, 3)
    with pytest.raises(UpcycleError, match="calibration"):
        upcycle(_tiny(), 4, 2, router="hidden")


def test_mergekit_moe_hidden_gates_are_transformers_hidden_states(tmp_path):
    """Router row (layer l, expert e) = normalised mean over prompts of the residual stream entering
    layer l at the last token, as transformers' output_hidden_states gives it (mergekit-moe 'hidden')."""
    dirs = hf_models(tmp_path, "llama", 3)
    base, experts = load_model(dirs[0]), [load_model(d) for d in dirs[1:]]

    class Tok:  # token ids as text: "3 9 1"
        bos_token = None

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [int(x) for x in text.split()]}

    specs = [ExpertSpec("a", ["3 9 1 7", "5 11"], ["2 2"]), ExpertSpec("b", ["40 41 42"])]
    moe = assemble_moe(base, experts, specs, Tok(), "hidden", top_k=1)
    ref = T.AutoModelForCausalLM.from_pretrained(dirs[0]).eval()

    def hidden(prompts):
        with torch.no_grad():
            hs = [torch.stack(ref(torch.tensor([[int(x) for x in p.split()]]), output_hidden_states=True)
                              .hidden_states[:-1])[:, 0, -1] for p in prompts]
        return torch.stack(hs).mean(0)

    want = [hidden(specs[0].positive_prompts) - hidden(specs[0].negative_prompts), hidden(specs[1].positive_prompts)]
    for layer, block in enumerate(moe.blocks):
        for e in range(2):
            w = want[e][layer]
            torch.testing.assert_close(block.mlp.router.weight[e], w / w.norm(), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(block.mlp.experts.down_proj[1], experts[1].blocks[layer].mlp.down_proj.weight)
    torch.testing.assert_close(moe.blocks[0].attn.q_proj.weight, base.blocks[0].attn.q_proj.weight)


def test_read_moe_recipe(tmp_path):
    p = tmp_path / "moe.yaml"
    p.write_text("base_model: a\ngate_mode: cheap_embed\nexperts_per_token: 1\nexperts:\n"
                 "  - source_model: b\n    positive_prompts: [\"code\"]\n")
    r = read_moe_recipe(p)
    assert (r.gate_mode, r.experts_per_token, r.experts[0].positive_prompts) == ("cheap_embed", 1, ["code"])
    p.write_text("base_model: a\nexperts: [{source_model: b}]\nshared_experts: []\n")
    with pytest.raises(UpcycleError, match="shared_experts"):
        read_moe_recipe(p)


def test_load_balancing_loss_analytic():
    E, N = 4, 400
    # uniform router: f_e = P_e = 1/E -> E * E * (1/E^2) = 1
    assert load_balancing_loss([torch.zeros(N, E)], 1).item() == pytest.approx(1.0)
    # every token sure of expert 0: f_0 = 1, P_0 ~ 1 -> ~E
    collapsed = torch.full((N, E), -30.0)
    collapsed[:, 0] = 30.0
    assert load_balancing_loss([collapsed], 1).item() == pytest.approx(E, rel=1e-3)


def test_continue_training_lowers_loss_and_balances():
    moe = upcycle(_tiny(), 4, 1, noise=0.01)
    data = torch.randint(0, 16, (4000,)).numpy()  # a 16-token subset: learnable
    res = continue_training(moe, data, TuneConfig(steps=30, lr=3e-3, batch_size=4, seq_len=32, warmup_steps=3))
    assert res.losses[-1] < res.losses[0] and len(res.aux) == 30


def test_continue_training_is_finetune_with_language_modeling():
    data = torch.randint(0, 16, (4000,)).numpy()
    cfg = TuneConfig(steps=8, lr=3e-3, batch_size=4, seq_len=32, warmup_steps=2, seed=3)
    a, b = _tiny(), _tiny()
    res = continue_training(a, data, cfg, evaluate=lambda m: validation_loss(m, data, 32, 4), eval_every=4)
    sampler = BatchSampler(as_split(data), cfg.seq_len, cfg.seed)
    run = finetune(b, lambda step: (sampler.global_batch(step, cfg.batch_size)[0], {}), cfg.steps, cfg.lr,
                   objective=LanguageModeling(), warmup_steps=2, weight_decay=0.0, threads=1)
    assert res.losses == [r["loss"] for r in run.rows if r["kind"] == "train"] and res.aux == []
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert [t for t, _ in res.evals] == [0, 4 * 128, 8 * 128] and res.tokens == 8 * 128


def test_moe_objective_aux_is_the_load_balancing_loss_of_the_routers():
    moe = upcycle(_tiny(), 4, 2, noise=0.05)
    captured = []
    hooks = [m.router.register_forward_hook(lambda mod, inp, out: captured.append(out))
             for m in moe.modules() if isinstance(m, MoE)]
    batch = torch.randint(0, 64, (3, 17))
    total, terms = MoELanguageModeling(0.1, 2).loss(moe, batch)
    for h in hooks:
        h.remove()
    assert len(captured) == 2 and not any(h for m in moe.modules() for h in m._forward_hooks.values()
                                          if isinstance(m, MoE))
    assert terms["aux"].item() == pytest.approx(load_balancing_loss(captured, 2).item(), abs=1e-6)
    assert terms["lm"].item() == pytest.approx(lm_loss(moe, batch).item(), abs=1e-6)
    assert total.item() == pytest.approx(terms["lm"].item() + 0.1 * terms["aux"].item(), abs=1e-6)


# ---- proxy tuning ---------------------------------------------------------------------------------

def test_proxy_with_expert_equal_to_antiexpert_is_the_base():
    base, small = _tiny(0, d=64), _tiny(1)
    proxy = ProxyTuned(base, small, small)
    with torch.no_grad():
        assert torch.equal(proxy(IDS), base(IDS).float())
        assert torch.equal(proxy.generate(IDS, max_new_tokens=6), base.generate(IDS, max_new_tokens=6))


def test_proxy_logits_are_base_plus_alpha_difference():
    base, expert, anti = _tiny(0, d=64), _tiny(1), _tiny(2)
    proxy = ProxyTuned(base, expert, anti, alpha=0.7)
    with torch.no_grad():
        want = base(IDS) + 0.7 * (expert(IDS) - anti(IDS))
        torch.testing.assert_close(proxy(IDS), want)
        # cached decoding (three KV caches) equals recomputing the whole prefix
        cached = proxy.generate(IDS, max_new_tokens=8)
        assert torch.equal(cached, proxy.generate(IDS, max_new_tokens=8, use_cache=False))
        # the evaluator's prefix reuse: prefill + select rows + extend equals one forward
        be = make_backend(proxy)
        mask, pos = torch.ones_like(IDS), torch.arange(8).expand(2, 8)
        logits, cache = be.prefill(IDS[:, :5], mask[:, :5], pos[:, :5], capacity=8, keep=1)
        cache = be.select(cache, torch.tensor([1, 0]))
        ext = be.extend(cache, IDS.flip(0)[:, 5:], mask[:, :8], pos[:, 5:])
        torch.testing.assert_close(ext, proxy(IDS.flip(0))[:, 5:], atol=1e-5, rtol=1e-5)


def test_proxy_spec_and_errors(tmp_path):
    paths, alpha = parse_spec("proxy:base=/a,expert=/b,anti=/c,alpha=0.5")
    assert (str(paths["expert"]), alpha) == ("/b", 0.5)
    with pytest.raises(ProxyError, match="missing"):
        parse_spec("proxy:base=/a,expert=/b")
    with pytest.raises(ProxyError, match="vocabulary sizes differ"):
        ProxyTuned(_tiny(), _tiny(), Transformer(ModelConfig(vocab_size=65, d_model=32, n_layer=1, n_head=4)))


def test_proxy_opens_through_the_runtime(tmp_path):
    from pocketlm.train.fixtures import trained_preset

    tiny, _ = trained_preset("micro")
    spec = f"proxy:base={tiny},expert={tiny},anti={tiny}"
    proxy = open_model(spec)
    base = open_model(tiny)
    with torch.no_grad():
        assert torch.equal(proxy(IDS), base(IDS))
    # a tokenizer that differs is refused
    other = tmp_path / "other"
    save_hf(load_model(tiny), other)
    tok = T.PreTrainedTokenizerFast(tokenizer_file=str(tiny / "tokenizer.json"))
    tok.add_tokens(["<extra>"])
    tok.save_pretrained(other)
    with pytest.raises(ProxyError, match="tokenizers differ"):
        open_proxy(f"proxy:base={tiny},expert={other},anti={tiny}")


def test_warm_study_pipeline_averages_the_finetunes(tmp_path):
    """The WARM study end to end on the micro preset: fine-tunes saved as HF, a mergekit linear recipe,
    pocketlm merge, and the merged model equal to the mean of the fine-tunes."""
    from pocketlm.compress.studies import warm_study

    p = warm_study(tmp_path, k=2, steps=2, batch_size=2, seq_len=32, preset="micro", eval_windows=2)
    assert set(p["val_loss"]) == {"base", "fine-tune 0", "fine-tune 1", "WARM (average)"}
    assert (tmp_path / "warm.png").is_file() and (tmp_path / "warm.json").is_file()
    a, b, w = (load_model(d).state_dict() for d in (tmp_path / "finetunes" / "0", tmp_path / "finetunes" / "1",
                                                     tmp_path / "warm"))
    for k in w:
        torch.testing.assert_close(w[k], (a[k] + b[k]) / 2, atol=1e-6, rtol=0)
