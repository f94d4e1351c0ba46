"""pocketlm's compressed-tensors folders against code we did not write: transformers loads them (decompressing
with the compressed-tensors package) into weights bit-equal to pocketlm's dequantized model and logits equal
within 1e-5; the package's own compressor, handed the same dequantized weights, scales and zero points, writes
the same tensors and the same quantization_config; bad input is one clear error each."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file
from typer.testing import CliRunner

from pocketlm.cli import app
from pocketlm.compress.calibration import CalibSpec, calibration_batches
from pocketlm.compress.quantize import quantize
from pocketlm.compress.quantize.checkpoint import quantize_checkpoint
from pocketlm.compress.quantize.compressed_tensors_format import (CompressedTensorsError, check_model,
                                                                 convert_checkpoint, pack_codes,
                                                                 save_compressed_tensors, signed_codes)
from pocketlm.interop import load_model, load_tokenizer, save_hf
from pocketlm.model.linears import Int4Linear
from pocketlm.model.quantize import GridError, IntGrid
from pocketlm.model.quantize.grids import dequantize_int4
from pocketlm.train.fixtures import trained_preset
from tests.hf_tiny import tiny_config
from tests.test_compress_prune import one_thread  # noqa: F401  (autouse: one thread for tiny matrices)

ct = pytest.importorskip("compressed_tensors")
from compressed_tensors.compressors import ModelCompressor, PackedQuantizationCompressor  # noqa: E402
from compressed_tensors.compressors.pack_quantized import pack_to_int32, unpack_from_int32  # noqa: E402
from compressed_tensors.quantization import (QuantizationConfig, apply_quantization_config,  # noqa: E402
                                             preset_name_to_scheme)

LOGITS_ATOL = 1e-5  # fp32 both sides on bit-equal weights: only the order of floating-point sums differs


def _hf_folder(config, path):
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # random norm gains and biases, so a dropped one shows
        for p in hf.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return {name: _hf_folder(tiny_config(name), tmp_path_factory.mktemp(name)) for name in ("llama", "qwen2")}


def _quantized(src, grid, method="rtn", skip=()):
    """pocketlm's model holding its dequantized weights, and the codes, on `grid`."""
    model = load_model(src)
    calib = torch.randint(0, model.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))
    report = quantize(model, method, calib=None if method == "rtn" else calib, grid=grid, kernels=False, skip=skip)
    return model, report.codes


def _ids(vocab):
    return torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(1))


def _assert_same_network(hf, model):
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():  # first: transformers decompresses on the first forward
        assert (hf(ids).logits - model(ids)).abs().max().item() <= LOGITS_ATOL
    for name, hf_name in check_model(model)[2].items():
        assert torch.equal(hf.get_parameter(hf_name), model.get_parameter(f"{name}.weight")), name


@pytest.mark.parametrize("family,bits,group,method", [("llama", 4, 32, "rtn"), ("llama", 4, None, "gptq"),
                                                      ("qwen2", 8, 32, "gptq"), ("qwen2", 4, None, "awq")])
def test_transformers_loads_symmetric_folders_as_pocketlm_dequantized(sources, tmp_path, family, bits, group, method):
    grid = IntGrid(bits, group, sym=True)
    skip = ("*.0.mlp.down_proj",) if method == "rtn" else ()  # a matrix left float goes to `ignore`
    model, codes = _quantized(sources[family], grid, method, skip)
    save_compressed_tensors(model, codes, grid, tmp_path / "ct")
    config = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert config["format"] == "pack-quantized" and config["quant_method"] == "compressed-tensors"
    assert config["ignore"] == (["lm_head", "model.layers.0.mlp.down_proj"] if skip else ["lm_head"])
    assert config["config_groups"]["group_0"]["weights"]["strategy"] == ("group" if group else "channel")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ct").eval()  # CPU, defaults: no extra config
    _assert_same_network(hf, model)


@pytest.mark.parametrize("family", ["gemma2", "minicpm3", "opt", "phi", "stablelm"])
def test_other_families_load_in_transformers_as_pocketlm_dequantized(tmp_path, family):
    """Any dense family whose HF checkpoint keeps one tensor per matrix: soft-capped / (1 + w) norms (gemma2),
    MLA's low-rank projections (minicpm3), OPT's biased fc1/fc2, partial rotary (phi, stablelm)."""
    grid = IntGrid(4, None, sym=True)
    model, codes = _quantized(_hf_folder(tiny_config(family), tmp_path / "src"), grid)
    save_compressed_tensors(model, codes, grid, tmp_path / "ct")
    _assert_same_network(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ct").eval(), model)


def test_a_bfloat16_folder_decompresses_to_pocketlm_weights_rounded_once(sources, tmp_path):
    """dtype=bf16 (what vLLM serves in): the grid's scales are bf16 already, and (q - z) * s computed in bf16 is
    the exact product rounded once, so each weight equals pocketlm's fp32 dequantized weight cast to bf16."""
    grid = IntGrid(4, 32, sym=True)
    model, codes = _quantized(sources["llama"], grid)
    save_compressed_tensors(model, codes, grid, tmp_path / "ct", dtype=torch.bfloat16)
    assert json.loads((tmp_path / "ct" / "config.json").read_text())["dtype"] == "bfloat16"
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ct").eval()
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        agree = (hf(ids).logits.argmax(-1) == model(ids).argmax(-1)).float().mean()
    assert agree >= 0.9
    for name, hf_name in check_model(model)[2].items():
        weight = hf.get_parameter(hf_name)
        assert weight.dtype == torch.bfloat16 and torch.equal(weight, model.get_parameter(f"{name}.weight").bfloat16())
    q, (scales, offsets) = codes["blocks.0.attn.q_proj"]
    tiny = scales.clone()
    tiny[0, 0] = 2.0 ** -30  # below fp16's subnormals, a bf16 value
    with torch.no_grad():
        model.blocks[0].attn.q_proj.weight.copy_(grid.dequantize(q, tiny, offsets))
    with pytest.raises(CompressedTensorsError, match="not exact in torch.float16"):
        save_compressed_tensors(model, {"blocks.0.attn.q_proj": (q, (tiny, offsets))}, grid, tmp_path / "h",
                                dtype=torch.float16)


def _decompress_with_library(folder, family):
    """The folder's weights as compressed-tensors' PackedQuantizationCompressor decompresses them, in an HF model.
    (transformers 5.23 + compressed-tensors 0.20.1 cannot load asymmetric pack-quantized folders, the package's
    own included: it expects unpacked zero points, llm-compressor issue #1618.)"""
    config = QuantizationConfig.model_validate(json.loads((folder / "config.json").read_text())["quantization_config"])
    scheme = config.config_groups["group_0"]
    tensors = load_file(folder / "model.safetensors")
    dense = {k: v for k, v in tensors.items() if not k.rpartition(".")[2].startswith("weight_")}
    for key in [k for k in tensors if k.endswith(".weight_packed")]:
        base = key.removesuffix("weight_packed")
        part = {k.removeprefix(base): v for k, v in tensors.items() if k.startswith(base) and "weight_" in k}
        dense[base + "weight"] = PackedQuantizationCompressor.decompress(part, scheme)["weight"]
    hf = transformers.AutoModelForCausalLM.from_config(tiny_config(family)).eval()
    missing, unexpected = hf.load_state_dict(dense, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # a tied head
    hf.tie_weights()
    return hf


@pytest.mark.parametrize("family,bits,group", [("llama", 4, 32), ("qwen2", 8, None)])
def test_asymmetric_folders_decompress_with_the_library_as_pocketlm_dequantized(sources, tmp_path, family, bits, group):
    grid = IntGrid(bits, group, sym=False, integer_zero=True)
    model, codes = _quantized(sources[family], grid, "gptq")
    save_compressed_tensors(model, codes, grid, tmp_path / "ct")
    _assert_same_network(_decompress_with_library(tmp_path / "ct", family), model)


@pytest.mark.parametrize("preset", ["W4A16", "W4A16_ASYM", "W8A16"])
def test_the_library_compressor_writes_the_same_tensors_and_config(tmp_path, preset):
    """llm-compressor's save path (apply the preset, ModelCompressor.compress_model, update_config) on pocketlm's
    dequantized weights, scales and zero points: the same tensors, bit for bit, and the same quantization_config."""
    scheme = preset_name_to_scheme(preset, ["Linear"])
    w = scheme.weights
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    src = _hf_folder(config, tmp_path / "src")  # widths the presets' 128-column groups divide
    grid = IntGrid(w.num_bits, w.group_size, w.symmetric, integer_zero=not w.symmetric)
    model, codes = _quantized(src, grid)
    save_compressed_tensors(model, codes, grid, tmp_path / "ours")
    save_hf(model, tmp_path / "dequantized")

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "dequantized").eval()
    apply_quantization_config(hf, QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"]))
    with torch.no_grad():
        names = check_model(model)[2]
        for name, (q, (scales, offsets)) in codes.items():
            module = hf.get_submodule(names[name].removesuffix(".weight"))
            module.weight_scale.copy_(scales)
            if not w.symmetric:
                module.weight_zero_point.copy_(signed_codes(grid, q, scales, offsets)[1])
    compressor = ModelCompressor.from_pretrained_model(hf)
    compressor.compress_model(hf)
    theirs, ours = hf.state_dict(), load_file(tmp_path / "ours" / "model.safetensors")
    assert sorted(theirs) == sorted(ours)
    for key, tensor in ours.items():
        assert tensor.dtype == theirs[key].dtype and torch.equal(tensor, theirs[key]), key
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "config.json").write_text("{}")
    compressor.update_config(tmp_path / "lib")
    assert (json.loads((tmp_path / "ours" / "config.json").read_text())["quantization_config"]
            == json.loads((tmp_path / "lib" / "config.json").read_text())["quantization_config"])


def test_integer_zero_grid_holds_zero_exactly_at_an_integer_code():
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0)) + 0.3  # groups not centred on 0
    w[:, :32] = w[:, :32].abs()  # a group with no negative weight: its range still reaches 0
    grid = IntGrid(4, 32, sym=False, integer_zero=True)
    q, scales, offsets = grid.quantize(w)
    zero = -offsets / scales
    assert torch.equal(zero, zero.round()) and zero.min() >= 0 and zero.max() <= 15 and zero[:, 0].eq(0).all()
    assert grid.decode(zero.to(torch.int32), scales, offsets).abs().max() == 0
    assert q.min() >= 0 and q.max() <= 15
    err = (grid.dequantize(q, scales, offsets) - w).abs()
    assert (err <= scales.repeat_interleave(32, 1) * 0.5 + 1e-6).all()  # round to nearest inside the range


@pytest.mark.parametrize("bits", [4, 8])
def test_packing_matches_pack_to_int32(bits):
    gen = torch.Generator().manual_seed(bits)
    codes = torch.randint(-(1 << bits - 1), 1 << bits - 1, (40, 37), generator=gen, dtype=torch.int8)
    for dim in (0, 1):
        packed = pack_codes(codes, bits, dim)
        assert torch.equal(packed, pack_to_int32(codes, bits, packed_dim=dim))
        assert torch.equal(unpack_from_int32(packed, bits, codes.shape, packed_dim=dim), codes)


def test_bad_input_is_one_clear_error_each(sources, tmp_path):
    model = load_model(sources["llama"])
    for grid, message in ((IntGrid(3, 32, sym=True), "4 or 8 bits"),
                          (IntGrid(4, 32, sym=False), "float offsets")):
        with pytest.raises(CompressedTensorsError, match=message):
            save_compressed_tensors(model, {}, grid, tmp_path / "x")
    with pytest.raises(GridError, match="not divisible by group_size=64"):  # the MLP's 96 columns
        quantize(model, "rtn", grid=IntGrid(4, 64, sym=True), kernels=False)
    with pytest.raises(GridError, match="integer zero points are compressed-tensors"):
        quantize(load_model(sources["llama"]), "rtn", grid=IntGrid(4, 32, integer_zero=True))
    for family, message in (("mixtral", "mixture-of-experts"), ("phi3", "packed with other matrices")):
        path = _hf_folder(tiny_config(family), tmp_path / family)
        with pytest.raises(CompressedTensorsError, match=message):
            check_model(load_model(path))
    assert not (tmp_path / "x").exists()


def test_quantize_command_writes_a_folder_transformers_loads(tmp_path):
    """`pocketlm quantize --format compressed-tensors` on a trained model with its tokenizer: the folder loads in
    transformers with the logits of the same GPTQ run done through the Python API."""
    micro = trained_preset("micro")[0]
    res = CliRunner().invoke(app, ["quantize", str(micro), "--out", str(tmp_path / "sym"), "--method", "gptq", "--sym",
                                   "--group-size", "32", "--calib", "bundled:16x64", "--eval-tokens", "1024",
                                   "--format", "compressed-tensors"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "sym" / "quant_report.json").read_text())
    assert report["grid"] == "sym4 g32" and 0.5 < report["evaluation"]["top1_agreement"] <= 1
    assert {"tokenizer.json", "config.json", "model.safetensors"} <= {p.name for p in (tmp_path / "sym").iterdir()}
    model = load_model(micro)
    calib, _ = calibration_batches(CalibSpec.parse("bundled:16x64"), load_tokenizer(micro), seed=0)
    quantize(model, "gptq", calib=calib, grid=IntGrid(4, 32, sym=True), kernels=False)
    _assert_same_network(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "sym").eval(), model)


def test_quantize_command_asymmetric_uses_integer_zero_points(tmp_path):
    micro = trained_preset("micro")[0]
    asym = quantize_checkpoint(micro, tmp_path / "asym", "rtn", 8, None, calib="", eval_tokens=1024,
                               fmt="compressed-tensors", dtype="bfloat16")
    assert asym.grid == "asym8 per-channel int-zero"
    assert json.loads((tmp_path / "asym" / "config.json").read_text())["dtype"] == "bfloat16"
    assert "model.layers.1.mlp.down_proj.weight_zero_point" in load_file(tmp_path / "asym" / "model.safetensors")


def test_cli_refuses_what_the_layout_cannot_hold_before_any_work(tmp_path):
    micro = trained_preset("micro")[0]
    for args, error, message in ((["--bits", "3"], CompressedTensorsError, "4 or 8 bits"),
                                 (["--gguf", "Q4_0"], ValueError, "choose one"),
                                 (["--dtype", "int8"], ValueError, "float dtype, one of"),
                                 (["--group-size", "64"], GridError, "not divisible by group_size=64")):
        res = CliRunner().invoke(app, ["quantize", str(micro), "--out", str(tmp_path / "b"), "--method", "rtn",
                                       "--calib", "", "--format", "compressed-tensors", *args])
        assert isinstance(res.exception, error) and message in str(res.exception), res.output
        assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("bits,group", [(4, 32), (3, 32), (8, None)])
def test_a_saved_pocketlm_checkpoint_converts_with_its_own_integers(tmp_path, bits, group):
    """The int kernels' saved codes and scales, not re-rounded: transformers decompresses them into exactly the
    weights pocketlm's own dequantization (`dequantize_int4`, q * s for int8) gives, and the same logits."""
    micro = trained_preset("micro")[0]
    quantize_checkpoint(micro, tmp_path / "ck", "gptq", bits, group, True, calib="bundled:16x64", eval_tokens=1024)
    kernels = load_model(tmp_path / "ck")
    convert_checkpoint(tmp_path / "ck", tmp_path / "ct")
    model = load_model(micro)  # pocketlm's dequantized model: the float one holding the kernels' values
    with torch.no_grad():
        for block, quantized in zip(model.blocks, kernels.blocks):
            for fused, parts in ((quantized.attn.qkv, (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj)),
                                 (quantized.attn.o_proj, (block.attn.o_proj,)),
                                 (quantized.mlp.gate_up, (block.mlp.gate_proj, block.mlp.up_proj)),
                                 (quantized.mlp.down_proj, (block.mlp.down_proj,))):
                if isinstance(fused, Int4Linear):
                    scales, zeros = fused.scales_and_zeros.float().unbind(-1)
                    w = dequantize_int4(fused.codes(), scales.t(), zeros.t(), fused.group_size)
                else:
                    w = fused.qweight.float() * fused.scales.float()[:, None]
                for part, rows in zip(parts, w.split([p.out_features for p in parts])):
                    part.weight.copy_(rows)
    _assert_same_network(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ct").eval(), model)
    assert (tmp_path / "ct" / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]["config_groups"][
        "group_0"]["weights"]["num_bits"] == (8 if bits == 8 else 4)


def test_an_asymmetric_pocketlm_checkpoint_is_refused(tmp_path):
    micro = trained_preset("micro")[0]
    quantize_checkpoint(micro, tmp_path / "ck", "rtn", 4, 32, calib="", eval_tokens=1024)
    with pytest.raises(CompressedTensorsError, match="asymmetric grid"):
        convert_checkpoint(tmp_path / "ck", tmp_path / "ct")
    assert not (tmp_path / "ct").exists()
