"""The runtime layer: one way to turn a MODEL argument into a model at a precision.

`eval`, `profile`, `info`, `export`, `compress` and `fit` all open models here, so the model that is
scored is the model that is timed.
"""

from pocketlm.runtime.open import (PRECISIONS, ModelOpenError, ModelRef, open_model, open_tokenizer,
                                   release_memory, resolve)

__all__ = ["PRECISIONS", "ModelOpenError", "ModelRef", "open_model", "open_tokenizer", "release_memory", "resolve"]
