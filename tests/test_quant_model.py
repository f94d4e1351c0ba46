"""quantize_model on a pocketlm Transformer: logits within the expected weight-quantization error."""

from __future__ import annotations

import copy

import pytest
import torch

from pocketlm.model.quantize import (
    Int4Linear, Int8Linear, dequantize_int4, quantize_int4, quantize_int8, quantize_model, sqnr_db,
)
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import Transformer


def _model() -> Transformer:
    cfg = ModelConfig(vocab_size=1024, d_model=256, n_layer=3, n_head=8, n_kv_head=2, intermediate_size=512,
                      max_seq_len=256)
    torch.manual_seed(0)
    return Transformer(cfg).eval()


def _dequantized_copy(model: Transformer, scheme: str, group_size: int) -> Transformer:
    """A float model holding exactly the weights the quantized layers represent."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, m in ref.named_modules():
            if isinstance(m, torch.nn.Linear):
                if scheme == "int8":
                    q, s = quantize_int8(m.weight)
                    w = q.float() * s.bfloat16().float()[:, None]
                else:
                    q, sc, z = quantize_int4(m.weight, group_size)
                    w = dequantize_int4(q, sc.bfloat16().float(), z.bfloat16().float(), group_size)
                m.weight = torch.nn.Parameter(w)  # unties a tied head, as quantize_model does
    return ref


@pytest.mark.parametrize("scheme,group_size", [("int8", 32), ("int4", 32), ("int4", 64)])
def test_quantized_transformer_computes_its_quantized_weights(scheme, group_size) -> None:
    model = _model()
    ids = torch.randint(0, 1024, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids)
        deq = _dequantized_copy(model, scheme, group_size)(ids)
        quantize_model(model, scheme, group_size)
        out = model(ids)
    kind = Int8Linear if scheme == "int8" else Int4Linear
    assert isinstance(model.lm_head, kind) and isinstance(model.blocks[0].mlp.down_proj, kind)
    assert type(model.embed) is torch.nn.Embedding  # the table stays float
    # the kernels compute the dequantized model up to bf16 activation rounding
    assert sqnr_db(deq, out) > 30
    # and the loss against float is the weight-quantization loss (within 1.5 dB)
    assert sqnr_db(ref, out) == pytest.approx(sqnr_db(ref, deq), abs=1.5)
    assert sqnr_db(ref, out) > (25 if scheme == "int8" else 8)


def test_quantized_model_decodes_with_the_kv_cache() -> None:
    model = quantize_model(_model(), "int4", 32)
    ids = torch.randint(0, 1024, (1, 10))
    with torch.no_grad():
        full = model(ids)[:, -1]
        cache = model.new_cache(1, 16)
        model(ids[:, :-1], cache=cache)
        step = model(ids[:, -1:], cache=cache)[:, -1]
    assert sqnr_db(full, step) > 30
