"""`pocketlm fit`: budgets, the front, the choice against one-type baselines, resume after kill -9, and the
HTML report rendered by a real browser."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pocketlm.fit.budget import Budget, BudgetError, parse_size
from pocketlm.fit.candidates import CandidateError, parse_axes, space
from pocketlm.fit.pareto import dominates, front

ROOT = Path(__file__).resolve().parents[1]
AXES = "precision=fp32,bf16,int8,int4;prune_nm=none;prune_structured=none"
SMALL_RUN = dict(candidates=AXES, tokens=512, window=64, prompt=32, context=64, gen=8, repeat=2, threads=1)
SMALL_FLAGS = ["--candidates", AXES, "--tokens", "512", "--prompt", "32", "--context", "64", "--gen", "8",
               "--repeat", "2", "--threads", "1"]


# ---- budgets ------------------------------------------------------------------------------------------

def test_sizes_parse_in_si_and_binary_units() -> None:
    assert parse_size("400MB", "--max-memory") == 400_000_000
    assert parse_size("1.5GiB", "--max-memory") == int(1.5 * 2**30)
    assert parse_size("512 kib", "--max-disk") == 512 * 1024
    b = Budget.parse(max_memory="400MB", min_decode_tok_s="30", max_prefill_ms="250")
    assert b.misses({"memory_bytes": 5e8, "decode_tok_s": 31, "disk_bytes": 0, "prefill_ms": 300}) == [
        "memory 500.0 MB > 400.0 MB", "prefill 300.0 ms > 250 ms"]


@pytest.mark.parametrize("kwargs, words", [
    ({"max_memory": "0"}, "more than 0"),
    ({"max_memory": "400XB"}, "unknown unit 'XB'"),
    ({"max_disk": "lots"}, "expected a size"),
    ({"min_decode_tok_s": "-3"}, "positive"),
    ({"max_prefill_ms": "fast"}, "expected a number"),
    ({}, "no budget given"),
])
def test_malformed_budgets_give_one_clear_error(kwargs: dict, words: str) -> None:
    with pytest.raises(BudgetError, match=words):
        Budget.parse(**kwargs)


def test_memory_limit_below_the_kv_cache_contradicts_the_context() -> None:
    with pytest.raises(BudgetError, match="contradicts --context 512"):
        Budget.parse(max_memory="1MB").check_model(kv_cache_bytes=4_000_000, context=512)


def test_cli_reports_a_malformed_budget_in_one_line() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "pocketlm.cli", "fit", "SmolLM-135M", "--max-memory", "0"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --max-memory '0': must be more than 0 bytes (no model fits in nothing)"]


# ---- candidate space and the front -------------------------------------------------------------------

def test_candidate_axes_are_data_and_unknown_values_are_refused() -> None:
    axes = parse_axes("precision=int8,int4;prune_nm=none,2:4;prune_structured=none", "torch")
    keys = [c.key for c in space(axes)]
    assert keys == ["precision=int8", "precision=int4", "prune_nm=2:4 + precision=int8", "prune_nm=2:4 + precision=int4"]
    with pytest.raises(CandidateError, match="unknown axis 'gptq'"):
        parse_axes("gptq=int4", "torch")
    with pytest.raises(CandidateError, match="no value 'int2'"):
        parse_axes("precision=int2", "torch")
    assert parse_axes("prune_structured=none,width-0.6", "torch")["prune_structured"] == ("none", "width-0.6")
    with pytest.raises(CandidateError, match="no value 'width-1.5'"):
        parse_axes("prune_structured=width-1.5", "torch")
    # structured steps come first (prune, distil), then N:M on the smaller model, then the format
    assert space(parse_axes("prune_structured=depth-0.5;prune_nm=2:4;precision=int4", "torch"))[0].key == \
        "prune_structured=depth-0.5 + prune_nm=2:4 + precision=int4"
    assert "Q4_K_M" in parse_axes(None, "llamacpp")["gguf_qtype"]


def test_front_is_the_brute_force_non_dominated_set() -> None:
    pts = {"a": (0.0, 10.0, 5.0), "b": (0.1, 5.0, 5.0), "c": (0.2, 6.0, 6.0), "d": (0.1, 5.0, 5.0),
           "e": (0.3, 1.0, 9.0)}
    assert front(pts) == ["a", "b", "d", "e"]  # c is dominated by b; equal points both stay


def test_cost_model_recovers_a_linear_device_and_scales_anchored_formats() -> None:
    """A device with 2 GB/s, 0.5 ms per step and 10 GFLOP/s: the fitted model predicts unseen sizes exactly."""
    from pocketlm.fit.costmodel import CostModel, features
    from pocketlm.model import costs
    from pocketlm.runtime import resolve

    cfg = resolve("SmolLM-135M").config

    def device(f: dict) -> dict:
        read = f["weight_bytes"] + f["kv_read_bytes"]
        return {"decode_ms": 0.5 + read / 2e6, "prefill_ms": f["prefill_flops"] / 1e7 + f["weight_bytes"] / 2e6,
                "memory_bytes": f["weight_bytes"] + f["kv_bytes"] + 30e6}

    feats = {b: features(cfg, b, "llamacpp", "x", 256, 240, 64) for b in (16.0, 8.5, 4.5, 3.35)}
    assert feats[16.0]["weight_bytes"] == costs.param_counts(cfg)["total"] * 2
    assert feats[16.0]["kv_bytes"] == costs.kv_cache_bytes(cfg, 256, 2)
    model = CostModel.fit([(str(b), feats[b], device(feats[b])) for b in (16.0, 3.35)], ["F16", "Q2_K"])
    for b in (8.5, 4.5):
        got, want = model.predict(feats[b]), device(feats[b])
        assert got["decode_ms"] == pytest.approx(want["decode_ms"], rel=1e-9)
        assert got["prefill_ms"] == pytest.approx(want["prefill_ms"], rel=1e-9)
        assert got["memory_bytes"] == pytest.approx(want["memory_bytes"], rel=1e-9)
    assert model.describe()["effective_bandwidth_GBps"] == pytest.approx(2.0)
    half = dict(feats[16.0], weight_bytes=feats[16.0]["weight_bytes"] / 2, kv_read_bytes=feats[16.0]["kv_read_bytes"] / 2)
    assert model.predict(half, "F16")["decode_ms"] == pytest.approx(device(feats[16.0])["decode_ms"] / 2)


# ---- real fits on the tiny trained model -------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model() -> Path:
    from pocketlm.train.fixtures import trained_preset

    # the tiny architecture (its sizes set the budgets below), trained briefly: 60 steps, not the preset's 1000
    return trained_preset("tiny", steps=60, warmup_steps=10, eval_every=30, ckpt_every=30)[0]


@pytest.fixture(scope="module")
def two_fits(tiny_model: Path, tmp_path_factory) -> dict:
    """One folder, two budgets: everything fast enough, then at most 1.4 MB of weights on disk."""
    from pocketlm.fit.config import FitConfig
    from pocketlm.fit.search import fit

    out = tmp_path_factory.mktemp("fit")
    loose = fit(FitConfig(str(tiny_model), Budget.parse(min_decode_tok_s="1"), **SMALL_RUN), out / "loose",
                progress=False)
    shutil.copy(out / "loose" / "fit.sqlite", out / "fit.sqlite")
    (out / "tight").mkdir()
    shutil.copy(out / "loose" / "fit.sqlite", out / "tight" / "fit.sqlite")
    tight = fit(FitConfig(str(tiny_model), Budget.parse(max_disk="1.4MB"), **SMALL_RUN), out / "tight",
                progress=False)
    return {"loose": loose, "tight": tight, "out": out}


def _measured_fitting(report: dict) -> dict[str, tuple]:
    return {r["candidate"]: (r["quality"]["kl_mean"], r["measured"]["decode_ms"], r["measured"]["memory_bytes"])
            for r in report["candidates"] if r["measured"] and r["rung"] == 1 and not r["misses"]}


@pytest.mark.slow
def test_front_is_non_dominated_on_the_stored_records(two_fits: dict) -> None:
    for name in ("loose", "tight"):
        stored = json.loads((two_fits["out"] / name / "fit_report.json").read_text())
        pts = _measured_fitting(stored)
        assert stored["front"] and set(stored["front"]) <= set(pts)
        for k in stored["front"]:
            assert not any(dominates(q, pts[k]) for j, q in pts.items() if j != k), (name, k)
        for k in set(pts) - set(stored["front"]):  # everything left off is dominated by someone
            assert any(dominates(q, pts[k]) for q in pts.values()), (name, k)


@pytest.mark.slow
def test_two_budgets_give_two_fronts_and_choices_that_meet_them(two_fits: dict) -> None:
    loose, tight = two_fits["loose"], two_fits["tight"]
    assert loose["front"] != tight["front"]
    assert loose["chosen"] == "precision=fp32"  # nothing binds: the original's own precision, KL 0
    assert tight["chosen"] == "precision=int4"  # 1.4 MB on disk: only 4-bit weights fit (int8 is ~1.6 MB)
    assert not tight["verify"]["misses"] and tight["verify"]["measured"]["disk_bytes"] <= 1.4e6
    assert tight["counts"]["measured_this_run"] <= 1  # the second budget reuses the first one's measurements
    # the artifact is the chosen model: it opens at its stored precision
    from pocketlm.runtime import resolve

    assert resolve(tight["artifact"]["model_dir"]).quantization.scheme == "int4"


@pytest.mark.slow
def test_choice_against_one_type_everywhere_in_the_same_run(two_fits: dict) -> None:
    for report in (two_fits["loose"], two_fits["tight"]):
        chosen = report["chosen_record"]
        baselines = {b["candidate"]: b for b in report["baselines"]}
        assert set(baselines) == {"precision=int8", "precision=int4"}
        for b in baselines.values():
            assert b["measured"] is not None  # measured in this run's store, not assumed
            if not b["misses"]:
                assert chosen["quality"]["kl_mean"] <= b["quality"]["kl_mean"]
        md = (two_fits["out"] / ("loose" if report is two_fits["loose"] else "tight") / "fit_report.md").read_text()
        assert "Against 'one type everywhere'" in md
        verdicts = ("is fit's choice", "misses the budget", "at least as good on quality",
                    "but the choice has lower KL")
        for b in baselines:  # one verdict line per baseline: as good at no higher cost, or why not
            line = next(ln for ln in md.splitlines() if ln.startswith(f"- `{b}`"))
            assert any(v in line for v in verdicts), line
    tight = {b["candidate"]: b for b in two_fits["tight"]["baselines"]}
    assert tight["precision=int8"]["misses"] and not tight["precision=int4"]["misses"]


@pytest.mark.slow
def test_structured_candidate_is_built_predicted_measured_and_chosen(two_fits: dict, tiny_model: Path) -> None:
    """Depth pruning to half the blocks (then one distillation step): the cost model predicts it from the
    smaller config, it is measured in its own fresh process (the dense anchors come from the store), and at
    1.0 MB on disk (dense int4 is ~1.2 MB) it is the only thing that fits, so it is the front and the choice."""
    from pocketlm.fit.candidates import structured_shape
    from pocketlm.fit.config import FitConfig
    from pocketlm.fit.search import fit
    from pocketlm.model import costs
    from pocketlm.runtime import resolve

    out = two_fits["out"] / "structured"
    out.mkdir()
    shutil.copy(two_fits["out"] / "fit.sqlite", out / "fit.sqlite")
    run = dict(SMALL_RUN, candidates="prune_structured=none,depth-0.5;precision=int8,int4;prune_nm=none",
               distill_tokens=512, screen_above=2)
    report = fit(FitConfig(str(tiny_model), Budget.parse(max_disk="1.0MB"), **run), out, progress=False)
    by_key = {r["candidate"]: r for r in report["candidates"]}
    pruned = by_key["prune_structured=depth-0.5 + precision=int4"]
    cfg = resolve(str(tiny_model)).config
    small = structured_shape(cfg, "depth-0.5").config(cfg)
    assert small.n_layer == cfg.n_layer // 2 and costs.param_counts(small)["total"] < costs.param_counts(cfg)["total"]
    assert pruned["predicted"]["disk_bytes"] < by_key["precision=int4"]["measured"]["disk_bytes"]
    assert pruned["measured"] and not pruned["misses"] and abs(pruned["prediction_error"]["disk_bytes"]) < 0.05
    assert report["counts"]["measured_this_run"] == 1  # its own architecture; the dense anchors were stored
    assert report["front"] == [pruned["candidate"]] and report["chosen"] == pruned["candidate"]
    assert not report["verify"]["misses"]
    assert resolve(report["artifact"]["model_dir"]).config.n_layer == small.n_layer
    assert 0 < pruned["quality"]["kl_mean"] and by_key["precision=int4"]["misses"]
    # the additive screen (forced on here) estimated it from depth-0.5 at int8 and the dense int4 increment
    assert pruned["kl_estimate"] == pytest.approx(pruned["quality"]["kl_mean"], rel=0.5)
    assert report["screen_error"]["n"] >= 1


def test_structured_builder_distils_towards_the_original(tiny_model: Path) -> None:
    """The distillation after pruning lowers KL(original || pruned) on held-out tokens (not the training ones)."""
    import torch

    from pocketlm.compress.measure import compare_on_tokens
    from pocketlm.compress.structured.driver import prune_structured
    from pocketlm.fit.candidates import BUILDERS, BuildContext, structured_shape
    from pocketlm.interop import load_model

    model = load_model(tiny_model).float().eval()
    V = model.config.vocab_size

    def windows(n: int, length: int) -> torch.Tensor:
        return torch.randint(0, V, (n, length), generator=torch.Generator().manual_seed(1))

    heldout = torch.randint(0, V, (256,), generator=torch.Generator().manual_seed(2))
    calib = torch.randint(0, V, (8, 64), generator=torch.Generator().manual_seed(0))
    ctx = BuildContext(calib=calib, distill_tokens=4096, distill_windows=windows, threads=1)
    distilled = BUILDERS["prune_structured"].apply(model, "depth-0.5", ctx)
    pruned = prune_structured(model, calib, structured_shape(model.config, "depth-0.5")).model.eval()
    with torch.inference_mode():
        kl = {name: compare_on_tokens(model, m, heldout, 64)["kl_mean"] for name, m in
              (("pruned", pruned), ("distilled", distilled))}
    assert kl["distilled"] < 0.8 * kl["pruned"]  # 0.050 -> 0.031 on the 60-step tiny model


def test_structured_candidates_on_a_model_that_cannot_be_sliced(tmp_path: Path) -> None:
    """An MoE model: by default the structured axis is dropped with a note; asked for, one clear error."""
    from pocketlm.compress.structured.importance import StructuredError
    from pocketlm.fit.config import FitConfig
    from pocketlm.fit.search import Fit
    from pocketlm.model.config import ModelConfig

    cfg = ModelConfig(vocab_size=64, d_model=32, n_layer=2, n_head=2, n_experts=4, top_k=2, intermediate_size=32,
                      max_seq_len=128)
    (tmp_path / "moe.json").write_text(json.dumps(cfg.to_dict()))
    run = dict(SMALL_RUN, candidates="precision=int8")
    fit_run = Fit(FitConfig(str(tmp_path / "moe.json"), Budget.parse(max_disk="1GB"), **run), tmp_path / "a", False)
    fit_run.store.close()
    assert fit_run.axes["prune_structured"] == ("none",) and "mixture of experts" in fit_run.notes[0]
    with pytest.raises(StructuredError, match="mixture of experts"):
        Fit(FitConfig(str(tmp_path / "moe.json"), Budget.parse(max_disk="1GB"),
                      **dict(run, candidates="precision=int8;prune_structured=depth-0.5")), tmp_path / "b", False)


@pytest.mark.slow
def test_infeasible_budget_names_the_nearest_candidates(two_fits: dict, tiny_model: Path) -> None:
    from pocketlm.fit.config import FitConfig
    from pocketlm.fit.search import fit

    out = two_fits["out"] / "none"
    out.mkdir()
    shutil.copy(two_fits["out"] / "fit.sqlite", out / "fit.sqlite")
    report = fit(FitConfig(str(tiny_model), Budget.parse(max_disk="100KB"), **SMALL_RUN), out, progress=False)
    assert report["chosen"] is None and report["artifact"] is None and not (out / "model").exists()
    assert report["nearest"] and all(n["misses"] and "disk" in n["misses"][0] for n in report["nearest"])
    assert "Nothing fits this budget" in (out / "fit_report.md").read_text()
    assert report["counts"]["measured_this_run"] == 0


@pytest.mark.slow
def test_kill_minus_nine_then_rerun_continues_without_remeasuring(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "fit"
    argv = [sys.executable, "-m", "pocketlm.cli", "fit", str(tiny_model), "--min-decode-tok-s", "1",
            "--out", str(out), *SMALL_FLAGS, "--candidates", "precision=int8,int4;prune_nm=none;prune_structured=none"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    db = out / "fit.sqlite"
    out.mkdir()
    deadline = time.time() + 300
    before: dict = {}
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                with sqlite3.connect(db) as con:
                    before = dict(con.execute("SELECT key, created FROM records WHERE kind = 'measure'").fetchall())
            except sqlite3.OperationalError:  # not created yet
                pass
            if before:
                break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the fit and its measuring worker, mid-run
        proc.wait()
    assert before, "the fit stored no measurement before the deadline"
    assert not (out / "model").exists() and not (out / "fit_report.json").exists()
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "fit_report.json").read_text())
    with sqlite3.connect(db) as con:
        after = dict(con.execute("SELECT key, created FROM records WHERE kind = 'measure'").fetchall())
    assert all(after[k] == t for k, t in before.items())  # the rows from before the kill were reused as is
    assert report["counts"]["measured_this_run"] == len(after) - len(before)
    assert (out / "model").is_dir() and report["chosen"]


# ---- the HTML report ---------------------------------------------------------------------------------

def test_html_escapes_untrusted_text_and_embeds_figures(tmp_path: Path) -> None:
    from pocketlm.htmlreport import render_report

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.figure(figsize=(2, 2))
    plt.plot([0, 1])
    plt.savefig(tmp_path / "f.png")
    plt.close()
    page = render_report("t <b>", [{"title": "A & B", "markdown": "x <script>alert(1)</script> `<i>`\n\n"
                                    "| a | b |\n|---|---:|\n| <img src=x> | 1.5 |\n\n![fig](f.png)\n\n"
                                    "[bad](javascript:alert(1))"}], tmp_path)
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x&gt;" in page and 'href="#"' in page
    assert page.count("data:image/png;base64,") == 1 and "f.png" not in page.split("<body>")[1]
    assert "A &amp; B" in page and "connect-src" not in page and "default-src 'none'" in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = """<script>window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; }).length;
  var empty = Array.prototype.slice.call(document.querySelectorAll('section')).filter(function (s) {
    return s.textContent.replace(s.querySelector('h2').textContent, '').trim() === '' &&
           s.querySelectorAll('img, table').length === 0; }).length;
  var p = document.createElement('pre'); p.id = 'probe';
  p.textContent = JSON.stringify({images: imgs.length, broken: broken, empty: empty,
    sections: document.querySelectorAll('section').length, missing: document.querySelectorAll('.missing').length});
  document.body.appendChild(p); });</script></body>"""


def browser_check(page: Path, tmp_path: Path) -> dict:
    """Load `page` in headless Chromium and return what the probe script saw."""
    probed = tmp_path / f"probe-{page.parent.name}.html"
    probed.write_text(page.read_text().replace("</body>", PROBE))
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                           f"--user-data-dir={tmp_path / 'chrome'}", "--dump-dom", probed.as_uri()],
                          capture_output=True, text=True, timeout=120)
    start = proc.stdout.find('<pre id="probe">')
    assert start >= 0, proc.stderr[-2000:]
    import html as html_lib

    return json.loads(html_lib.unescape(proc.stdout[start + len('<pre id="probe">'):].split("</pre>")[0]))


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian package `chromium`)")
def test_fit_report_html_renders_in_chromium(two_fits: dict, tmp_path: Path) -> None:
    seen = browser_check(two_fits["out"] / "tight" / "report.html", tmp_path)
    assert seen["images"] >= 1 and seen["broken"] == 0 and seen["missing"] == 0
    assert seen["sections"] == 6 and seen["empty"] == 0


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian package `chromium`)")
def test_demo_report_html_renders_in_chromium(two_fits: dict, tmp_path: Path) -> None:
    """The demo's writer: its sections (one of them the fit's, figure relinked into its folder) in order."""
    from pocketlm.demo import _relink, _write_report

    out = tmp_path / "demo"
    shutil.copytree(two_fits["out"] / "tight", out / "fit")
    fit_md = "\n\n".join(s["markdown"] for s in two_fits["tight"]["sections"][:2])
    sections = [{"title": "The model", "markdown": "| axis | value |\n|---|---|\n| d_model | 128 |", "seconds": 0.1},
                {"title": "Fit", "markdown": _relink(fit_md, out / "fit", out), "seconds": 2.0}]
    _write_report(out, None, sections, [])
    page = (out / "report.html").read_text()
    assert page.index("The model") < page.index("Fit")
    seen = browser_check(out / "report.html", tmp_path)
    assert seen == {"images": 1, "broken": 0, "empty": 0, "sections": 2, "missing": 0}


@pytest.mark.parametrize("d_model", [128, 256])  # rows of 128 fall back from the K-quants; 256 do not
@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K_M", "Q2_K"])
def test_gguf_bits_predict_llama_cpp_file_sizes(tmp_path: Path, d_model: int, qtype: str) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (optional extra) not installed")
    import torch

    from pocketlm.export.gguf import export_gguf
    from pocketlm.fit.candidates import gguf_bits
    from pocketlm.model import costs
    from pocketlm.model.config import ModelConfig
    from pocketlm.model.transformer import Transformer

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=1024, d_model=d_model, n_layer=2, n_head=4, intermediate_size=512, max_seq_len=128)
    path = export_gguf(Transformer(cfg).eval(), tmp_path / "m.gguf", qtype)
    predicted = costs.param_counts(cfg)["total"] * gguf_bits(qtype, cfg) / 8
    assert predicted == pytest.approx(path.stat().st_size, rel=0.10)  # measured: within 8.4%


def test_baseline_verdicts_pick_the_branch_the_numbers_say() -> None:
    """Hand-made records: each baseline's line follows from its measured cost and KL against the choice's."""
    from pocketlm.fit.report import baseline_verdicts

    def rec(name, kl, decode_ms, memory, misses=()):
        return {"candidate": name, "quality": {"kl_mean": kl}, "misses": list(misses),
                "measured": {"decode_ms": decode_ms, "memory_bytes": memory}}

    chosen = rec("q5", 0.010, 20.0, 100)
    lines = baseline_verdicts(chosen, [
        chosen,
        rec("q8", 0.001, 25.0, 170, misses=["memory 170 > 150"]),
        rec("q4_slow", 0.030, 30.0, 120),  # worse KL, dearer: the choice dominates it
        rec("q4_fast", 0.020, 10.0, 90),  # worse KL but cheaper in both
        {"candidate": "q2", "quality": None, "measured": None, "misses": []},
    ])
    assert "is fit's choice" in lines[0]
    assert "misses the budget (memory 170 > 150)" in lines[1]
    assert "at least as good on quality" in lines[2] and "x0.67, memory x0.83" in lines[2]
    assert "costs less in decode time and memory" in lines[3] and "lower KL (0.0100 vs 0.0200)" in lines[3]
    assert "was not measured" in lines[4]
