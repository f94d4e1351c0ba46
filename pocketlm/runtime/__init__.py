"""The runtime layer: one way to turn a MODEL argument into a model at a precision.

`eval`, `profile`, `info`, `export`, `compress` and `fit` all open models here, so the model that is
scored is the model that is timed.
"""

from typing import TYPE_CHECKING

from pocketlm.lazy import lazy_exports

__all__ = ["PRECISIONS", "ModelOpenError", "ModelRef", "open_model", "open_tokenizer", "release_memory", "resolve"]
__getattr__ = lazy_exports(__name__, dict.fromkeys(__all__, ".open"))  # torch loads on first use, not on --help

if TYPE_CHECKING:
    from pocketlm.runtime.open import (PRECISIONS, ModelOpenError, ModelRef, open_model, open_tokenizer,
                                       release_memory, resolve)
