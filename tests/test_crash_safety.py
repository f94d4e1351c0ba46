"""Kill tests: a process SIGKILLed at the critical moment of a save or a `data prepare` over an existing
artifact leaves the old artifact or the new one, whole; the next run removes the temporaries it left.

Each case runs the writer in a subprocess that kills itself at one point (a test hook patched in from
outside: `pocketlm.utils._swap_in`, the one place every artifact folder is swapped in, or a write inside
the folder), then inspects what is on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.fuzz.conftest import write_tiny_corpus

ROOT = Path(__file__).resolve().parents[1]

PRELUDE = textwrap.dedent("""
    import os, signal, sys
    import pocketlm.utils as U

    POINT = sys.argv[1]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    real_swap = U._swap_in

    def swap(tmp, path):
        if POINT == "before_swap":
            die()
        real_swap(tmp, path)
        if POINT == "after_swap":
            die()

    U._swap_in = swap
    if POINT == "between_renames":  # the two-rename fallback where the OS cannot swap atomically
        U._exchange = lambda a, b: False
        real_rename = os.rename

        def rename(src, dst):
            real_rename(src, dst)
            if str(dst).endswith("-old.tmp"):
                die()

        U.os.rename = rename
""")

MODEL = textwrap.dedent("""
    import torch
    from pocketlm.model.config import ModelConfig
    from pocketlm.model.transformer import Transformer

    def tiny(seed):
        torch.manual_seed(seed)
        return Transformer(ModelConfig(vocab_size=64, d_model=32, n_layer=2, n_head=4, n_kv_head=2,
                                       intermediate_size=48, max_seq_len=64, tie_embeddings=False, name="k"))
""")


def _run(script: str, point: str, *args: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", PRELUDE + script, point, *args], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode in (0, -9), proc.stderr[-2000:]
    return proc.returncode


def _temporaries(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def _tiny(seed: int):
    exec(MODEL, ns := {})
    return ns["tiny"](seed)


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


SAVE = MODEL + textwrap.dedent("""
    from pocketlm.interop import save_hf, save_native
    import safetensors.torch as st
    fmt, out = sys.argv[2], sys.argv[3]
    if POINT == "mid_write":  # weights written inside the new folder, config not yet
        real_save = st.save_file
        def save_file(*a, **k):
            real_save(*a, **k)
            die()
        import pocketlm.interop.native as N, pocketlm.interop.hf as H
        N.save_file = H.save_file = save_file
    (save_hf if fmt == "hf" else save_native)(tiny(1), out)
""")


@pytest.mark.parametrize("fmt,point", [("native", "mid_write"), ("native", "before_swap"), ("hf", "after_swap"),
                                       ("native", "between_renames")])
def test_overwriting_save_killed(tmp_path, fmt, point) -> None:
    from pocketlm.interop import load_model, save_hf, save_native

    save = save_hf if fmt == "hf" else save_native
    out = tmp_path / "model"
    old, new = _tiny(0), _tiny(1)
    save(old, out)
    assert _run(SAVE, point, fmt, str(out)) == -9
    if point == "between_renames":  # `out` is briefly absent; the next writer puts the old folder back first
        from pocketlm.utils import clean_stale_temporaries

        clean_stale_temporaries(out)
    on_disk = load_model(out)
    assert _same(on_disk, new if point == "after_swap" else old)  # old or new, whole: never a mix
    if point != "between_renames":  # (there the repair already removed the dead writer's new folder)
        assert _temporaries(out), "the killed writer should have left its temporary behind"
    save(_tiny(2), out)  # the next run
    assert _same(load_model(out), _tiny(2))
    assert _temporaries(out) == []


PREPARE = textwrap.dedent("""
    from pocketlm.data.prepare import PrepareConfig, prepare
    from pocketlm.data.tokenizer import TextTokenizer
    corpus, out, vocab = sys.argv[2], sys.argv[3], int(sys.argv[4])
    if POINT == "after_tokenizer":  # the moment of the reported bug: new tokenizer.json, old manifest
        real = TextTokenizer.save
        def save(self, d):
            real(self, d)
            die()
        TextTokenizer.save = save
    prepare(PrepareConfig([corpus], out, vocab_size=vocab, val_fraction=0.2), progress=False)
""")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus") / "stories.jsonl", 60)


def _dataset_is_whole(d: Path) -> int:
    """The dataset's vocabulary, after checking tokenizer, manifest and every shard agree."""
    from pocketlm.data.shards import TokenSplit, read_manifest
    from pocketlm.data.tokenizer import TextTokenizer

    manifest = read_manifest(d)
    tok = TextTokenizer.load(d / "tokenizer.json")
    assert manifest["tokenizer"]["sha256"] == tok.fingerprint()
    for split in manifest["splits"]:
        TokenSplit.open(d, split, verify=True)
    return manifest["tokenizer"]["vocab_size"]


@pytest.mark.parametrize("point", ["after_tokenizer", "before_swap", "after_swap"])
def test_prepare_over_an_existing_dataset_killed(tmp_path, corpus, point) -> None:
    from pocketlm.data.prepare import PrepareConfig, prepare

    out = tmp_path / "data"
    prepare(PrepareConfig([str(corpus)], str(out), vocab_size=300, val_fraction=0.2), progress=False)
    old_vocab = _dataset_is_whole(out)
    assert _run(PREPARE, point, str(corpus), str(out), "400") == -9
    vocab = _dataset_is_whole(out)
    assert vocab == (400 if point == "after_swap" else old_vocab) and vocab != (old_vocab if point == "after_swap"
                                                                               else 400)
    assert _temporaries(out)
    prepare(PrepareConfig([str(corpus)], str(out), vocab_size=350, val_fraction=0.2), progress=False)
    assert _dataset_is_whole(out) == 350 and _temporaries(out) == []


def test_atomic_files_respect_the_umask_and_clean_dead_temporaries(tmp_path) -> None:
    from pocketlm.utils import atomic_dir, atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_dir(tmp_path / "folder") as d:
            (d / "x").write_text("1")
            atomic_write_text(d / "y", "2")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "folder" / "y").stat().st_mode & 0o777 == 0o644
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".a.json.{dead.stdout.strip()}-zz.tmp"
    stale.write_text("left by a killed writer")
    mine = tmp_path / f".a.json.{os.getpid()}-zz.tmp"  # a live writer's temporary is never touched
    mine.write_text("in use")
    atomic_write_text(tmp_path / "a.json", json.dumps({"v": 2}))
    assert not stale.exists() and mine.exists()
