"""The landscape is resumable (measured models are not measured again) and its findings are the
analytic values on synthetic rows."""

from __future__ import annotations

import pytest

from pocketlm.profile.landscape import (POINT_FIELDS, dtype_ratios, landscape, landscape_findings, read_points,
                                        write_findings)
from pocketlm.survey.figures import write_csv


def _row(model: str, params: float, dtype: str = "Q4_0", k: float = 1.0, vocab: int = 32000) -> dict:
    row = {f: 0 for f in POINT_FIELDS}
    row.update(model=model, params=int(params), attention="GQA", n_layer=12, d_model=512, vocab_size=vocab,
               backend="llamacpp", dtype=dtype, threads=2, n_prompt=64, depth=64, prefill_ms=k * params / 1e6, decode_ms=k * params / 1e7,
               prefill_best_ms=k * params / 1e6, decode_best_ms=k * params / 1e7, peak_rss_mb=params / 1e6)
    return row


def test_measured_models_are_not_measured_again(tmp_path, monkeypatch) -> None:
    write_csv([_row("SmolLM-135M", 1.35e8), _row("GPT2", 1.24e8)], tmp_path / "landscape.csv")
    import pocketlm.profile.landscape as ls

    monkeypatch.setattr(ls, "_measure", lambda *a, **k: pytest.fail("a measured model was measured again"))
    done = landscape(names=["SmolLM-135M", "GPT2"], backend="llamacpp", dtype="Q4_0", threads=2, out_dir=tmp_path)
    assert (done["measured_now"], done["skipped_measured"], done["models"]) == (0, 2, 2)
    assert (tmp_path / "landscape_llamacpp_Q4_0.png").exists()
    assert [p["model"] for p in read_points(tmp_path / "landscape.csv")] == ["GPT2", "SmolLM-135M"]


def test_findings_are_the_analytic_values() -> None:
    rows = [_row(f"m{i}", p) for i, p in enumerate((1e8, 2e8, 4e8, 8e8))]
    found = landscape_findings(rows)
    assert found["prefill_best_ms"] == {"loglog_slope": 1.0, "spearman": 1.0}
    assert found["peak_rss_mb"]["loglog_slope"] == 1.0
    ratios = dtype_ratios([_row("a", 1e8, "F16", k=4.0), _row("a", 1e8, "Q4_0", k=1.0)])
    assert {r["dtype"]: r["decode_speedup"] for r in ratios} == {"F16": 1.0, "Q4_0": 4.0}


def test_memory_outliers_are_measured_from_a_line_with_a_floor() -> None:
    """peak = 300 MB + 1 MB per million parameters, one model 20% above: the floor and slope come back,
    and that model leads the outliers; against non-embedding parameters a vocabulary-heavy model stands out."""
    from pocketlm.profile.landscape import memory_outliers

    rows = [_row(f"m{i}", p) for i, p in enumerate((1e8, 2e8, 4e8, 8e8, 1.6e9))]
    for r in rows:
        r["peak_rss_mb"] = 300 + r["params"] / 1e6
    rows[2]["peak_rss_mb"] *= 1.2
    found = memory_outliers(rows)
    assert found["above_fit"][0]["model"] == "m2" and found["above_fit"][0]["above_fit"] > 1.1
    exact = memory_outliers([r for i, r in enumerate(rows) if i != 2])
    assert (exact["floor_mb"], exact["mb_per_mparam"]) == (300.0, 1.0)
    rows[2]["peak_rss_mb"] /= 1.2
    rows[2]["vocab_size"] = 250_000  # 128M of its 400M parameters are the embedding
    assert memory_outliers(rows, "non_embedding")["above_fit"][0]["model"] == "m2"


def test_twins_count_once_and_give_the_noise() -> None:
    """Qwen2-0.5B and Qwen2.5-0.5B are one graph (configs equal but for the name); GPT2 and
    LaMini-GPT-774M are not (a different size); the twin's ratios to the kept row come back."""
    from pocketlm.profile.landscape import distinct_graphs

    rows = [_row("Qwen2-0.5B", 4.94e8), _row("Qwen2.5-0.5B", 4.94e8, k=1.1), _row("GPT2", 1.24e8),
            _row("LaMini-GPT-774M", 7.74e8), _row("not-in-catalog", 2e8)]
    kept, twins = distinct_graphs(rows)
    assert [p["model"] for p in kept] == ["Qwen2-0.5B", "GPT2", "LaMini-GPT-774M", "not-in-catalog"]
    assert twins == [{"model": "Qwen2.5-0.5B", "same_as": "Qwen2-0.5B", "prefill_best_ms_ratio": 1.1,
                      "decode_best_ms_ratio": 1.1, "peak_rss_mb_ratio": 1.0}]


def test_write_findings(tmp_path) -> None:
    rows = [_row("a", 1e8, "F16", k=2.0), _row("a", 1e8), _row("b", 3e8), _row("c", 9e8)]
    write_csv(rows, tmp_path / "landscape.csv")
    found = write_findings(tmp_path / "landscape.csv")
    assert found["models"] == 3 and (tmp_path / "findings.json").exists() and (tmp_path / "dtypes.png").exists()


def test_other_settings_are_measured_again_and_failures_are_recorded(tmp_path, monkeypatch) -> None:
    """A row of another thread count / prompt is not this run's; a model that fails is written to
    not_measured.csv with its error, and leaves it once measured."""
    import csv

    import pocketlm.profile.landscape as ls

    write_csv([_row("SmolLM-135M", 1.35e8), _row("GPT2", 1.24e8)], tmp_path / "landscape.csv")
    asked = []

    def fake(names, *a, failed, on_point, **k):
        asked.append(list(names))
        failed.append({"model": "GPT2", "error": "out of memory"})
        on_point(dict(_row("SmolLM-135M", 1.35e8), threads=1, n_prompt=32, depth=32))
        return []

    monkeypatch.setattr(ls, "_measure", fake)
    done = landscape(names=["SmolLM-135M", "GPT2"], backend="llamacpp", dtype="Q4_0", threads=1, prompt=32,
                     depth=32, out_dir=tmp_path)
    assert asked == [["SmolLM-135M", "GPT2"]] and done["models"] == 1
    assert len(read_points(tmp_path / "landscape.csv")) == 3  # the 2-thread rows are kept beside the new one
    rows = list(csv.DictReader(open(tmp_path / "not_measured.csv")))
    assert [(r["model"], r["stage"], r["reason"]) for r in rows] == [("GPT2", "failed", "out of memory")]
    monkeypatch.setattr(ls, "_measure", lambda names, *a, on_point, **k: on_point(
        dict(_row("GPT2", 1.24e8), threads=1, n_prompt=32, depth=32)))
    landscape(names=["GPT2"], backend="llamacpp", dtype="Q4_0", threads=1, prompt=32, depth=32, out_dir=tmp_path)
    assert not (tmp_path / "not_measured.csv").exists()


def test_the_catalog_llama_cpp_does_not_run_is_named_with_why() -> None:
    from pocketlm.profile.landscape import catalog_models, catalog_not_runnable

    runs, not_run = catalog_models(2e9, backend="llamacpp"), catalog_not_runnable(2e9)
    assert set(runs).isdisjoint(r["model"] for r in not_run) and len(runs) + len(not_run) == len(catalog_models(2e9))
    assert any(r["model"].startswith("OPT") and "runtime" in r["reason"].lower() for r in not_run)


def test_labels_of_a_dense_cluster_do_not_overlap() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pocketlm.profile.landscape import place_labels

    fig, ax = plt.subplots(figsize=(6, 5))
    xs = [1.0 + 0.01 * i for i in range(12)]
    ys = [100.0 + 3 * (i % 4) for i in range(12)]
    ax.scatter(xs, ys)
    ax.set_xlim(0, 8)
    ax.set_ylim(0, 400)
    offsets = place_labels(ax, xs, ys, [f"model-{i}" for i in range(12)])
    assert len(set(offsets)) > 4  # crowded markers are pushed to different offsets
    from matplotlib.text import Text

    fig.canvas.draw()
    boxes = [Text.get_window_extent(t) for t in ax.texts]  # the text alone, not its leader line
    overlaps = sum(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert overlaps <= 2
    plt.close(fig)


def test_architecture_effects_find_the_shape_that_moves_latency() -> None:
    """Synthetic rows over real catalog shapes: prefill grows with depth at equal size, memory with
    the vocabulary; the residual correlations name those shapes, the spread is a factor >= 1."""
    from pocketlm.model import costs
    from pocketlm.profile.landscape import architecture_effects
    from pocketlm.survey.catalog import entry_to_config, get_entry

    rows = []
    for name in ("GPT2", "SmolLM-135M", "Pythia-160M", "GPT2-MEDIUM", "SmolLM-360M", "Qwen2.5-0.5B", "BLOOM-560M"):
        cfg = entry_to_config(get_entry(name))
        n = costs.param_counts(cfg)["total"]
        rows.append(dict(_row(name, n), prefill_best_ms=n / 1e6 * cfg.n_layer, decode_best_ms=n / 1e7,
                         peak_rss_mb=n / 1e6 + cfg.vocab_size / 1e3))
    found = architecture_effects(rows)
    assert found["prefill_best_ms"]["residual_spearman"]["layers"] > 0.7
    assert found["peak_rss_mb"]["residual_spearman"]["vocab_share"] > 0.7
    assert found["decode_best_ms"]["spread_factor"] == 1.0 and found["prefill_best_ms"]["spread_factor"] > 1.2


def test_gguf_cache_reuses_only_random_weights_of_the_same_config(tmp_path) -> None:
    import dataclasses

    from pocketlm.profile.llamacpp_backend import _export, cached_gguf
    from pocketlm.profile.setting import Setting
    from pocketlm.runtime import resolve

    ref = resolve("SmolLM-135M")
    s = Setting(model="SmolLM-135M", backend="llamacpp", dtype="Q4_0", gguf_dir=str(tmp_path))
    path = cached_gguf(ref, s, "Q4_0")
    assert path.parent == tmp_path and path.name.startswith("SmolLM-135M-") and path.name.endswith("seed0-Q4_0.gguf")
    assert cached_gguf(ref, dataclasses.replace(s, gguf_dir=None), "Q4_0") is None
    assert cached_gguf(dataclasses.replace(ref, kind="checkpoint"), s, "Q4_0") is None  # real weights: never cached
    assert cached_gguf(ref, dataclasses.replace(s, seed=1), "Q4_0") != path != cached_gguf(ref, s, "Q8_0")
    wider = dataclasses.replace(ref, config=ref.config.replace(n_layer=31))
    assert cached_gguf(wider, s, "Q4_0") != path  # a changed catalog entry is exported again
    path.write_bytes(b"GGUF")
    assert _export(ref, s, "Q4_0", path) == (path, None)  # found: no model is built, no export timed


def test_spearman_averages_tied_ranks_as_scipy_does() -> None:
    """Catalog vocabularies and depths repeat; an arbitrary order among ties would invent a correlation."""
    stats = pytest.importorskip("scipy.stats")
    from pocketlm.profile.landscape import spearman

    ratio = [1.02, 0.98, 1.10, 0.95, 1.01, 1.30, 0.99]
    vocab = [32000, 32000, 49152, 32000, 49152, 250880, 32000]
    assert spearman(ratio, vocab) == pytest.approx(stats.spearmanr(ratio, vocab).statistic, abs=1e-12)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [5, 5, 5]) != spearman([1, 2, 3], [5, 5, 5])  # constant side: NaN
