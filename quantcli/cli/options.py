"""The command line's options: one Annotated alias per option, shared by every command that
takes it, so a flag's name, help text, panel and default look the same wherever it appears.

Only typer and the config's enums are imported here: ``quantcli --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from quantcli.config import (
    ActivationType,
    BlockMethod,
    CalibrationMethod,
    GateMetric,
    QuantMode,
    SpeedSource,
    TargetName,
    WeightMethod,
)

# Help panels, in the order a user meets them.
INPUT = "Input and data"
MODE = "Mode and precision"
GATE = "Accuracy gate"
DIAGNOSIS = "Diagnosis"
OUTPUT = "Output"
DISTRIBUTED = "More than one machine"


def default(value: object) -> str:
    """Every default in help looks the same, Typer's own style (show_default is off
    everywhere: a flag left at None defers to a recipe, so Typer cannot know the default)."""
    return f" [dim]\\[default: {value}][/dim]"


def option(
    *names: str,
    help: str,  # typer's own name for it
    metavar: str,
    panel: str | None = None,
    low: float | None = None,
    hidden: bool = False,
) -> Any:
    """An option as every one here is declared: its default shown by :func:`default` in the help
    text (never by Typer), in its help panel; ``low``: the least value a number may take."""
    return typer.Option(
        *names, help=help, metavar=metavar, rich_help_panel=panel, min=low, hidden=hidden, show_default=False
    )


def flag(name: str, help_text: str, panel: str, *aliases: str, hidden: bool = False) -> Any:
    """A boolean flag, off unless given (no ``<bool>`` metavar, no default shown)."""
    return option(name, *aliases, help=help_text, metavar="", panel=panel, hidden=hidden)


def path(name: str, help_text: str, panel: str, *aliases: str) -> Any:
    return option(name, *aliases, help=help_text, metavar="PATH", panel=panel)


ModelArg = Annotated[Path, typer.Argument(help="fp32 ONNX model.", show_default=False, metavar="MODEL")]
DataOpt = Annotated[
    Path | None,
    option(
        "--data",
        "-d",
        help=".npz file (arrays keyed by input name, axis 0 = samples), a folder of .npz/.npy files, "
        "or a folder of images (see --preprocess).",
        metavar="PATH",
        panel=INPUT,
    ),
]
PreprocessOpt = Annotated[
    str | None,
    option(
        "--preprocess",
        help="How images in a --data folder become the input, e.g. "
        "'resize=224,224;layout=nchw;scale=1/255;mean=0.485,0.456,0.406;std=0.229,0.224,0.225;channels=rgb' "
        "(resize is HEIGHT,WIDTH; defaults: the model's size, layout from its shape, scale 1/255, rgb).",
        metavar="SPEC",
        panel=INPUT,
    ),
]
LoaderOpt = Annotated[
    str | None,
    option(
        "--data-loader",
        help="package.module:function returning an iterable of {input name: array} dicts, instead of "
        "--data. This runs your code.",
        metavar="MODULE:FUNCTION",
        panel=INPUT,
    ),
]
EvalDataOpt = Annotated[
    Path | None,
    option(
        "--eval-data",
        "-e",
        help="Evaluation data." + default("the last 20% of --data, held back"),
        metavar="PATH",
        panel=INPUT,
    ),
]
LabelsOpt = Annotated[
    Path | None,
    option(
        "--labels", help=".npy of integer labels for the evaluation samples.", metavar="PATH", panel=INPUT
    ),
]
BatchOpt = Annotated[
    int | None,
    option(
        "--batch-size",
        help="Samples per onnxruntime run when the batch axis is dynamic." + default(16),
        metavar="N",
        panel=INPUT,
        low=1,
    ),
]
MaxSamplesOpt = Annotated[
    int | None,
    option(
        "--max-samples",
        help="Use at most this many calibration samples." + default("all"),
        metavar="N",
        panel=INPUT,
        low=1,
    ),
]
SkipNonfiniteOpt = Annotated[
    bool,
    option(
        "--skip-nonfinite",
        help="Skip samples holding NaN or Inf (and log how many) instead of failing.",
        metavar="",
        panel=INPUT,
    ),
]
SeedOpt = Annotated[
    int | None,
    option(
        "--seed",
        help="Shuffle samples with this seed before --max-samples/--shard pick them." + default("file order"),
        metavar="N",
        panel=INPUT,
    ),
]
ModeOpt = Annotated[
    QuantMode | None,
    option(
        "--mode",
        "-m",
        help="auto: build each mode below, keep the fastest within the accuracy bound (1 point unless "
        "given); with no evaluation data a fixed rule; a calibration file's recorded decision is "
        "replayed. static: calibrated integer kernels. dynamic: MatMul/Gemm inputs quantized at run "
        "time, no data needed. mixed: dynamic MatMul/Gemm, static rest. weight-only: int8 storage, "
        "float compute." + default("auto"),
        metavar="MODE",
        panel=MODE,
    ),
]
MethodOpt = Annotated[
    CalibrationMethod | None,
    option(
        "--method",
        help="Activation ranges: minmax, percentile, entropy (KL) or mse."
        + default("the calibration file's, else minmax"),
        metavar="METHOD",
        panel=MODE,
    ),
]
PercentileOpt = Annotated[
    float | None,
    option(
        "--percentile",
        help="Percent of values the percentile method keeps in range." + default(99.99),
        metavar="P",
        panel=MODE,
    ),
]
WeightMethodOpt = Annotated[
    WeightMethod | None,
    option(
        "--weight-method",
        help="Weight channel ranges: minmax or mse." + default("minmax"),
        metavar="METHOD",
        panel=MODE,
    ),
]
WeightBitsOpt = Annotated[
    int | None,
    option(
        "--weight-bits",
        help="Bits of MatMul/Gemm weights: 8 (int8 per channel) or 4 (blocks along the reduction axis, "
        "written as MatMulNBits; needs --mode weight-only, or dynamic for int8 compute)." + default(8),
        metavar="BITS",
        panel=MODE,
    ),
]
BlockSizeOpt = Annotated[
    int | None,
    option(
        "--block-size",
        help="Values per block of a 4-bit weight: 16, 32, 64 or 128." + default(32),
        metavar="N",
        panel=MODE,
    ),
]
WeightSymmetricOpt = Annotated[
    bool | None,
    option(
        "--weight-symmetric/--weight-asymmetric",
        help="4-bit blocks without a zero point, or with one per block." + default("symmetric"),
        metavar="",
        panel=MODE,
    ),
]
BlockMethodOpt = Annotated[
    BlockMethod | None,
    option(
        "--block-method",
        help="Rounding of 4-bit weights: rtn, hqq, gptq, awq or awq+gptq (gptq and awq observe --data)."
        + default("rtn"),
        metavar="METHOD",
        panel=MODE,
    ),
]
MetricOpt = Annotated[
    GateMetric | None,
    option(
        "--metric",
        help="What the gate measures: accuracy (vs --labels), top1 (arg-max agreement), "
        "cosine (100 x (1 - mean cosine)), sqnr (worst output SQNR, bounded by --min-sqnr), "
        "channel-sqnr (per-channel SQNR averaged in dB, bounded by --min-sqnr). auto: accuracy with "
        "--labels, else cosine under --max-drop; with no bound, auto mode chooses by channel-sqnr >= "
        "15 dB." + default("auto"),
        metavar="METRIC",
        panel=GATE,
    ),
]
MaxDropOpt = Annotated[
    float | None,
    option(
        "--max-drop",
        help="Fail (exit 3) if the quantized model loses more than this, in points of --metric "
        "(the model and report are still written)." + default("no gate"),
        metavar="POINTS",
        panel=GATE,
        low=0.0,
    ),
]
MinSqnrOpt = Annotated[
    float | None,
    option(
        "--min-sqnr",
        help="Fail (exit 3) unless the worst output's SQNR (--metric sqnr, the default with this "
        "flag, or channel-sqnr) reaches DB." + default("no gate"),
        metavar="DB",
        panel=GATE,
    ),
]
PerLayerOpt = Annotated[
    bool,
    option(
        "--per-layer",
        help="Rank every quantized tensor by SQNR against its float twin; show the worst.",
        metavar="",
        panel=DIAGNOSIS,
    ),
]
TopKOpt = Annotated[
    int | None,
    option(
        "--top-k",
        help="How many of the worst tensors to measure alone and show." + default(10),
        metavar="K",
        panel=DIAGNOSIS,
        low=1,
    ),
]
WriteExcludeOpt = Annotated[
    Path | None,
    option(
        "--write-exclude",
        help="With --per-layer: write the nodes behind the worst tensors, for --exclude @FILE.",
        metavar="PATH",
        panel=DIAGNOSIS,
    ),
]
ReportOpt = Annotated[
    Path | None,
    option("--report", help="Also write the report as JSON to this file.", metavar="PATH", panel=OUTPUT),
]
ReportMdOpt = Annotated[
    Path | None,
    option(
        "--report-md",
        help="Also write a compact Markdown summary (CI page, PR comment).",
        metavar="PATH",
        panel=OUTPUT,
    ),
]
ReportHtmlOpt = Annotated[
    Path | None,
    option(
        "--report-html",
        help="Also write one self-contained HTML page with a per-layer SQNR chart.",
        metavar="PATH",
        panel=OUTPUT,
    ),
]
JsonOpt = Annotated[
    bool,
    option(
        "--json", help="Print exactly one JSON document on stdout; nothing else.", metavar="", panel=OUTPUT
    ),
]
QuietOpt = Annotated[
    bool,
    option(
        "--quiet",
        "-q",
        help="No tables or progress on stderr; only errors and a failed gate's one line.",
        metavar="",
        panel=OUTPUT,
    ),
]
DebugOpt = Annotated[
    bool,
    option("--debug", help="Show tracebacks of internal errors.", metavar="", panel=OUTPUT),
]
ForceOpt = Annotated[
    bool,
    option("--force", "-f", help="Replace an existing output file.", metavar="", panel=OUTPUT),
]


RayOpt = Annotated[
    bool,
    option(
        "--ray",
        help="Run the calibration pass as Ray tasks, one per shard of the samples (needs "
        "'quantcli\\[ray]'; the model and data must be at the same path on every node).",
        metavar="",
        panel=DISTRIBUTED,
    ),
]
RayAddressOpt = Annotated[
    str | None,
    option(
        "--ray-address",
        help="With --ray: the cluster." + default("$RAY_ADDRESS, else a local Ray started for this run"),
        metavar="ADDRESS",
        panel=DISTRIBUTED,
    ),
]
WorkersOpt = Annotated[
    int | None,
    option(
        "--workers",
        help="With --ray: Ray tasks the samples are split into, and (convert) search builds run at once."
        + default("the cluster's CPUs"),
        metavar="N",
        panel=DISTRIBUTED,
        low=1,
    ),
]
WorkerCpusOpt = Annotated[
    int,
    option(
        "--worker-cpus",
        help="With --ray: CPUs per task, and onnxruntime's threads in it." + default(1),
        metavar="C",
        panel=DISTRIBUTED,
        low=1,
    ),
]

CalibrationOpt = Annotated[
    Path | None,
    path("--calibration", "Calibration file from 'quantcli calibrate' (instead of --data).", INPUT, "-c"),
]

FromReportOpt = Annotated[
    Path | None,
    path(
        "--from-report",
        "Rerun the settings a JSON report records (its config, in the mode it wrote); flags win.",
        INPUT,
    ),
]

RecipeOpt = Annotated[
    Path | None,
    path("--recipe", "TOML recipe: \\[defaults] and \\[\\[override]] tables (flags win over it).", MODE),
]

TargetOpt = Annotated[
    TargetName | None,
    option(
        "--target",
        help="The runtime that will run the model: ort-cpu (onnxruntime's CPU provider), openvino "
        "(its CPU plugin) or tensorrt; openvino and tensorrt write zero points of 0 only and pick "
        "each activation's type themselves." + default("ort-cpu"),
        metavar="TARGET",
        panel=MODE,
    ),
]

CompareTargetOpt = Annotated[
    TargetName,
    option(
        "--target",
        help="The runtime both models run and are timed on: ort-cpu (onnxruntime's CPU provider), "
        "openvino (OpenVINO's CPU plugin, f32 float layers; pip install 'quantcli[openvino]') or "
        "tensorrt (checked on onnxruntime's CPU provider: no GPU is assumed)." + default("ort-cpu"),
        metavar="TARGET",
        panel=INPUT,
    ),
]

ActivationTypeOpt = Annotated[
    ActivationType | None,
    option(
        "--activation-type",
        help="uint8 (asymmetric) or int8 (symmetric)." + default("uint8"),
        metavar="TYPE",
        panel=MODE,
    ),
]

PerTensorOpt = Annotated[
    bool, flag("--per-tensor", "One weight scale per tensor instead of per channel.", MODE)
]

ExcludeOpt = Annotated[
    list[str] | None,
    option(
        "--exclude",
        "-x",
        help="Keep in float: a node name, a glob over node names, an op type, or @FILE (one per "
        "line, # comments). Repeatable.",
        metavar="PATTERN",
        panel=MODE,
    ),
]

IncludeOpt = Annotated[
    list[str] | None,
    option(
        "--include",
        help="Quantize only these (name, glob, op type or @FILE). Repeatable.",
        metavar="PATTERN",
        panel=MODE,
    ),
]

BiasCorrectionOpt = Annotated[
    bool,
    flag(
        "--bias-correction",
        "Subtract from each int8 Conv's bias the mean shift quantization adds (measured on --data).",
        MODE,
    ),
]

AllowNoopOpt = Annotated[
    bool, flag("--allow-noop", "Write a model with nothing to quantize unchanged (exit 0).", MODE)
]

AutoFallbackOpt = Annotated[
    bool,
    flag(
        "--auto-fallback",
        "If the gate fails, return the most harmful nodes to float a few at a time until it passes.",
        GATE,
    ),
]

AutoAliasOpt = Annotated[
    bool, flag("--auto", "Old spelling of --auto-fallback (not --mode auto).", GATE, hidden=True)
]

MaxTrialsOpt = Annotated[
    int | None,
    option(
        "--max-trials",
        help="Models --auto-fallback may build and measure." + default(8),
        metavar="N",
        panel=GATE,
        low=1,
    ),
]

SpeedOpt = Annotated[
    SpeedSource | None,
    option(
        "--speed",
        help="How auto compares candidates' speed: predicted (cost model, reproducible) "
        "or measured (timed on this machine; can change with machine load)." + default("predicted"),
        metavar="HOW",
        panel=MODE,
    ),
]

ModelOutputOpt = Annotated[Path, path("--output", "Where to write the int8 model.", OUTPUT, "-o")]

ModelsArg = Annotated[
    list[Path],
    typer.Argument(
        help="Model files, folders of them, or one TOML manifest with per-model data, recipe and gate.",
        show_default=False,
        metavar="MODELS...",
    ),
]

ManyDataOpt = Annotated[
    Path | None, path("--data", "Calibration data for every model (as for convert).", INPUT, "-d")
]

ManyRecipeOpt = Annotated[Path | None, path("--recipe", "TOML recipe for every model.", MODE)]

PoolWorkersOpt = Annotated[
    int | None,
    option(
        "--workers",
        help="Models converted at once here (1: one after another)." + default("one per CPU"),
        metavar="N",
        panel=DISTRIBUTED,
        low=1,
    ),
]

ManyRayOpt = Annotated[
    bool, flag("--ray", "Convert each model as a Ray task (needs 'quantcli\\[ray]').", DISTRIBUTED)
]

OutputDirOpt = Annotated[
    Path, path("--output-dir", "Folder for NAME.int8.onnx and NAME.report.json.", OUTPUT, "-o")
]

FloatModelArg = Annotated[
    Path, typer.Argument(help="The fp32 ONNX model.", show_default=False, metavar="FLOAT_MODEL")
]

QuantizedModelArg = Annotated[
    Path, typer.Argument(help="Its quantized version.", show_default=False, metavar="QUANTIZED_MODEL")
]

EvalSamplesOpt = Annotated[Path, path("--data", "Evaluation samples (.npz or folder).", INPUT, "-d")]

ThreadsOpt = Annotated[
    int | None,
    option(
        "--threads",
        help="Inference threads for both models (onnxruntime's intra-op threads, OpenVINO's "
        "INFERENCE_NUM_THREADS)." + default("onnxruntime's; 1 on OpenVINO"),
        metavar="N",
        panel=INPUT,
        low=1,
    ),
]

RunsOpt = Annotated[
    int,
    option(
        "--runs", help="Timed runs per model, after warm-up." + default(30), metavar="N", panel=INPUT, low=1
    ),
]

CompareMetricOpt = Annotated[
    GateMetric,
    option(
        "--metric",
        help="What the gate measures: auto, accuracy, top1, cosine, sqnr or channel-sqnr, as for convert."
        + default("auto"),
        metavar="METRIC",
        panel=GATE,
    ),
]

ShardOpt = Annotated[
    str | None,
    option(
        "--shard",
        help="K/N: observe only the K-th of N disjoint parts of the samples." + default("all"),
        metavar="K/N",
        panel=INPUT,
    ),
]

RecordedMethodOpt = Annotated[
    CalibrationMethod | None,
    option(
        "--method",
        help="Method convert uses by default with this file: minmax, percentile, entropy or mse."
        + default("minmax"),
        metavar="METHOD",
        panel=MODE,
    ),
]

ChoiceMaxDropOpt = Annotated[
    float | None,
    option(
        "--max-drop",
        help="The bound --mode auto chooses within, in points of --metric." + default(1),
        metavar="POINTS",
        panel=GATE,
        low=0.0,
    ),
]

CalibrationOutputOpt = Annotated[Path, path("--output", "Calibration file to write (JSON).", OUTPUT, "-o")]

ShardFilesArg = Annotated[
    list[Path],
    typer.Argument(help="Calibration files of disjoint shards.", show_default=False, metavar="FILES..."),
]

MergedOutputOpt = Annotated[Path, path("--output", "Merged calibration file to write.", OUTPUT, "-o")]

InspectExcludeOpt = Annotated[
    list[str] | None,
    option("--exclude", "-x", help="As for convert.", metavar="PATTERN"),
]

InspectIncludeOpt = Annotated[
    list[str] | None,
    option("--include", help="As for convert.", metavar="PATTERN"),
]

InspectRecipeOpt = Annotated[Path | None, option("--recipe", help="As for convert.", metavar="PATH")]

InspectModeOpt = Annotated[
    QuantMode | None,
    option(
        "--mode",
        "-m",
        help="The plan of this mode: static, dynamic, mixed, weight-only, or auto (the static plan, or "
        "--calibration's)." + default("auto"),
        metavar="MODE",
    ),
]

InspectCalibrationOpt = Annotated[
    Path | None,
    option(
        "--calibration", "-c", help="Show the mode decision this calibration file records.", metavar="PATH"
    ),
]

VersionOpt = Annotated[bool, option("--version", help="Print the version and exit.", metavar="")]
