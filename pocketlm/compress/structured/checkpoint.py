"""`prune_structured_checkpoint`: open a MODEL argument, calibrate, prune to a target shape, save a Hugging
Face folder (transformers loads it; a pocketlm checkpoint when no family expresses the model, as with
per-layer widths) with
`structured_report.json` (the ranking of candidate shapes, what was kept, timings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pocketlm.compress.structured.driver import prune_structured, target_shapes
from pocketlm.utils import atomic_write_text


def prune_structured_checkpoint(model_ref: str | Path, out: str | Path, *, calib: str = "bundled:64x256",
                                target_params: str | None = None, method: str = "activation",
                                layer_method: str = "block_influence", contiguous: bool = False,
                                max_candidates: int = 12, tolerance: float = 0.02, tokenizer: str | None = None,
                                seed: int = 0, progress: bool = False, per_layer: bool = False,
                                **explicit: Any) -> dict[str, Any]:
    from pocketlm.compress.calibration import CalibSpec, calibration_batches
    from pocketlm.compress.prune.checkpoint import _save, open_model_and_tokenizer

    model, tok = open_model_and_tokenizer(model_ref, tokenizer)
    shapes = target_shapes(model.config, target_params, tolerance=tolerance, max_candidates=max_candidates,
                           **explicit)
    needs_calib = method != "magnitude" or any(s.n_layer < model.config.n_layer for s in shapes) or len(shapes) > 1
    ids, record = None, None
    if needs_calib:
        spec = CalibSpec.parse(calib, default_seq_len=min(256, model.config.max_seq_len))
        ids, record = calibration_batches(spec, tok, seed=seed)
    res = prune_structured(model, ids, shapes, method=method, layer_method=layer_method, contiguous=contiguous,
                           progress=progress, per_layer=per_layer)
    notes: list[str] = []
    out = Path(out)
    fmt = _save(res.model, tok, out, notes)
    report = {"model": str(model_ref), "format": fmt, "calibration": record, "notes": notes, **res.summary()}
    atomic_write_text(out / "structured_report.json", json.dumps(report, indent=2))
    return report
