#!/usr/bin/env bash
# Time quantcli's --target tensorrt output with trtexec on a machine with TensorRT (docs/tensorrt.md).
#
#   bench/tensorrt.sh                              # the bundled sample models
#   bench/tensorrt.sh MODEL.onnx:CALIB [...]       # other models, each with its calibration data
#   ITERATIONS=2000 bench/tensorrt.sh              # trtexec --iterations (default 1000)
#
# Per model: quantcli convert --target tensorrt --mode static; trtexec engines for the float model
# (fp32, fp16) and the quantized one (--stronglyTyped on TensorRT >= 10, and --int8 --fp16); the
# median GPU compute time of each. Writes the table to stdout and bench/results/tensorrt.md.
# Not part of CI: no GPU there.
set -euo pipefail

if ! command -v trtexec >/dev/null 2>&1; then
    echo "bench/tensorrt.sh: trtexec not found on PATH (install TensorRT and add its bin/ folder to PATH)" >&2
    exit 1
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
QUANTCLI="${QUANTCLI:-$ROOT/.venv/bin/quantcli}"
ITERATIONS="${ITERATIONS:-1000}"
WORK="$ROOT/bench/_work/tensorrt"
mkdir -p "$WORK"

if [ ! -x "$QUANTCLI" ]; then
    echo "bench/tensorrt.sh: $QUANTCLI not found (run make install)" >&2
    exit 1
fi

# TensorRT's version as trtexec prints it: "[TensorRT v100300]" -> 10.
VERSION="$(trtexec 2>&1 | sed -n 's/.*TensorRT v\([0-9]*\).*/\1/p' | head -n 1)"
MAJOR=$(( ${VERSION:-0} / 10000 ))
[ "$MAJOR" -ge 1 ] || MAJOR=$(( ${VERSION:-0} / 1000 ))  # 8.x prints v8601

if [ "$#" -eq 0 ]; then
    set -- "$ROOT/sample_models/digits_cnn/model.onnx:$ROOT/sample_models/digits_cnn/calib.npz" \
        "$ROOT/sample_models/digits_transformer/model.onnx:$ROOT/sample_models/digits_transformer/calib.npz"
fi

# --shapes for trtexec: every input at its own shape, a named (dynamic) dimension set to 1.
shapes() {
    "$PY" - "$1" <<'EOF'
import sys

import onnx

model = onnx.load(sys.argv[1], load_external_data=False)
inits = {t.name for t in model.graph.initializer}
parts = []
for value in model.graph.input:
    if value.name in inits:
        continue
    dims = [str(d.dim_value) if d.HasField("dim_value") else "1" for d in value.type.tensor_type.shape.dim]
    parts.append(f"{value.name}:{'x'.join(dims) or '1'}")
print(",".join(parts))
EOF
}

# The median GPU compute time (ms) of one engine build + timing run.
time_engine() {
    local onnx="$1" log="$2"
    shift 2
    trtexec --onnx="$onnx" --shapes="$(shapes "$onnx")" --iterations="$ITERATIONS" --warmUp=500 \
        --duration=0 --useSpinWait "$@" >"$log" 2>&1 || { echo "failed (see $log)"; return; }
    sed -n 's/.*GPU Compute Time: .*median = \([0-9.]*\) ms.*/\1/p' "$log" | tail -n 1
}

TABLE="| model | fp32 (ms) | fp16 (ms) | int8 strongly typed (ms) | int8 + fp16 (ms) |
|---|---:|---:|---:|---:|"
for pair in "$@"; do
    model="${pair%%:*}"
    data="${pair#*:}"
    name="$(basename "$(dirname "$model")")"
    out="$WORK/$name.tensorrt.onnx"
    "$QUANTCLI" convert "$model" -o "$out" --data "$data" --target tensorrt --mode static --force \
        --quiet --report "$WORK/$name.report.json" >/dev/null
    fp32="$(time_engine "$model" "$WORK/$name.fp32.log")"
    fp16="$(time_engine "$model" "$WORK/$name.fp16.log" --fp16)"
    if [ "$MAJOR" -ge 10 ]; then
        typed="$(time_engine "$out" "$WORK/$name.int8-typed.log" --stronglyTyped)"
    else
        typed="n/a (TensorRT $MAJOR)"
    fi
    mixed="$(time_engine "$out" "$WORK/$name.int8-fp16.log" --int8 --fp16)"
    TABLE="$TABLE
| $name | $fp32 | $fp16 | $typed | $mixed |"
done

GPU="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)"
BODY="## TensorRT (bench/tensorrt.sh)

\`bench/tensorrt.sh\`: quantcli \`convert --target tensorrt --mode static\`, engines built and timed by
trtexec (TensorRT ${VERSION:-unknown}, ${GPU:-GPU unknown}), median GPU compute time of
--iterations=$ITERATIONS after 500 ms of warm-up, batch 1. Rules: docs/tensorrt.md.

$TABLE"
echo "$BODY"
cd "$ROOT/bench" && "$PY" -c 'import sys; from _results import write_section; write_section("tensorrt", sys.stdin.read(), [])' <<<"$BODY"
