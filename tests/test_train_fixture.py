"""A preset trains in seconds to far better than chance; the saved model folder loads with the core API."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import torch

from pocketlm.data.shards import TokenSplit
from pocketlm.interop import load_model, load_tokenizer
from pocketlm.train.batches import eval_windows
from pocketlm.train.fixtures import trained_preset
from pocketlm.train.trainer import evaluate_loss


def test_micro_preset_beats_chance_and_exports_a_loadable_model():
    model_dir, summary = trained_preset("micro")
    assert summary["val_loss"] < summary["chance_loss"] - 2.0  # ln(2048) = 7.62 nats
    model = load_model(model_dir)
    tok = load_tokenizer(model_dir)
    assert tok is not None and tok.decode(tok("Once upon a time")["input_ids"]) == "Once upon a time"
    windows = eval_windows(TokenSplit.open(summary["data_dir"], "val"), 64, 32)
    assert evaluate_loss(model, windows) == summary["val_loss"] or math.isclose(
        evaluate_loss(model, windows), summary["val_loss"], rel_tol=1e-5)
    again_dir, again = trained_preset("micro")  # cached: same folder, no retraining
    assert again_dir == model_dir and again == summary
    assert json.loads((model_dir / "pocketlm.json").read_text())["vocab_size"] == 2048
    ids = torch.tensor([tok("Once upon a time")["input_ids"]])
    assert model.generate(ids, max_new_tokens=5).shape == (1, ids.shape[1] + 5)


def test_bf16_autocast_trains_like_fp32(tmp_path):
    from pocketlm.train.config import TrainConfig, family_config
    from pocketlm.train.fixtures import bundled_data_dir
    from pocketlm.train.trainer import train

    torch.set_num_threads(1)
    losses = {}
    for bf16 in (False, True):
        tcfg = TrainConfig(data_dir=str(bundled_data_dir()), out_dir=str(tmp_path / str(bf16)), steps=6, batch_size=4,
                           seq_len=32, warmup_steps=0, lr=1e-2, eval_every=6, ckpt_every=6, eval_windows=4,
                           autocast_bf16=bf16, progress=False)
        train(tcfg, family_config(32, 1, 2, 2048))
        rows = [json.loads(x) for x in (tmp_path / str(bf16) / "train_log.jsonl").read_text().splitlines()]
        losses[bf16] = [r["loss"] for r in rows if r["kind"] == "train"]
    assert losses[True] != losses[False]  # autocast really changed the arithmetic
    for a, b in zip(losses[False], losses[True]):
        assert abs(a - b) < 0.05


# What `pocketlm train` / `pocketlm distill` import before they train: the data-preparation stack (MinHash
# dedup: datasketch, scipy) only when the bundled corpus must be prepared, matplotlib only when the loss curve
# is drawn. About 2 s per process, and the DDP/FSDP/resume tests start some 40 of them.
TRAIN_IMPORT_PROBE = """
import sys
from pocketlm.cli import app  # every command registered, as `python -m pocketlm.cli` does
from pocketlm.train.distill import distill_models
from pocketlm.train.fixtures import bundled_data_dir, trained_preset
from pocketlm.train.trainer import train_preset
bundled_data_dir()  # prepared already: a cache look-up
print(sorted(m for m in ("datasketch", "scipy", "matplotlib") if m in sys.modules))
"""


def test_train_and_distill_do_not_import_the_data_preparation_stack_or_matplotlib():
    from pocketlm.train.fixtures import bundled_data_dir

    bundled_data_dir()  # prepare it here if this is the first test to need it
    proc = subprocess.run([sys.executable, "-c", TRAIN_IMPORT_PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
