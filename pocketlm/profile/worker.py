"""Measure one `Setting` in this process; started as a fresh subprocess by `pocketlm.profile.runner`
so memory figures start clean.

    python -P -m pocketlm.profile.worker '<setting json>'   # last stdout line: the result JSON

`-P` keeps the current directory off sys.path: a `json.py` where the user stands must not run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import traceback

import torch

from pocketlm.model import costs
from pocketlm.model.config import ModelConfig
from pocketlm.profile.backends import get_backend
from pocketlm.profile.setting import ProfileError, Setting
from pocketlm.profile.system import system_info
from pocketlm.runtime import ModelOpenError, resolve

# errors that are the user's to fix: reported as one line, without a traceback
USER_ERRORS: dict[str, type[ValueError]] = {"ProfileError": ProfileError, "ModelOpenError": ModelOpenError}


def model_info(cfg: ModelConfig) -> dict:
    counts = costs.param_counts(cfg)
    return {"name": cfg.name, "attention": cfg.attention_kind, "n_layer": cfg.n_layer, "d_model": cfg.d_model,
            "vocab_size": cfg.vocab_size, "max_seq_len": cfg.max_seq_len, "params": counts["total"],
            "params_non_embedding": counts["non_embedding"], "params_active": counts.get("active", counts["total"])}


def run(setting: Setting) -> dict:
    """The setting's measurements, with model info, system and wall time."""
    if setting.threads:
        torch.set_num_threads(setting.threads)
    else:  # 0: torch's default, recorded as the number it is
        setting = dataclasses.replace(setting, threads=torch.get_num_threads())
    started = time.time()
    ref = resolve(setting.model)
    setting.check_fits(ref.config)
    result = get_backend(setting.backend).measure(ref, setting)
    result["model_info"] = model_info(ref.config)
    result["setting"] = setting.to_dict()
    result["system"] = dict(system_info(setting.device), threads=setting.threads)
    result["wall_s"] = time.time() - started
    return result


def main(argv: list[str]) -> int:
    try:
        setting = Setting.from_dict(json.loads(argv[1] if len(argv) > 1 else sys.stdin.read()))
        result = run(setting)
    except tuple(USER_ERRORS.values()) as e:
        kind = next(name for name, cls in USER_ERRORS.items() if isinstance(e, cls))
        print(json.dumps({"error": str(e), "kind": kind}))
        return 2
    except Exception as e:  # report, with the traceback on stderr, and let the parent decide
        traceback.print_exc()
        print(json.dumps({"error": f"{type(e).__name__}: {e}", "kind": type(e).__name__}))
        return 3
    sys.stdout.flush()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main(sys.argv))
