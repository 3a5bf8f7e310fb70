"""quantcli's command line. Each command parses flags, builds a config, calls one library
function and renders; exit codes come from :mod:`quantcli.cli.exits`."""

from __future__ import annotations

import json
import logging
import sys
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from quantcli import __version__
from quantcli.calibration.collect import Progress as ProgressCallback
from quantcli.calibration.file import CalibrationFile, merge_calibrations, read_calibration, write_calibration
from quantcli.calibration.sampling import Shard
from quantcli.calibration.sources import DataSource, ImageFolder, Preprocess, UserLoader
from quantcli.cli.exits import ExitCode, guarded
from quantcli.cli.render import (
    render_calibration,
    render_compare,
    render_report,
    render_summary,
)
from quantcli.comparison import compare
from quantcli.config import (
    ActivationType,
    CalibrationMethod,
    GateMetric,
    QuantConfig,
    QuantMode,
    Recipe,
    SpeedSource,
    WeightMethod,
    expand_patterns,
    load_recipe,
)
from quantcli.errors import ConfigError
from quantcli.graph.output import StagedOutput, check_writable
from quantcli.pages import html_report, markdown_report
from quantcli.pipeline import calibrate, inspect_model, quantize
from quantcli.plan import NodeRole

app = typer.Typer(
    name="quantcli",
    help="Post-training int8 quantization of ONNX models (QDQ format for onnxruntime).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ModelArg = Annotated[Path, typer.Argument(help="fp32 ONNX model.", show_default=False)]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        "-d",
        help=".npz file (arrays keyed by input name, axis 0 = samples), a folder of .npz/.npy files, "
        "or a folder of images (see --preprocess).",
    ),
]
PreprocessOpt = Annotated[
    str | None,
    typer.Option(
        "--preprocess",
        help="How images in a --data folder become the input, e.g. "
        "'resize=224,224;layout=nchw;scale=1/255;mean=0.485,0.456,0.406;std=0.229,0.224,0.225;channels=rgb' "
        "(resize is HEIGHT,WIDTH; defaults: the model's size, layout from its shape, scale 1/255, rgb).",
    ),
]
LoaderOpt = Annotated[
    str | None,
    typer.Option(
        "--data-loader",
        help="package.module:function returning an iterable of {input name: array} dicts, instead of "
        "--data. This runs your code.",
    ),
]


def _source(data: Path | None, loader: str | None, preprocess: str | None) -> DataSource | None:
    """The data source the flags name: files, an image folder, or the user's loader."""
    if loader is not None:
        if data is not None:
            raise ConfigError("give --data or --data-loader, not both")
        return UserLoader(loader)
    if preprocess is not None:
        if data is None:
            raise ConfigError("--preprocess describes the images of a --data folder; give --data")
        return ImageFolder(data, Preprocess.parse(preprocess))
    return data


EvalDataOpt = Annotated[
    Path | None,
    typer.Option("--eval-data", "-e", help="Evaluation data; default: hold back 20% of --data."),
]
LabelsOpt = Annotated[
    Path | None, typer.Option("--labels", help=".npy of integer labels for the evaluation samples.")
]
ModeOpt = Annotated[
    QuantMode | None,
    typer.Option(
        "--mode",
        "-m",
        help="auto (default: build each mode below, keep the fastest within --max-drop, default bound "
        "1 point; with no evaluation data a fixed rule, and a calibration file's recorded decision "
        "is replayed), static (calibrated integer kernels), dynamic (MatMul/Gemm inputs quantized at "
        "run time, no data needed), mixed (dynamic MatMul/Gemm + static rest), weight-only (int8 "
        "storage, float compute).",
    ),
]
MetricOpt = Annotated[
    GateMetric | None,
    typer.Option(
        "--metric",
        help="What the gate measures: accuracy (vs --labels), top1 (arg-max agreement), "
        "cosine (100 x (1 - mean cosine)), sqnr (worst output SQNR, bounded by --min-sqnr), "
        "channel-sqnr (per-channel SQNR averaged in dB, bounded by --min-sqnr); auto: accuracy with "
        "--labels, else cosine under --max-drop; with no bound, auto mode chooses by channel-sqnr >= 15 dB.",
    ),
]
MaxDropOpt = Annotated[
    float | None,
    typer.Option(
        "--max-drop",
        help="Accuracy gate in points of --metric: exit 3 if the quantized model loses more "
        "(the model and report are still written).",
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print exactly one JSON document on stdout; nothing else.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No tables or progress on stderr.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Replace an existing output file.")]
BatchOpt = Annotated[
    int, typer.Option("--batch-size", help="Samples per onnxruntime run when the batch axis is dynamic.")
]
MaxSamplesOpt = Annotated[
    int | None, typer.Option("--max-samples", help="Use at most this many calibration samples.")
]
SkipNonfiniteOpt = Annotated[
    bool,
    typer.Option(
        "--skip-nonfinite", help="Skip samples holding NaN or Inf (and log how many) instead of failing."
    ),
]
MethodOpt = Annotated[
    CalibrationMethod | None,
    typer.Option(
        "--method",
        help="Activation ranges: minmax, percentile, entropy (KL) or mse. "
        "Default: the calibration file's method, else minmax.",
        show_default=False,
    ),
]
PercentileOpt = Annotated[
    float | None,
    typer.Option(
        "--percentile", help="Percent of values the percentile method keeps in range [default: 99.99]."
    ),
]
WeightMethodOpt = Annotated[
    WeightMethod | None,
    typer.Option("--weight-method", help="Weight channel ranges: minmax or mse [default: minmax]."),
]
SeedOpt = Annotated[
    int | None,
    typer.Option("--seed", help="Shuffle samples with this seed before --max-samples/--shard pick them."),
]


def _stderr(quiet: bool, as_json: bool) -> Console:
    return Console(stderr=True, quiet=quiet or as_json)


def _progress(console: Console, description: str) -> tuple[Progress | None, ProgressCallback | None]:
    """A progress bar on stderr, only for a person watching a terminal."""
    if console.quiet or not console.is_terminal:
        return None, None
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    task = bar.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return bar, update


def _print_json(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")


ReportMdOpt = Annotated[
    Path | None,
    typer.Option("--report-md", help="Also write a compact Markdown summary (CI page, PR comment)."),
]
ReportHtmlOpt = Annotated[
    Path | None,
    typer.Option(
        "--report-html", help="Also write one self-contained HTML page with a per-layer SQNR chart."
    ),
]
PerLayerOpt = Annotated[
    bool,
    typer.Option(
        "--per-layer", help="Rank every quantized tensor by SQNR against its float twin; show the worst."
    ),
]
TopKOpt = Annotated[
    int, typer.Option("--top-k", help="How many of the worst tensors to measure alone and show.")
]
WriteExcludeOpt = Annotated[
    Path | None,
    typer.Option(
        "--write-exclude",
        help="With --per-layer: write the nodes behind the worst tensors, for --exclude @FILE.",
    ),
]


def _outputs(
    staging: StagedOutput,
    document: dict[str, Any],
    *,
    report: Path | None,
    markdown: Path | None,
    page: Path | None,
) -> None:
    """Stage the report files that were asked for: JSON, Markdown, HTML."""
    if report is not None:
        staging.write_bytes(report, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())
    if markdown is not None:
        staging.write_bytes(markdown, markdown_report(document).encode())
    if page is not None:
        staging.write_bytes(page, html_report(document).encode())


def _config(recipe: Path | None, **flags: Any) -> QuantConfig:
    """Flags over the recipe over the defaults; a flag left at None was not given."""
    loaded = (
        load_recipe(recipe)
        if recipe is not None
        else Recipe(path="", defaults={}, skip=frozenset(), per_tensor=frozenset())
    )
    return loaded.config(**flags)


def _finish(result: Any) -> None:
    if isinstance(result, ExitCode):
        raise typer.Exit(int(result))


@app.command()
def convert(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the int8 model.")],
    data: DataOpt = None,
    data_loader: LoaderOpt = None,
    preprocess: PreprocessOpt = None,
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration", "-c", help="Calibration file from 'quantcli calibrate' (instead of --data)."
        ),
    ] = None,
    eval_data: EvalDataOpt = None,
    labels: LabelsOpt = None,
    recipe: Annotated[
        Path | None,
        typer.Option("--recipe", help="TOML recipe: [defaults] and [[override]] tables (flags win over it)."),
    ] = None,
    activation_type: Annotated[
        ActivationType | None,
        typer.Option("--activation-type", help="uint8 (asymmetric, default) or int8 (symmetric)."),
    ] = None,
    per_tensor: Annotated[
        bool, typer.Option("--per-tensor", help="One weight scale per tensor instead of per channel.")
    ] = False,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            "-x",
            help="Keep in float: a node name, a glob over node names, an op type, or @FILE (one per "
            "line, # comments). Repeatable.",
        ),
    ] = None,
    include: Annotated[
        list[str] | None,
        typer.Option("--include", help="Quantize only these (name, glob, op type or @FILE). Repeatable."),
    ] = None,
    method: MethodOpt = None,
    percentile: PercentileOpt = None,
    weight_method: WeightMethodOpt = None,
    bias_correction: Annotated[
        bool,
        typer.Option(
            "--bias-correction",
            help="Subtract from each int8 Conv's bias the mean shift quantization adds (measured on --data).",
        ),
    ] = False,
    mode: ModeOpt = None,
    metric: MetricOpt = None,
    max_drop: MaxDropOpt = None,
    min_sqnr: Annotated[
        float | None,
        typer.Option(
            "--min-sqnr",
            help="Accuracy gate for --metric sqnr or channel-sqnr: the worst output must reach DB.",
        ),
    ] = None,
    auto_fallback: Annotated[
        bool,
        typer.Option(
            "--auto-fallback",
            "--auto",
            help="If the gate fails, return the most harmful nodes to float a few at a time until it passes.",
        ),
    ] = False,
    max_trials: Annotated[
        int | None,
        typer.Option("--max-trials", help="Models --auto-fallback may build and measure (default 8)."),
    ] = None,
    speed: Annotated[
        SpeedSource | None,
        typer.Option(
            "--speed",
            help="How auto compares candidates' speed: predicted (cost model, reproducible; default) "
            "or measured (timed on this machine; can change with machine load).",
        ),
    ] = None,
    per_layer: PerLayerOpt = False,
    top_k: TopKOpt = 10,
    write_exclude: WriteExcludeOpt = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", help="Samples per onnxruntime run when the batch axis is dynamic (16)."),
    ] = None,
    max_samples: MaxSamplesOpt = None,
    seed: SeedOpt = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write the report as JSON to this file.")
    ] = None,
    report_md: ReportMdOpt = None,
    report_html: ReportHtmlOpt = None,
    skip_nonfinite: SkipNonfiniteOpt = False,
    allow_noop: Annotated[
        bool, typer.Option("--allow-noop", help="Write a model with nothing to quantize unchanged (exit 0).")
    ] = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Quantize MODEL to int8 (QDQ) and report size and fidelity."""
    console = _stderr(quiet, as_json)

    def run() -> ExitCode | None:
        chosen = method
        if chosen is None and calibration is not None:  # flag, the file's choice, the recipe, minmax
            chosen = read_calibration(calibration).method
        config = _config(
            recipe,
            activation_type=activation_type,
            per_channel=False if per_tensor else None,
            batch_size=batch_size,
            max_samples=max_samples,
            exclude=expand_patterns(exclude or ()),
            include=expand_patterns(include or ()) or None,
            skip_nonfinite=skip_nonfinite or None,
            allow_noop=allow_noop or None,
            method=chosen,
            percentile=percentile,
            weight_method=weight_method,
            bias_correction=bias_correction or None,
            seed=seed,
            mode=mode,
            metric=metric,
            max_drop=max_drop,
            min_sqnr=min_sqnr,
            auto_fallback=auto_fallback or None,
            max_trials=max_trials,
            speed=speed,
            per_layer=per_layer or write_exclude is not None or report_html is not None or None,
            top_k=top_k,
        )
        for path in (report, report_md, report_html, write_exclude):
            if path is not None:
                check_writable(path, force=force)
        bar, update = _progress(console, "calibrating")
        # The model and the report files are moved into place together, or none is.
        with StagedOutput(force=force) as staging:
            with bar or nullcontext():
                result = quantize(
                    model,
                    output,
                    config=config,
                    data=_source(data, data_loader, preprocess),
                    calibration=calibration,
                    eval_data=_source(eval_data, None, preprocess) if eval_data is not None else None,
                    labels=labels,
                    force=force,
                    progress=update,
                    staging=staging,
                )
            document = result.report.to_dict()
            _outputs(staging, document, report=report, markdown=report_md, page=report_html)
            if write_exclude is not None and result.report.per_layer is not None:
                staging.write_bytes(write_exclude, result.report.per_layer.exclude_file().encode())
            staging.commit()
        if as_json:
            _print_json(document)
        else:
            render_report(result.report, console)
        gate = result.report.gate
        return ExitCode.GATE_FAILED if gate is not None and not gate.passed else None

    _finish(guarded(run, console, debug=debug))


@app.command("compare")
def compare_command(
    float_model: Annotated[Path, typer.Argument(help="The fp32 ONNX model.", show_default=False)],
    quantized_model: Annotated[Path, typer.Argument(help="Its quantized version.", show_default=False)],
    data: Annotated[Path, typer.Option("--data", "-d", help="Evaluation samples (.npz or folder).")],
    labels: Annotated[
        Path | None, typer.Option("--labels", help=".npy of integer labels for the samples.")
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", help="onnxruntime intra-op threads for both models.")
    ] = None,
    runs: Annotated[int, typer.Option("--runs", help="Timed runs per model, after warm-up.")] = 30,
    per_layer: PerLayerOpt = False,
    top_k: TopKOpt = 10,
    write_exclude: WriteExcludeOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per onnxruntime run.")] = 16,
    report: Annotated[Path | None, typer.Option("--report", help="Also write the JSON to this file.")] = None,
    report_md: ReportMdOpt = None,
    report_html: ReportHtmlOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run FLOAT_MODEL and QUANTIZED_MODEL on the same samples: fidelity, size, latency."""
    console = _stderr(quiet, as_json)

    def run() -> None:
        for path in (report, report_md, report_html, write_exclude):
            if path is not None:
                check_writable(path, force=force)
        result = compare(
            float_model,
            quantized_model,
            data,
            labels=labels,
            threads=threads,
            batch_size=batch_size,
            latency_runs=runs,
            per_layer=per_layer or write_exclude is not None or report_html is not None,
            top_k=top_k,
        )
        document = result.to_dict()
        with StagedOutput(force=force) as staging:
            _outputs(staging, document, report=report, markdown=report_md, page=report_html)
            if write_exclude is not None and result.per_layer is not None:
                staging.write_bytes(write_exclude, result.per_layer.exclude_file().encode())
            staging.commit()
        if as_json:
            _print_json(document)
        else:
            render_compare(result, console)

    _finish(guarded(run, console, debug=debug))


class _CalibrateGroup(typer.core.TyperGroup):
    """``quantcli calibrate MODEL ...`` runs ``calibrate run``; ``calibrate merge`` merges files."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # click.Context, vendored by typer
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


calibrate_app = typer.Typer(
    cls=_CalibrateGroup,
    no_args_is_help=True,
    help="Record every tensor's statistics in a calibration file (calibrate MODEL ...), or merge files.",
)
app.add_typer(calibrate_app, name="calibrate")


@calibrate_app.command("run")
def calibrate_command(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Calibration file to write (JSON).")],
    data: DataOpt = None,
    data_loader: LoaderOpt = None,
    preprocess: PreprocessOpt = None,
    method: Annotated[
        CalibrationMethod,
        typer.Option("--method", help="Method convert uses by default with this file."),
    ] = CalibrationMethod.MINMAX,
    percentile: PercentileOpt = None,
    batch_size: BatchOpt = 16,
    max_samples: MaxSamplesOpt = None,
    skip_nonfinite: SkipNonfiniteOpt = False,
    seed: SeedOpt = None,
    shard: Annotated[
        str | None,
        typer.Option("--shard", help="K/N: observe only the K-th of N disjoint parts of the samples."),
    ] = None,
    mode: ModeOpt = None,
    eval_data: EvalDataOpt = None,
    labels: LabelsOpt = None,
    metric: MetricOpt = None,
    max_drop: Annotated[
        float | None,
        typer.Option("--max-drop", help="The bound --mode auto chooses within, in points of --metric (1)."),
    ] = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run DATA through MODEL, record every tensor's min, max and histogram in a file, and decide
    the mode (--mode auto measures the candidates, as convert would) so that a later
    'convert --calibration FILE' replays the decision without timing anything."""
    console = _stderr(quiet, as_json)

    def run() -> None:
        defaults = QuantConfig()
        config = QuantConfig(
            method=method,
            percentile=defaults.percentile if percentile is None else percentile,
            batch_size=batch_size,
            max_samples=max_samples,
            seed=seed,
            skip_nonfinite=skip_nonfinite,
            mode=defaults.mode if mode is None else mode,
            metric=defaults.metric if metric is None else metric,
            max_drop=max_drop,
        )
        part = Shard.parse(shard) if shard is not None else None
        if part is not None and (eval_data is not None or labels is not None):
            raise ConfigError(
                "--shard observes part of the data; the mode is decided over all of it (no --eval-data)"
            )
        check_writable(output, force=force)
        bar, update = _progress(console, "calibrating")
        with bar or nullcontext():
            source = _source(data, data_loader, preprocess)
            if source is None:
                raise ConfigError("calibrate needs samples: give --data or --data-loader")
            evaluation = _source(eval_data, None, preprocess) if eval_data is not None else None
            result = calibrate(
                model, source, config=config, shard=part, eval_data=evaluation, labels=labels, progress=update
            )
        write_calibration(result, output, force=force)
        _show_calibration(result, output, console, as_json=as_json)

    _finish(guarded(run, console, debug=debug))


@calibrate_app.command("merge")
def merge_command(
    files: Annotated[
        list[Path], typer.Argument(help="Calibration files of disjoint shards.", show_default=False)
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Merged calibration file to write.")],
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Merge calibration files of disjoint shards into the file one run over all the data gives."""
    console = _stderr(quiet, as_json)

    def run() -> None:
        check_writable(output, force=force)
        result = merge_calibrations([(path, read_calibration(path)) for path in files])
        write_calibration(result, output, force=force)
        _show_calibration(result, output, console, as_json=as_json, files=len(files))

    _finish(guarded(run, console, debug=debug))


def _show_calibration(
    result: CalibrationFile, output: Path, console: Console, *, as_json: bool, files: int | None = None
) -> None:
    """What calibrate run and merge print: a JSON summary, or tables."""
    if not as_json:
        render_calibration(result, str(output), console)
        return
    summary: dict[str, object] = {
        "output": str(output),
        "tensors": len(result.stats),
        "samples": result.num_samples,
        "method": result.method.value,
        "shards": list(result.shards),
        "choice": None if result.choice is None else result.choice.to_dict(),
    }
    if files is not None:
        summary["files"] = files
    _print_json(summary)


@app.command("inspect")
def inspect_command(
    model: ModelArg,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", "-x", help="As for convert.")] = None,
    include: Annotated[list[str] | None, typer.Option("--include", help="As for convert.")] = None,
    recipe: Annotated[Path | None, typer.Option("--recipe", help="As for convert.")] = None,
    mode: Annotated[
        QuantMode | None,
        typer.Option(
            "--mode", "-m", help="The plan of this mode (auto: the static plan, or --calibration's)."
        ),
    ] = None,
    calibration: Annotated[
        Path | None,
        typer.Option("--calibration", "-c", help="Show the mode decision this calibration file records."),
    ] = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show MODEL's inputs, outputs, size, ops, and what convert would quantize and why."""
    console = Console(stderr=True)

    def run() -> None:
        config = _config(
            recipe,
            exclude=expand_patterns(exclude or ()),
            include=expand_patterns(include or ()) or None,
            mode=mode,
        )
        summary = inspect_model(model, config, calibration=calibration)
        if as_json:
            document = {
                "path": summary.path,
                "size_bytes": summary.size_bytes,
                "opset": summary.opset,
                "parameters": summary.parameters,
                "inputs": [
                    {"name": s.name, "dtype": s.dtype.name, "shape": list(s.shape)} for s in summary.inputs
                ],
                "outputs": [{"name": n, "dtype": d, "shape": s} for n, d, s in summary.outputs],
                "op_types": summary.op_types,
                "mode": summary.plan.mode.value,
                "mode_reason": summary.mode_reason,
                "nodes": [asdict(d) | {"role": d.role.value} for d in summary.plan.decisions],
                "quantized_nodes": sum(d.role is not NodeRole.FLOAT for d in summary.plan.decisions),
            }
            _print_json(document)
        else:
            render_summary(summary, Console())  # the summary is this command's data: stdout

    _finish(guarded(run, console, debug=debug))


@app.callback(invoke_without_command=True)
def main_callback(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        sys.stdout.write(f"quantcli {__version__}\n")
        raise typer.Exit(0)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    app()


if __name__ == "__main__":
    main()
