"""The shared training loop against a textbook PyTorch loop; recovery fine-tuning after pruning; resume
guards; accumulation over batches that carry cached teacher logits."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from pocketlm.interop import load_model
from pocketlm.model.transformer import Transformer
from pocketlm.train.config import TrainConfig, TrainConfigError, family_config
from pocketlm.train.distill import Distillation, DistillConfig, distill_batches, mean_forward_kl
from pocketlm.train.fixtures import bundled_data_dir, trained_preset
from pocketlm.train.loop import finetune, train_loop, window_batches


def _windows(n: int = 16, t: int = 24, vocab: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n, t + 1), generator=torch.Generator().manual_seed(seed))


def test_finetune_matches_a_textbook_pytorch_loop():
    torch.manual_seed(0)
    model = Transformer(family_config(32, 2, 2, vocab_size=64, max_seq_len=32))
    reference = copy.deepcopy(model)
    windows = _windows()
    steps, lr, batch = 6, 1e-2, 8
    # micro-batches of 2: the loop accumulates 4 of them into each step's gradient
    res = finetune(model, windows, steps, lr, batch_size=batch, micro_batch=2, schedule="constant",
                   warmup_steps=0, threads=1)
    decay = [p for p in reference.parameters() if p.ndim >= 2]
    no_decay = [p for p in reference.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), eps=1e-8)
    expected = []
    for step in range(steps):
        rows = windows[torch.arange(step * batch, (step + 1) * batch) % windows.shape[0]]
        logits = reference(rows[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        expected.append(loss.item())
    assert [r["loss"] for r in res.rows if r["kind"] == "train"] == pytest.approx(expected, rel=1e-5)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)
    assert res.log_path is None and res.tokens == steps * batch * 24


def _magnitude_prune_(model: torch.nn.Module, fraction: float) -> dict[str, torch.Tensor]:
    """Zero the smallest-magnitude `fraction` of every block matrix (a stand-in for pocketlm.compress);
    return the masks of the kept weights."""
    masks = {}
    with torch.no_grad():
        for name, p in model.blocks.named_parameters():
            if p.ndim == 2:
                masks[name] = p.abs() > p.abs().flatten().kthvalue(int(fraction * p.numel())).values
                p.mul_(masks[name])
    return masks


def test_finetune_with_distillation_recovers_a_pruned_model():
    teacher_dir, _ = trained_preset("micro")
    teacher = load_model(teacher_dir).eval()
    pruned = copy.deepcopy(teacher)
    masks = _magnitude_prune_(pruned, 0.8)
    data = bundled_data_dir()
    tcfg = TrainConfig(data_dir=str(data), seq_len=64, batch_size=8, steps=30)
    windows = torch.cat([distill_batches(tcfg)(s)[0] for s in range(8)])
    held_out = torch.cat([distill_batches(TrainConfig(data_dir=str(data), seq_len=64, seed=1))(s)[0]
                          for s in range(2)])

    def kl(m):
        return {"kl": mean_forward_kl(teacher, m, held_out)}

    def keep_sparsity(m):
        for name, p in m.blocks.named_parameters():
            if name in masks:
                p.mul_(masks[name])

    res = finetune(pruned, windows, steps=30, lr=3e-3, batch_size=8, evaluate=kl, threads=1,
                   objective=Distillation(teacher, pruned, DistillConfig(temperature=1.0, alpha=1.0)),
                   after_update=keep_sparsity)
    assert res.start_metrics["kl"] > 0.2  # pruning 80 % of the block matrices hurt (0.40 measured)
    assert res.metrics["kl"] < 0.25 * res.start_metrics["kl"]  # distilling from the dense model recovered it
    for name, p in pruned.blocks.named_parameters():  # ... without filling the pruned weights back in
        if name in masks:
            assert (p[~masks[name]] == 0).all()


def test_resume_refuses_a_checkpoint_of_another_objective(tmp_path):
    torch.manual_seed(0)
    model = Transformer(family_config(32, 1, 2, vocab_size=64, max_seq_len=32))
    finetune(model, _windows(), steps=2, lr=1e-3, out_dir=tmp_path, threads=1)
    assert (tmp_path / "checkpoints" / "latest").is_file() and (tmp_path / "train_log.jsonl").is_file()
    teacher = Transformer(family_config(48, 1, 2, vocab_size=64, max_seq_len=32))
    with pytest.raises(TrainConfigError, match="objective.*--no-resume"):
        finetune(model, _windows(), steps=4, lr=1e-3, out_dir=tmp_path,  # with a projection: refused before loading
                 objective=Distillation(teacher, model, DistillConfig(hidden_weight=1.0)))
    with pytest.raises(ValueError, match=r"\[N, T \+ 1\]"):
        finetune(model, torch.zeros(5, dtype=torch.long), steps=2, lr=1e-3)


def test_accumulation_over_cached_teacher_batches_matches_the_full_batch():
    """Batches that carry per-row teacher logits are split with their rows across micro-batches."""
    torch.manual_seed(0)
    teacher = Transformer(family_config(32, 1, 2, vocab_size=64, max_seq_len=32)).eval()
    windows = _windows()

    def cached(step: int):
        rows, _ = window_batches(windows, 8)(step)
        with torch.no_grad():
            top = teacher(rows[:, :-1]).topk(8, dim=-1)
        return {"tokens": rows, "teacher_values": top.values.half(), "teacher_indices": top.indices.int()}, {}

    losses = {}
    for micro in (None, 2):
        torch.manual_seed(1)
        student = Transformer(family_config(16, 1, 2, vocab_size=64, max_seq_len=32))
        objective = Distillation(teacher, student, DistillConfig(top_k=8))
        tcfg = TrainConfig(steps=4, batch_size=8, micro_batch=micro, seq_len=24, warmup_steps=0, progress=False)
        run = train_loop(student, objective, cached, tcfg)
        losses[micro] = [r[k] for r in run.rows for k in ("loss", "kd", "ce")]
    assert losses[2] == pytest.approx(losses[None], rel=1e-5)
