"""Weight-only quantization the model knows: integer grids (`grids`), round-to-nearest (`rtn`; calibrated
methods such as GPTQ/AWQ live in pocketlm.compress and end in the same step),
and the step that puts chosen codes into the model's integer kernels (`kernels.to_kernels`)."""

from pocketlm.model.quantize.grids import (GRID_BITS, GridError, GridWeight, IntGrid, dequantize_int4, quantize_int4, quantize_int8,
                                              round_to_grid, sqnr_db)
from pocketlm.model.quantize.kernels import kernel_layer, select_linears, to_kernels
from pocketlm.model.quantize.rtn import quantize_model, rtn_linear
from pocketlm.model.linears import (INT4_GROUP_SIZES, INT_LINEARS, SCHEMES, Int4Linear, Int8Linear,
                                    QuantizationError, QuantRecipe, check_int4, check_int8)

QUANT_LINEARS = INT_LINEARS

__all__ = ["GRID_BITS", "GridError", "GridWeight", "IntGrid", "INT4_GROUP_SIZES", "INT_LINEARS", "Int4Linear", "Int8Linear", "QUANT_LINEARS",
           "QuantRecipe", "QuantizationError", "SCHEMES", "check_int4", "check_int8", "dequantize_int4",
           "kernel_layer", "quantize_int4", "quantize_int8", "quantize_model", "round_to_grid",
           "rtn_linear", "select_linears", "sqnr_db", "to_kernels"]
