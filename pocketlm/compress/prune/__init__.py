"""Unstructured and N:M pruning: masks, one module per method (magnitude, Wanda, SparseGPT), OWL, and the driver."""

from pocketlm.compress.prune.driver import METHOD_MODULES, prune

__all__ = ["prune", "METHOD_MODULES"]
