"""Graph rewrites, each an onnx_ir pass that carries out part of a :class:`~quantcli.plan.QuantPlan`.

Passes decide nothing: every choice was made by ``plan.select`` and every number by ``scheme``.
They modify the model in place and report whether they changed it. Each states the order it
needs as onnx_ir pre/post conditions (``requires``/``ensures``: the dynamic MatMul, LSTM and
gathered-row passes read what QuantizeInitializersPass leaves), and how it treats If/Loop/Scan
bodies (``MainGraphPass.subgraphs``: planned passes rewrite If branches where the plan's nodes
live).
"""

from quantcli.passes.activations import InsertActivationQDQPass
from quantcli.passes.batchnorm import FoldBatchNormPass
from quantcli.passes.bias import CorrectBiasesPass, ReplaceInitializerValuesPass
from quantcli.passes.cleanup import RemoveUnusedBranchInitializersPass
from quantcli.passes.computed_weights import FoldComputedWeightsPass
from quantcli.passes.dynamic import QuantizeMatMulDynamicallyPass
from quantcli.passes.einsum import EinsumToMatMulPass
from quantcli.passes.fold import FoldActivationsPass
from quantcli.passes.gather import GatherQuantizedRowsPass
from quantcli.passes.nbits import WriteBlockwiseWeightsPass
from quantcli.passes.pooling import ReduceMeanToGlobalPoolPass
from quantcli.passes.recurrent import QuantizeLSTMDynamicallyPass
from quantcli.passes.tables import WriteBlockwiseTablesPass
from quantcli.passes.weights import QuantizeInitializersPass
from quantcli.passes.zero_points import OmitZeroPointsPass

__all__ = [
    "CorrectBiasesPass",
    "EinsumToMatMulPass",
    "FoldActivationsPass",
    "FoldBatchNormPass",
    "FoldComputedWeightsPass",
    "GatherQuantizedRowsPass",
    "InsertActivationQDQPass",
    "OmitZeroPointsPass",
    "QuantizeInitializersPass",
    "QuantizeLSTMDynamicallyPass",
    "QuantizeMatMulDynamicallyPass",
    "ReduceMeanToGlobalPoolPass",
    "RemoveUnusedBranchInitializersPass",
    "ReplaceInitializerValuesPass",
    "WriteBlockwiseTablesPass",
    "WriteBlockwiseWeightsPass",
]
