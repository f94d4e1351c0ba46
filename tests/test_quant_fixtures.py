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


def test_book_fixture_holds_out_whole_books(tmp_path):
    from benchmarks.bench_quant_quality import BOOK_FIXTURES, BOOKS_HELDOUT, BOOKS_TRAIN, GUTENBERG
    from pocketlm.data.corpus.heldout import heldout_books

    assert not set(BOOKS_TRAIN) & set(BOOKS_HELDOUT) and len(set(BOOKS_TRAIN)) == len(BOOKS_TRAIN)
    for name in BOOK_FIXTURES:  # the g128 shape of quant256s, trained on books
        assert QUANT_FIXTURES[name][0] | {"name": ""} == QUANT_FIXTURES["quant256s"][0] | {"name": ""}
    if GUTENBERG.is_dir():
        for b in BOOKS_TRAIN + list(BOOKS_HELDOUT):  # each one cuts into chunks (gutenberg_documents' markers)
            assert "*** START OF" in (GUTENBERG / f"{b}.txt").read_text(encoding="utf-8"), b
    # decontamination against the given training texts, not the bundled corpus's
    shared = " ".join(f"w{i}" for i in range(300))
    fresh = " ".join(f"v{i}" for i in range(300))
    book = tmp_path / "b.txt"
    book.write_text(f"header\n*** START OF X ***\n{shared}\n\n{fresh}\n*** END OF X ***\n", encoding="utf-8")
    assert heldout_books([book], [f"x {shared[:200]} y"]) == [fresh]
    assert heldout_books([book], []) == [shared, fresh]
