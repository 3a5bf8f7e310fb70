"""4-bit block-wise weights for MatMul and Gemm: the math, the methods and the statistics.

Pure numpy on weights as rows of output channels (``[N, K]``) and on each layer's input
statistics (``H = sum x^T x``, observed streaming). The graph rewrite is
:class:`quantcli.passes.nbits.WriteBlockwiseWeightsPass`.

- :func:`rtn`: round to nearest, per block a scale (and a zero point).
- :func:`hqq`: per-block parameters fitted without data by half-quadratic splitting.
- :func:`gptq`: rounding with second-order error compensation from ``H``.
- :func:`awq`: activation-aware input-channel scaling searched on the statistics.
- :func:`layer_error`: weight-reconstruction error and the output error ``tr(dW H dW^T)``.
"""

from quantcli.blockwise.awq import awq, awq_scale
from quantcli.blockwise.gptq import gptq
from quantcli.blockwise.hqq import hqq
from quantcli.blockwise.layout import BITS, BLOCK_SIZES, BlockQuantized, pack_nibbles, unpack_nibbles
from quantcli.blockwise.metrics import LayerError, layer_error, output_error
from quantcli.blockwise.rtn import rtn
from quantcli.blockwise.statistics import GramObserver, InputStatistics, collect_input_statistics
from quantcli.blockwise.targets import BlockTarget, block_targets

__all__ = [
    "BITS",
    "BLOCK_SIZES",
    "BlockQuantized",
    "BlockTarget",
    "GramObserver",
    "InputStatistics",
    "LayerError",
    "awq",
    "awq_scale",
    "block_targets",
    "collect_input_statistics",
    "gptq",
    "hqq",
    "layer_error",
    "output_error",
    "pack_nibbles",
    "rtn",
    "unpack_nibbles",
]
