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
    CalibrationMethod,
    GateMetric,
    QuantMode,
    SpeedSource,
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


def flag(name: str, help_text: str, panel: str, *aliases: str, hidden: bool = False) -> Any:
    """A boolean flag, off unless given (no ``<bool>`` metavar, no default shown)."""
    return typer.Option(
        name, *aliases, help=help_text, metavar="", rich_help_panel=panel, show_default=False, hidden=hidden
    )


def path(name: str, help_text: str, panel: str, *aliases: str) -> Any:
    return typer.Option(
        name, *aliases, help=help_text, metavar="PATH", rich_help_panel=panel, show_default=False
    )


ModelArg = Annotated[Path, typer.Argument(help="fp32 ONNX model.", show_default=False, metavar="MODEL")]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        "-d",
        help=".npz file (arrays keyed by input name, axis 0 = samples), a folder of .npz/.npy files, "
        "or a folder of images (see --preprocess).",
        metavar="PATH",
        rich_help_panel=INPUT,
        show_default=False,
    ),
]
PreprocessOpt = Annotated[
    str | None,
    typer.Option(
        "--preprocess",
        help="How images in a --data folder become the input, e.g. "
        "'resize=224,224;layout=nchw;scale=1/255;mean=0.485,0.456,0.406;std=0.229,0.224,0.225;channels=rgb' "
        "(resize is HEIGHT,WIDTH; defaults: the model's size, layout from its shape, scale 1/255, rgb).",
        metavar="SPEC",
        rich_help_panel=INPUT,
        show_default=False,
    ),
]
LoaderOpt = Annotated[
    str | None,
    typer.Option(
        "--data-loader",
        help="package.module:function returning an iterable of {input name: array} dicts, instead of "
        "--data. This runs your code.",
        metavar="MODULE:FUNCTION",
        rich_help_panel=INPUT,
        show_default=False,
    ),
]
EvalDataOpt = Annotated[
    Path | None,
    typer.Option(
        "--eval-data",
        "-e",
        help="Evaluation data." + default("the last 20% of --data, held back"),
        metavar="PATH",
        rich_help_panel=INPUT,
        show_default=False,
    ),
]
LabelsOpt = Annotated[
    Path | None,
    typer.Option(
        "--labels",
        help=".npy of integer labels for the evaluation samples.",
        metavar="PATH",
        rich_help_panel=INPUT,
        show_default=False,
    ),
]
BatchOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        help="Samples per onnxruntime run when the batch axis is dynamic." + default(16),
        min=1,
        metavar="N",
        rich_help_panel=INPUT,
        show_default=False,
    ),
]
MaxSamplesOpt = Annotated[
    int | None,
    typer.Option(
        "--max-samples",
        help="Use at most this many calibration samples." + default("all"),
        min=1,
        metavar="N",
        rich_help_panel=INPUT,
        show_default=False,
    ),
]
SkipNonfiniteOpt = Annotated[
    bool,
    typer.Option(
        "--skip-nonfinite",
        help="Skip samples holding NaN or Inf (and log how many) instead of failing.",
        metavar="",
        rich_help_panel=INPUT,
        show_default=False,
    ),
]
SeedOpt = Annotated[
    int | None,
    typer.Option(
        "--seed",
        help="Shuffle samples with this seed before --max-samples/--shard pick them." + default("file order"),
        metavar="N",
        rich_help_panel=INPUT,
        show_default=False,
    ),
]
ModeOpt = Annotated[
    QuantMode | None,
    typer.Option(
        "--mode",
        "-m",
        metavar="MODE",
        help="auto: build each mode below, keep the fastest within the accuracy bound (1 point unless "
        "given); with no evaluation data a fixed rule; a calibration file's recorded decision is "
        "replayed. static: calibrated integer kernels. dynamic: MatMul/Gemm inputs quantized at run "
        "time, no data needed. mixed: dynamic MatMul/Gemm, static rest. weight-only: int8 storage, "
        "float compute." + default("auto"),
        rich_help_panel=MODE,
        show_default=False,
    ),
]
MethodOpt = Annotated[
    CalibrationMethod | None,
    typer.Option(
        "--method",
        metavar="METHOD",
        help="Activation ranges: minmax, percentile, entropy (KL) or mse."
        + default("the calibration file's, else minmax"),
        rich_help_panel=MODE,
        show_default=False,
    ),
]
PercentileOpt = Annotated[
    float | None,
    typer.Option(
        "--percentile",
        help="Percent of values the percentile method keeps in range." + default(99.99),
        metavar="P",
        rich_help_panel=MODE,
        show_default=False,
    ),
]
WeightMethodOpt = Annotated[
    WeightMethod | None,
    typer.Option(
        "--weight-method",
        metavar="METHOD",
        help="Weight channel ranges: minmax or mse." + default("minmax"),
        rich_help_panel=MODE,
        show_default=False,
    ),
]
MetricOpt = Annotated[
    GateMetric | None,
    typer.Option(
        "--metric",
        metavar="METRIC",
        help="What the gate measures: accuracy (vs --labels), top1 (arg-max agreement), "
        "cosine (100 x (1 - mean cosine)), sqnr (worst output SQNR, bounded by --min-sqnr), "
        "channel-sqnr (per-channel SQNR averaged in dB, bounded by --min-sqnr). auto: accuracy with "
        "--labels, else cosine under --max-drop; with no bound, auto mode chooses by channel-sqnr >= "
        "15 dB." + default("auto"),
        rich_help_panel=GATE,
        show_default=False,
    ),
]
MaxDropOpt = Annotated[
    float | None,
    typer.Option(
        "--max-drop",
        help="Fail (exit 3) if the quantized model loses more than this, in points of --metric "
        "(the model and report are still written)." + default("no gate"),
        min=0.0,
        metavar="POINTS",
        rich_help_panel=GATE,
        show_default=False,
    ),
]
MinSqnrOpt = Annotated[
    float | None,
    typer.Option(
        "--min-sqnr",
        help="Fail (exit 3) unless the worst output's SQNR (--metric sqnr, the default with this "
        "flag, or channel-sqnr) reaches DB." + default("no gate"),
        metavar="DB",
        rich_help_panel=GATE,
        show_default=False,
    ),
]
PerLayerOpt = Annotated[
    bool,
    typer.Option(
        "--per-layer",
        help="Rank every quantized tensor by SQNR against its float twin; show the worst.",
        metavar="",
        rich_help_panel=DIAGNOSIS,
        show_default=False,
    ),
]
TopKOpt = Annotated[
    int | None,
    typer.Option(
        "--top-k",
        help="How many of the worst tensors to measure alone and show." + default(10),
        min=1,
        metavar="K",
        rich_help_panel=DIAGNOSIS,
        show_default=False,
    ),
]
WriteExcludeOpt = Annotated[
    Path | None,
    typer.Option(
        "--write-exclude",
        help="With --per-layer: write the nodes behind the worst tensors, for --exclude @FILE.",
        metavar="PATH",
        rich_help_panel=DIAGNOSIS,
        show_default=False,
    ),
]
ReportOpt = Annotated[
    Path | None,
    typer.Option(
        "--report",
        help="Also write the report as JSON to this file.",
        metavar="PATH",
        rich_help_panel=OUTPUT,
        show_default=False,
    ),
]
ReportMdOpt = Annotated[
    Path | None,
    typer.Option(
        "--report-md",
        help="Also write a compact Markdown summary (CI page, PR comment).",
        metavar="PATH",
        rich_help_panel=OUTPUT,
        show_default=False,
    ),
]
ReportHtmlOpt = Annotated[
    Path | None,
    typer.Option(
        "--report-html",
        help="Also write one self-contained HTML page with a per-layer SQNR chart.",
        metavar="PATH",
        rich_help_panel=OUTPUT,
        show_default=False,
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print exactly one JSON document on stdout; nothing else.",
        metavar="",
        rich_help_panel=OUTPUT,
        show_default=False,
    ),
]
QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="No tables or progress on stderr; only errors and a failed gate's one line.",
        metavar="",
        rich_help_panel=OUTPUT,
        show_default=False,
    ),
]
DebugOpt = Annotated[
    bool,
    typer.Option(
        "--debug",
        help="Show tracebacks of internal errors.",
        metavar="",
        rich_help_panel=OUTPUT,
        show_default=False,
    ),
]
ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force",
        "-f",
        help="Replace an existing output file.",
        metavar="",
        rich_help_panel=OUTPUT,
        show_default=False,
    ),
]


RayOpt = Annotated[
    bool,
    typer.Option(
        "--ray",
        help="Run the calibration pass as Ray tasks, one per shard of the samples (needs "
        "'quantcli\\[ray]'; the model and data must be at the same path on every node).",
        metavar="",
        rich_help_panel=DISTRIBUTED,
        show_default=False,
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="With --ray: the cluster." + default("$RAY_ADDRESS, else a local Ray started for this run"),
        metavar="ADDRESS",
        rich_help_panel=DISTRIBUTED,
        show_default=False,
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        help="With --ray: Ray tasks the samples are split into." + default("the cluster's CPUs"),
        min=1,
        metavar="N",
        rich_help_panel=DISTRIBUTED,
        show_default=False,
    ),
]
WorkerCpusOpt = Annotated[
    int,
    typer.Option(
        "--worker-cpus",
        help="With --ray: CPUs per task, and onnxruntime's threads in it." + default(1),
        min=1,
        metavar="C",
        rich_help_panel=DISTRIBUTED,
        show_default=False,
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

ActivationTypeOpt = Annotated[
    ActivationType | None,
    typer.Option(
        "--activation-type",
        metavar="TYPE",
        help="uint8 (asymmetric) or int8 (symmetric)." + default("uint8"),
        rich_help_panel=MODE,
        show_default=False,
    ),
]

PerTensorOpt = Annotated[
    bool, flag("--per-tensor", "One weight scale per tensor instead of per channel.", MODE)
]

ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude",
        "-x",
        help="Keep in float: a node name, a glob over node names, an op type, or @FILE (one per "
        "line, # comments). Repeatable.",
        metavar="PATTERN",
        rich_help_panel=MODE,
        show_default=False,
    ),
]

IncludeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--include",
        help="Quantize only these (name, glob, op type or @FILE). Repeatable.",
        metavar="PATTERN",
        rich_help_panel=MODE,
        show_default=False,
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
    typer.Option(
        "--max-trials",
        help="Models --auto-fallback may build and measure." + default(8),
        min=1,
        metavar="N",
        rich_help_panel=GATE,
        show_default=False,
    ),
]

SpeedOpt = Annotated[
    SpeedSource | None,
    typer.Option(
        "--speed",
        metavar="HOW",
        help="How auto compares candidates' speed: predicted (cost model, reproducible) "
        "or measured (timed on this machine; can change with machine load)." + default("predicted"),
        rich_help_panel=MODE,
        show_default=False,
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
    typer.Option(
        "--workers",
        help="Models converted at once here (1: one after another)." + default("one per CPU"),
        min=1,
        metavar="N",
        rich_help_panel=DISTRIBUTED,
        show_default=False,
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
    typer.Option(
        "--threads",
        help="onnxruntime intra-op threads for both models." + default("onnxruntime's"),
        min=1,
        metavar="N",
        rich_help_panel=INPUT,
        show_default=False,
    ),
]

RunsOpt = Annotated[
    int,
    typer.Option(
        "--runs",
        help="Timed runs per model, after warm-up." + default(30),
        min=1,
        metavar="N",
        rich_help_panel=INPUT,
        show_default=False,
    ),
]

CompareMetricOpt = Annotated[
    GateMetric,
    typer.Option(
        "--metric",
        metavar="METRIC",
        help="What the gate measures: auto, accuracy, top1, cosine, sqnr or channel-sqnr, as for convert."
        + default("auto"),
        rich_help_panel=GATE,
        show_default=False,
    ),
]

ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--shard",
        help="K/N: observe only the K-th of N disjoint parts of the samples." + default("all"),
        metavar="K/N",
        rich_help_panel=INPUT,
        show_default=False,
    ),
]

RecordedMethodOpt = Annotated[
    CalibrationMethod | None,
    typer.Option(
        "--method",
        metavar="METHOD",
        help="Method convert uses by default with this file: minmax, percentile, entropy or mse."
        + default("minmax"),
        rich_help_panel=MODE,
        show_default=False,
    ),
]

ChoiceMaxDropOpt = Annotated[
    float | None,
    typer.Option(
        "--max-drop",
        help="The bound --mode auto chooses within, in points of --metric." + default(1),
        min=0.0,
        metavar="POINTS",
        rich_help_panel=GATE,
        show_default=False,
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
    typer.Option("--exclude", "-x", help="As for convert.", metavar="PATTERN", show_default=False),
]

InspectIncludeOpt = Annotated[
    list[str] | None,
    typer.Option("--include", help="As for convert.", metavar="PATTERN", show_default=False),
]

InspectRecipeOpt = Annotated[
    Path | None, typer.Option("--recipe", help="As for convert.", metavar="PATH", show_default=False)
]

InspectModeOpt = Annotated[
    QuantMode | None,
    typer.Option(
        "--mode",
        "-m",
        metavar="MODE",
        help="The plan of this mode: static, dynamic, mixed, weight-only, or auto (the static plan, or "
        "--calibration's)." + default("auto"),
        show_default=False,
    ),
]

InspectCalibrationOpt = Annotated[
    Path | None,
    typer.Option(
        "--calibration",
        "-c",
        help="Show the mode decision this calibration file records.",
        metavar="PATH",
        show_default=False,
    ),
]

VersionOpt = Annotated[
    bool, typer.Option("--version", help="Print the version and exit.", metavar="", show_default=False)
]
