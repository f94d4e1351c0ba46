"""The quantization benchmark's trained fixtures fit the grids they are there for (no training here):
every quantized linear's input width splits into g128 groups and into K-quants' 256-value rows."""

from __future__ import annotations

import pytest

from benchmarks.bench_quant_quality import QUANT_FIXTURES
from pocketlm.compress.quantize.driver import check_targets
from pocketlm.compress.quantize.gguf_grids import gguf_grid
from pocketlm.compress.targets import DEFAULT_SKIP, select
from pocketlm.model.config import ModelConfig
from pocketlm.model.quantize import IntGrid
from pocketlm.model.transformer import Transformer
from pocketlm.train.config import TrainConfig


@pytest.mark.parametrize("name", sorted(QUANT_FIXTURES))
def test_quant_fixture_takes_g128_and_k_quants(name):
    fields, training = QUANT_FIXTURES[name]
    model = Transformer(ModelConfig(vocab_size=256, **fields))
    targets = select(model, DEFAULT_SKIP)
    assert {t.shape[1] for t in targets} == {fields["d_model"], fields["intermediate_size"]}
    check_targets(targets, IntGrid(4, 128), kernels=True)  # raises GridError on a width g128 cannot split
    for qtype in ("Q4_0", "Q4_K"):
        check_targets(targets, gguf_grid(qtype), kernels=False)
    assert model.config.dim_head == 64
    TrainConfig(data_dir=".", **training)  # a valid training recipe at the model's context
    assert training["seq_len"] <= fields["max_seq_len"]
