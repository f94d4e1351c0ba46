"""Calibrated weight quantization on the shared block walk: GPTQ (`gptq`), AWQ (`awq`), RTN, one driver."""

from pocketlm.compress.quantize.driver import METHODS, CalibrationTooShortError, quantize

__all__ = ["METHODS", "CalibrationTooShortError", "quantize"]
