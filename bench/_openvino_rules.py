"""Rewrite quantcli's static output (placed for onnxruntime) by rule, for OpenVINO's CPU plugin.

This is the evidence tool behind docs/openvino.md, and the stand-in for `quantcli convert --target
openvino` in bench/targets.py until that flag exists. It edits the ONNX graph quantcli wrote: it
removes activation Q/DQ pairs, turns quantized biases back into float constants and gives int8
weights to the last Convs; it never adds an activation pair nor changes an activation scale, so every
activation pair it keeps has quantcli's own calibrated parameters.

    .benchenv-openvino/bin/python bench/_openvino_rules.py IN.onnx OUT.onnx [--rules a,b,...]

Rules (each can be switched on alone, to measure it; `--rules openvino` is the set docs/openvino.md
arrives at):
    nonnegative-uint8  an int8 activation pair with zero point -128 (quantcli's int8 form of a
                     non-negative tensor) -> uint8 with zero point 0: the same values, exactly, in
                     the one form OpenVINO folds into its integer kernels
    conv-outputs     drop the pair on the output of Conv / ConvTranspose / MatMul / Gemm: OpenVINO
                     quantizes a layer's *inputs*; a pair on the output of a heavy layer makes it
                     write u8, then dequantize in bf16/f32 for the activation that follows
    float-consumers  drop a pair none of whose consumers can take an integer input in OpenVINO's
                     CPU plugin (INTEGER_CONSUMERS below): the pair on a Sigmoid feeding the Mul of a
                     SiLU, on a Softmax, ... costs a Convert and a Subtract and saves nothing
    after-movement   drop the pair on the output of Split / MaxPool / Resize / Reshape /
                     Transpose / ... when that op's own input already comes out of a DequantizeLinear:
                     the plugin carries the integer precision through these ops by itself
    float-bias       DequantizeLinear of an int32 bias -> the float bias it stands for (what NNCF writes)
    final-weights    int8 weights for a float Conv / MatMul whose input is already dequantized (the
                     last Convs quantcli keeps float for onnxruntime): OpenVINO runs it on an integer
                     kernel with a float output
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

HEAVY = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
# One-input ops that keep their input's scale (Concat is not one: its inputs' scales differ, and
# without a pair on its output the Conv after it runs in float).
MOVEMENT = {
    "Split",
    "MaxPool",
    "Resize",
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Slice",
    "Gather",
}
# Ops OpenVINO's CPU plugin runs with an integer input (low-precision transformations keep the
# dequantization after them or fuse it in): the heavy layers, the eltwise Add/Sub of a residual,
# concatenation, pooling and the data movement ops that keep a per-tensor scale.
INTEGER_CONSUMERS = HEAVY | MOVEMENT | {"Add", "Sub", "Concat", "AveragePool", "GlobalAveragePool"}


class Graph:
    """Producer and consumer maps of an onnx graph, rebuilt after each edit."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        graph = model.graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {value.name for value in graph.output}
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}

    def activation_pairs(self) -> list[tuple[onnx.NodeProto, list[onnx.NodeProto]]]:
        """Each activation QuantizeLinear with the DequantizeLinear nodes that read it (and nothing else)."""
        pairs = []
        for node in self.model.graph.node:
            if node.op_type != "QuantizeLinear" or node.input[0] in self.initializers:
                continue
            readers = self.consumers.get(node.output[0], [])
            if readers and all(r.op_type == "DequantizeLinear" for r in readers):
                if node.output[0] in self.outputs or any(r.output[0] in self.outputs for r in readers):
                    continue
                pairs.append((node, readers))
        return pairs

    def users(self, dequantizers: list[onnx.NodeProto]) -> set[str]:
        return {user.op_type for dq in dequantizers for user in self.consumers.get(dq.output[0], [])}


def _drop_pairs(
    model: onnx.ModelProto, drop: Callable[[Graph, onnx.NodeProto, list[onnx.NodeProto]], bool]
) -> int:
    graph = Graph(model)
    rename: dict[str, str] = {}
    removed: set[int] = set()
    for quantize, dequantizers in graph.activation_pairs():
        if drop(graph, quantize, dequantizers):
            removed.add(id(quantize))
            for dq in dequantizers:
                removed.add(id(dq))
                rename[dq.output[0]] = quantize.input[0]
    kept = [node for node in model.graph.node if id(node) not in removed]
    for node in kept:
        for index, name in enumerate(node.input):
            if name in rename:
                node.input[index] = rename[name]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return len(rename)


def nonnegative_uint8(model: onnx.ModelProto) -> int:
    """An activation pair in int8 with zero point -128 (quantcli's int8 form of a non-negative
    tensor, e.g. a ReLU output) -> the same pair in uint8 with zero point 0. The two represent the
    same values exactly (q_uint8 = q_int8 + 128, same scale), but OpenVINO's CPU plugin folds only a
    zero point of 0 into its integer kernels: with -128 a Conv runs in f32, or the model does not
    compile at all ("No suitable implementations")."""
    graph = Graph(model)
    zero = "ov_uint8_zero_point"
    changed = 0
    for quantize, dequantizers in graph.activation_pairs():
        nodes = [quantize, *dequantizers]
        points = {node.input[2] for node in nodes if len(node.input) > 2}
        if len(points) != 1:
            continue
        tensor = graph.initializers.get(points.pop())
        if tensor is None or tensor.data_type != onnx.TensorProto.INT8 or list(tensor.dims):
            continue
        if int(numpy_helper.to_array(tensor)) != -128:
            continue
        for node in nodes:
            node.input[2] = zero
        changed += 1
    if changed:
        model.graph.initializer.append(numpy_helper.from_array(np.array(0, np.uint8), zero))
        _drop_unused_initializers(model)
    return changed


def conv_outputs(model: onnx.ModelProto) -> int:
    def drop(graph: Graph, quantize: onnx.NodeProto, _dq: list[onnx.NodeProto]) -> bool:
        source = graph.producer.get(quantize.input[0])
        return source is not None and source.op_type in HEAVY

    return _drop_pairs(model, drop)


def float_consumers(model: onnx.ModelProto) -> int:
    def drop(graph: Graph, _q: onnx.NodeProto, dequantizers: list[onnx.NodeProto]) -> bool:
        return not graph.users(dequantizers) & INTEGER_CONSUMERS

    return _drop_pairs(model, drop)


def after_movement(model: onnx.ModelProto) -> int:
    def drop(graph: Graph, quantize: onnx.NodeProto, _dq: list[onnx.NodeProto]) -> bool:
        source = graph.producer.get(quantize.input[0])
        if source is None or source.op_type not in MOVEMENT:
            return False
        feeder = graph.producer.get(source.input[0])
        return feeder is not None and feeder.op_type == "DequantizeLinear"

    return _drop_pairs(model, drop)


def float_bias(model: onnx.ModelProto) -> int:
    """Replace DequantizeLinear(int32 initializer) by the float initializer it computes."""
    graph = Graph(model)
    changed = 0
    kept = []
    for node in model.graph.node:
        tensor = graph.initializers.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if tensor is None or tensor.data_type != onnx.TensorProto.INT32:
            kept.append(node)
            continue
        values = numpy_helper.to_array(tensor).astype(np.float64)
        scale = numpy_helper.to_array(graph.initializers[node.input[1]]).astype(np.float64)
        zero = (
            numpy_helper.to_array(graph.initializers[node.input[2]]).astype(np.float64)
            if len(node.input) > 2 and node.input[2]
            else 0.0
        )
        model.graph.initializer.append(
            numpy_helper.from_array(((values - zero) * scale).astype(np.float32), node.output[0])
        )
        changed += 1
    del model.graph.node[:]
    model.graph.node.extend(kept)
    _drop_unused_initializers(model)
    return changed


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input} | {v.name for v in model.graph.output}
    for tensor in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(tensor)


def final_weights(model: onnx.ModelProto) -> int:
    """Give int8 weights to a float Conv / MatMul whose activation input already comes out of a
    DequantizeLinear (quantcli's `keep_final_outputs_float` leaves a detector's last Convs so for
    onnxruntime). On OpenVINO the output of such a layer is never quantized (no pair goes there), so
    the clipping that rule guards against cannot happen, and the layer runs on an integer kernel with
    a float output. Weights: symmetric int8, one scale per output channel (max |w| / 127), the
    scheme quantcli uses for Conv weights."""
    graph = Graph(model)
    changed = 0
    nodes = []
    for node in model.graph.node:
        weight = graph.initializers.get(node.input[1]) if node.op_type in ("Conv", "MatMul") else None
        source = graph.producer.get(node.input[0]) if weight is not None else None
        if weight is None or weight.data_type != onnx.TensorProto.FLOAT or source is None:
            nodes.append(node)
            continue
        if source.op_type != "DequantizeLinear":
            nodes.append(node)
            continue
        values = numpy_helper.to_array(weight).astype(np.float64)
        axis = 0 if node.op_type == "Conv" else values.ndim - 1
        reduce = tuple(i for i in range(values.ndim) if i != axis)
        scale = np.maximum(np.abs(values).max(axis=reduce), 1e-12) / 127.0
        shape = [-1 if i == axis else 1 for i in range(values.ndim)]
        q = np.clip(np.round(values / scale.reshape(shape)), -127, 127).astype(np.int8)
        base = f"{weight.name}_ov"
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(q, f"{base}_quantized"),
                numpy_helper.from_array(scale.astype(np.float32), f"{base}_scale"),
                numpy_helper.from_array(np.zeros(len(scale), np.int8), f"{base}_zero_point"),
            ]
        )
        nodes.append(
            onnx.helper.make_node(
                "DequantizeLinear",
                [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"],
                [f"{base}_dequantized"],
                axis=axis,
                name=f"{base}_DequantizeLinear",
            )
        )
        node.input[1] = f"{base}_dequantized"
        nodes.append(node)
        changed += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return changed


def convtranspose_inputs(model: onnx.ModelProto, fp32: Path, calib: Path, samples: int = 32) -> int:
    """Give each ConvTranspose whose input is float an activation pair, with a min/max range measured
    here by onnxruntime on the fp32 model over the first calibration samples (quantcli keeps such a
    ConvTranspose weight-only, which makes OpenVINO run it in f32 with its Relu / Sigmoid unfused).
    Not in the OPENVINO set: its scale is this script's, not quantcli's calibration (the Target will
    have quantcli's ranges); `--rules openvino,convtranspose-inputs --fp32 M --calib DIR` measures it."""
    import onnxruntime as ort  # noqa: PLC0415 - only this experiment needs it

    graph = Graph(model)
    wanted = [
        node
        for node in model.graph.node
        if node.op_type == "ConvTranspose"
        and getattr(graph.producer.get(node.input[0]), "op_type", "") != "DequantizeLinear"
    ]
    names = list(dict.fromkeys(node.input[0] for node in wanted))
    if not names:
        return 0
    reference = onnx.load(str(fp32))
    reference.graph.output.extend(
        onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names
    )
    session = ort.InferenceSession(reference.SerializeToString(), providers=["CPUExecutionProvider"])
    low, high = dict.fromkeys(names, np.inf), dict.fromkeys(names, -np.inf)
    for path in sorted(calib.glob("*.npz"))[:samples]:
        with np.load(path) as archive:
            values = session.run(names, {key: archive[key] for key in archive.files})
        for name, value in zip(names, values, strict=True):
            low[name], high[name] = min(low[name], float(value.min())), max(high[name], float(value.max()))
    nodes = []
    chosen = {id(node) for node in wanted}
    placed: set[str] = set()  # one pair per tensor, however many ConvTransposes read it
    for node in model.graph.node:
        if id(node) in chosen and f"{node.input[0]}_ov_input" in placed:
            node.input[0] = f"{node.input[0]}_ov_input"
        elif id(node) in chosen:
            name = node.input[0]
            placed.add(f"{name}_ov_input")
            nonnegative = low[name] >= 0
            scale = high[name] / 255.0 if nonnegative else max(-low[name], high[name]) / 127.0
            zero = np.array(0, np.uint8 if nonnegative else np.int8)
            base = f"{name}_ov_input"
            model.graph.initializer.extend(
                [numpy_helper.from_array(np.array(scale, np.float32), f"{base}_scale"),
                 numpy_helper.from_array(zero, f"{base}_zero_point")]
            )  # fmt: skip
            params = [f"{base}_scale", f"{base}_zero_point"]
            nodes.append(onnx.helper.make_node("QuantizeLinear", [name, *params], [f"{base}_quantized"]))
            nodes.append(onnx.helper.make_node("DequantizeLinear", [f"{base}_quantized", *params], [base]))
            node.input[0] = base
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return len(names)


RULES: dict[str, Callable[[onnx.ModelProto], int]] = {
    "nonnegative-uint8": nonnegative_uint8,
    "conv-outputs": conv_outputs,
    "float-consumers": float_consumers,
    "after-movement": after_movement,
    "float-bias": float_bias,
    "final-weights": final_weights,
}
# The set docs/openvino.md arrives at, in the order applied.
# conv-outputs is not in it: float-consumers already drops a heavy layer's output pair when only
# float ops read it (a SiLU), and one read by pooling must stay (digits_cnn: Conv -> MaxPool).
OPENVINO = ("nonnegative-uint8", "float-consumers", "after-movement", "float-bias", "final-weights")


def apply(model: onnx.ModelProto, rules: tuple[str, ...]) -> dict[str, int]:
    """Apply the rules in order; return how many pairs, biases or weights each changed."""
    done = {}
    for rule in rules:
        done[rule] = RULES[rule](model)
    return done


def rewrite(
    source: Path,
    target: Path,
    rules: tuple[str, ...] = OPENVINO,
    *,
    fp32: Path | None = None,
    calib: Path | None = None,
) -> dict[str, int]:
    """rules may end with "convtranspose-inputs", which needs fp32 and calib (see that function)."""
    model = onnx.load(str(source))
    done = apply(model, tuple(r for r in rules if r != "convtranspose-inputs"))
    if "convtranspose-inputs" in rules:
        assert fp32 is not None and calib is not None, "convtranspose-inputs needs fp32 and calib"
        done["convtranspose-inputs"] = convtranspose_inputs(model, fp32, calib)
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return done


def main() -> int:
    parser = argparse.ArgumentParser(description="quantcli static output -> OpenVINO placement, by rule")
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--rules", default="openvino", help=f"'openvino' or a comma list of {sorted(RULES)}")
    parser.add_argument(
        "--fp32", type=Path, help="the float model (convtranspose-inputs measures ranges on it)"
    )
    parser.add_argument("--calib", type=Path, help="folder of one-sample .npz files (convtranspose-inputs)")
    args = parser.parse_args()
    words = [r for r in args.rules.split(",") if r]
    rules = tuple(item for word in words for item in (OPENVINO if word == "openvino" else (word,)))
    unknown = [r for r in rules if r not in RULES and r != "convtranspose-inputs"]
    if unknown:
        parser.error(f"unknown rules {unknown}; valid: {sorted(RULES)}, convtranspose-inputs")
    if "convtranspose-inputs" in rules and (args.fp32 is None or args.calib is None):
        parser.error("convtranspose-inputs needs --fp32 MODEL and --calib DIR")
    print(rewrite(args.source, args.target, rules, fp32=args.fp32, calib=args.calib))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
