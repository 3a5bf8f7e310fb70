"""Which Conv shape classes OpenVINO's CPU plugin runs faster in int8 than at its float default.

Run: `.benchenv-openvino/bin/python bench/openvino_convs.py [--rounds N] [--classes k3c32s40,...]
[--no-write]`. Writes the `openvino_convs` section of bench/RESULTS.md.

Per class (kernel size, channels, spatial size, groups, activation, activation type), two small
models of the same chain of 4 Convs, each followed by its activation: float, and int8 the way
`quantcli --target openvino` writes it (an activation pair on each Conv input, int8 symmetric
after SiLU / HardSwish, uint8 from 0 after Relu; int8 weights per output channel; no pair on a
Conv output that only its activation reads). Both are timed in one rotating loop at 1 inference
thread (bench/_openvino.timing), so int8 / float is a ratio measured side by side; the float
model runs at the plugin's default inference precision (bf16 on a CPU with AMX). Evidence for
docs/openvino.md ("Where the time goes").

A class is spelled k3c32s40 (3x3, 32 channels in and out, 40x40, SiLU), then optionally `dw`
(depthwise), then `r` (Relu) or `h` (HardSwish: x times HardSigmoid(x)), then `/u0`, `/s0` or
`/u8` (the activation pairs' type and zero point: uint8 from 0, int8 symmetric, uint8 with zero
point 8); default `/s0`, `/u0` after Relu; a final `+o` puts a pair on each Conv's output too, before
its activation (onnxruntime's placement).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import _openvino as ovb
import numpy as np
import onnx
from _results import write_section
from onnx import TensorProto, helper, numpy_helper

DEPTH = 4
DEFAULT = (
    "k1c32s80,k1c64s40,k1c128s20,k1c256s10,"
    "k3c16s80,k3c32s40,k3c64s20,k3c128s10,k3c256s10,"
    "k3c16s80+o,k3c32s40+o,k3c64s40+o,k3c64s20+o,k3c128s10+o,k3c256s10+o,k1c64s40+o,k1c256s10+o,k3c32s40h+o,"
    "k3c32s40/u8,k3c32s40/u0,"
    "k3c32s40h,k1c64s40h,k3c32s40r,k3c64s20r,k3c32s40r/s0,k1c64s40r,"
    "k3c64s20dw,k3c128s20dwr,k5c128s20dwr,"
    "k1c16s4h,k1c64s12h,k3c32s12dwh,k1c200s6h,k1c64s12r"
)


@dataclass(frozen=True)
class ConvClass:
    spec: str
    kernel: int
    channels: int
    size: int
    groups: int
    activation: str  # silu, relu, hswish
    zero: str  # u0, s0, u8
    output_pair: bool = False  # also a pair on each Conv's output, before its activation


def parse(spec: str) -> ConvClass:
    output_pair = spec.endswith("+o")
    body, _, zero = spec.removesuffix("+o").partition("/")
    activation = {"r": "relu", "h": "hswish"}.get(body[-1], "silu")
    body = body.rstrip("rh")
    depthwise = body.endswith("dw")
    kernel, rest = body.removesuffix("dw")[1:].split("c")
    channels, size = rest.split("s")
    zero = zero or ("u0" if activation == "relu" else "s0")
    groups = int(channels) if depthwise else 1
    return ConvClass(spec, int(kernel), int(channels), int(size), groups, activation, zero, output_pair)


def _zero(kind: str) -> np.ndarray:
    return np.array(int(kind[1:]), np.uint8 if kind[0] == "u" else np.int8)


def _activation(kind: str, x: str, out: str) -> list[onnx.NodeProto]:
    if kind == "relu":
        return [helper.make_node("Relu", [x], [out])]
    gate = (
        helper.make_node("HardSigmoid", [x], [f"{out}_gate"], alpha=1 / 6, beta=0.5)
        if kind == "hswish"
        else helper.make_node("Sigmoid", [x], [f"{out}_gate"])
    )
    return [gate, helper.make_node("Mul", [x, f"{out}_gate"], [out])]


def _weight(c: ConvClass, i: int, w: np.ndarray, quantized: bool) -> tuple[list, list[onnx.TensorProto]]:
    """The weight of Conv i: a float initializer, or int8 per output channel behind a DequantizeLinear."""
    if not quantized:
        return [], [numpy_helper.from_array(w, f"w{i}")]
    scale = (np.abs(w).reshape(c.channels, -1).max(1) / 127).astype(np.float32)
    stored = np.clip(np.round(w / scale[:, None, None, None]), -127, 127).astype(np.int8)
    tensors = [
        numpy_helper.from_array(stored, f"wq{i}"),
        numpy_helper.from_array(scale, f"ws{i}"),
        numpy_helper.from_array(np.zeros(c.channels, np.int8), f"wz{i}"),
    ]
    return [helper.make_node("DequantizeLinear", [f"wq{i}", f"ws{i}", f"wz{i}"], [f"w{i}"], axis=0)], tensors


def chain(c: ConvClass, quantized: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes: list[onnx.NodeProto] = []
    tensors: list[onnx.TensorProto] = []
    x = "x"
    for i in range(DEPTH):
        if quantized:  # the activation pair on the Conv's input
            scale = numpy_helper.from_array(np.array(0.05, np.float32), f"sa{i}")
            tensors += [scale, numpy_helper.from_array(_zero(c.zero), f"za{i}")]
            nodes += [
                helper.make_node("QuantizeLinear", [x, f"sa{i}", f"za{i}"], [f"q{i}"]),
                helper.make_node("DequantizeLinear", [f"q{i}", f"sa{i}", f"za{i}"], [f"dq{i}"]),
            ]
            x = f"dq{i}"
        w = rng.normal(0, 0.1, (c.channels, c.channels // c.groups, c.kernel, c.kernel)).astype(np.float32)
        weight_nodes, weight_tensors = _weight(c, i, w, quantized)
        nodes += weight_nodes
        tensors += [
            *weight_tensors,
            numpy_helper.from_array(rng.normal(0, 0.1, c.channels).astype(np.float32), f"b{i}"),
        ]
        conv = helper.make_node(
            "Conv",
            [x, f"w{i}", f"b{i}"],
            [f"c{i}"],
            pads=[c.kernel // 2] * 4,
            group=c.groups,
            kernel_shape=[c.kernel] * 2,
        )
        nodes.append(conv)
        if quantized and c.output_pair:  # onnxruntime's form: the Conv writes int8, the activation reads it
            nodes += [
                helper.make_node("QuantizeLinear", [f"c{i}", f"sa{i}", f"za{i}"], [f"cq{i}"]),
                helper.make_node("DequantizeLinear", [f"cq{i}", f"sa{i}", f"za{i}"], [f"cdq{i}"]),
            ]
        nodes += _activation(c.activation, f"cdq{i}" if quantized and c.output_pair else f"c{i}", f"a{i}")
        x = f"a{i}"
    shape = [1, c.channels, c.size, c.size]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)],
        tensors,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@dataclass(frozen=True)
class Row:
    spec: str
    float_ms: float
    int8_ms: float
    ratio: float  # median over rounds of int8 / float in the same round


def measure(c: ConvClass, rounds: int, scratch: Path) -> Row:
    paths = {}
    for label, quantized in (("float", False), ("int8", True)):
        paths[label] = scratch / f"{c.spec.replace('/', '_')}_{label}.onnx"
        onnx.save(chain(c, quantized), str(paths[label]))
    shape = (1, c.channels, c.size, c.size)
    feed = {"x": np.random.default_rng(1).normal(0, 1, shape).astype(np.float32)}
    times = ovb.timing(paths, "float", feed, rounds)
    return Row(c.spec, times["float"].ms, times["int8"].ms, times["int8"].ratio)


def main() -> int:
    parser = argparse.ArgumentParser(description="int8 vs float Conv chains on OpenVINO's CPU plugin")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--classes", default=DEFAULT, help="comma list of classes (see the module doc)")
    parser.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for spec in args.classes.split(","):
            rows.append(measure(parse(spec), args.rounds, Path(scratch)))
            print(f"{spec}: int8 / float {rows[-1].ratio:.2f}", flush=True)
    load_end = os.getloadavg()[0]
    lines = [
        "## Conv classes on OpenVINO's CPU plugin: int8 against its float default "
        "(`bench/openvino_convs.py`)",
        "",
        f"OpenVINO {ovb.ov.get_version().split('-')[0]}, CPU plugin, 1 inference thread; {args.rounds} "
        f"interleaved rounds; 1-min load average {load_start:.1f} at the start, {load_end:.1f} at the end, "
        "on "
        f"{len(os.sched_getaffinity(0))} cores. Each class: a chain of {DEPTH} Convs with their activation,",
        "float (run at the plugin's default precision, bf16 here) and int8 as `--target openvino` writes it.",
        "Class `k3c32s40`: 3x3 kernel, 32 channels, 40x40; `dw` depthwise; activation SiLU, `r` Relu,",
        "`h` HardSwish; `/s0` int8 symmetric, `/u0` uint8 from 0, `/u8` uint8 with zero point 8 (default",
        "`/s0`, `/u0` after Relu); `+o`: a pair on each Conv's output too, before its activation",
        "(docs/openvino.md rule 8). int8 / float below 1: int8 is faster.",
        "",
        "| class | float ms | int8 ms | int8 / float |",
        "|---|---|---|---|",
        *(f"| {r.spec} | {r.float_ms:.3f} | {r.int8_ms:.3f} | {r.ratio:.2f} |" for r in rows),
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("openvino_convs", text, [asdict(r) for r in rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
