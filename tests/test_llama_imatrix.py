"""llama.cpp's quantizer with an importance matrix: pocketlm's statistics against llama.cpp's own (its eval
callback, as llama-imatrix collects them), and llama.cpp consuming them through `llama_model_quantize`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pocketlm.compress.quantize.imatrix import importance_matrix
from pocketlm.export.errors import GGUFExportError
from pocketlm.export.gguf import export_gguf
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import Transformer

pytest.importorskip("llama_cpp", reason="llama.cpp's quantizer and graph (optional extra)")
gguf = pytest.importorskip("gguf")

from pocketlm.export.llama_imatrix import llama_cpp_imatrix  # noqa: E402
from pocketlm.export.llama_quantize import llama_cpp_quantize  # noqa: E402


def _model(**kw) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=256, d_model=64, n_layer=2, n_head=4, intermediate_size=128, max_seq_len=64, **kw)
    return Transformer(cfg).eval()


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_importance_matrix_equals_llama_cpps_own(tmp_path, moe) -> None:
    """Every block matrix's mean squared input per column (per expert for MoE, routers included) equals
    what llama.cpp's graph computes on the same tokens."""
    model = _model(**(dict(n_experts=4, top_k=2) if moe else {}))
    export_gguf(model, tmp_path / "f32.gguf", "F32")
    calib = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(1))
    ref = llama_cpp_imatrix(tmp_path / "f32.gguf", calib.tolist())
    ours = importance_matrix(model, calib)
    assert sorted(ours) == sorted(ref) and len(ref) == (16 if moe else 14)
    for name, values in ref.items():
        assert ours[name].shape == values.shape
        np.testing.assert_allclose(ours[name], values, rtol=0, atol=2e-3 * float(values.max()), err_msg=name)


def _quantize_pair(tmp_path):
    model = _model()  # 64 and 128 columns: whole Q4_0 blocks
    src = tmp_path / "f32.gguf"
    export_gguf(model, src, "F32")
    rng = np.random.default_rng(0)
    shapes = {t.name: int(t.shape[0]) for t in gguf.GGUFReader(str(src)).tensors if t.name.startswith("blk.")
              and len(t.shape) == 2}
    im = {n: (rng.random(cols) ** 6).astype(np.float32) for n, cols in shapes.items()}  # a few heavy columns
    llama_cpp_quantize(src, tmp_path / "plain.gguf", "Q4_0", pure=True, rest_f16=True, threads=1)
    llama_cpp_quantize(src, tmp_path / "imat.gguf", "Q4_0", pure=True, rest_f16=True, threads=1, imatrix=im,
                       imatrix_dataset="test")
    return src, im


def test_llama_cpp_quantizer_uses_the_importance_matrix(tmp_path) -> None:
    """Same tensor types; the matrices given importance are requantized and their importance-weighted error
    falls (llama.cpp's weighted quantizer at work), every other tensor is byte-identical; the file
    records the imatrix under llama-quantize's keys."""
    src, im = _quantize_pair(tmp_path)
    f32 = {t.name: t for t in gguf.GGUFReader(str(src)).tensors}
    plain = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "plain.gguf")).tensors}
    reader = gguf.GGUFReader(str(tmp_path / "imat.gguf"))
    imat = {t.name: t for t in reader.tensors}
    assert {n: t.tensor_type for n, t in plain.items()} == {n: t.tensor_type for n, t in imat.items()}
    for name, t in plain.items():
        same = np.array_equal(np.asarray(t.data), np.asarray(imat[name].data))
        if name not in im:
            assert same, name
            continue
        assert not same and t.tensor_type.name == "Q4_0", name
        w = np.asarray(f32[name].data, dtype=np.float32).reshape(-1, im[name].size)
        err = [float((np.square(gguf.quants.dequantize(x.data, x.tensor_type).reshape(w.shape) - w) * im[name]).sum())
               for x in (t, imat[name])]
        assert err[1] < 0.9 * err[0], name
    assert reader.fields["quantize.imatrix.entries_count"].contents() == len(im)
    assert reader.fields["quantize.imatrix.dataset"].contents() == "test"


def test_bad_importance_entries_give_one_clear_error(tmp_path) -> None:
    model = _model()
    src = tmp_path / "f32.gguf"
    export_gguf(model, src, "F32")
    cases = [({"blk.9.attn_q.weight": np.ones(64)}, "not a tensor"),
             ({"blk.0.attn_q.weight": np.ones(63)}, "holds 63 values; the tensor needs 64"),
             ({"blk.0.attn_q.weight": -np.ones(64)}, "negative")]
    for imatrix, message in cases:
        with pytest.raises(GGUFExportError, match=message):
            llama_cpp_quantize(src, tmp_path / "out.gguf", "Q4_0", imatrix=imatrix)
    with pytest.raises(GGUFExportError, match="no file type 'Q4_Z'"):
        llama_cpp_quantize(src, tmp_path / "out.gguf", "Q4_Z")
    assert not (tmp_path / "out.gguf").exists()
