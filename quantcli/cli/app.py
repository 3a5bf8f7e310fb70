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
from quantcli.calibration.file import merge_calibrations, read_calibration, write_calibration
from quantcli.calibration.sampling import Shard
from quantcli.cli.exits import ExitCode, guarded
from quantcli.cli.render import render_calibration, render_report, render_summary
from quantcli.config import (
    ActivationType,
    CalibrationMethod,
    GateMetric,
    QuantConfig,
    QuantMode,
    WeightMethod,
)
from quantcli.graph.io import check_writable, write_atomic
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
        help=".npz file (arrays keyed by input name, axis 0 = samples), or a folder of .npz/.npy files.",
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
    float, typer.Option("--percentile", help="Percent of values the percentile method keeps in range.")
]
WeightMethodOpt = Annotated[
    WeightMethod, typer.Option("--weight-method", help="Weight channel ranges: minmax or mse.")
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


def _finish(result: Any) -> None:
    if isinstance(result, ExitCode):
        raise typer.Exit(int(result))


@app.command()
def convert(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the int8 model.")],
    data: DataOpt = None,
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration", "-c", help="Calibration file from 'quantcli calibrate' (instead of --data)."
        ),
    ] = None,
    eval_data: Annotated[
        Path | None,
        typer.Option("--eval-data", "-e", help="Evaluation data; default: hold back 20% of --data."),
    ] = None,
    labels: Annotated[
        Path | None, typer.Option("--labels", help=".npy of integer labels for the evaluation samples.")
    ] = None,
    activation_type: Annotated[
        ActivationType, typer.Option("--activation-type", help="uint8 (asymmetric) or int8 (symmetric).")
    ] = ActivationType.UINT8,
    per_tensor: Annotated[
        bool, typer.Option("--per-tensor", help="One weight scale per tensor instead of per channel.")
    ] = False,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", "-x", help="Keep a node (by name) or an op type in float. Repeatable."),
    ] = None,
    method: MethodOpt = None,
    percentile: PercentileOpt = 99.99,
    weight_method: WeightMethodOpt = WeightMethod.MINMAX,
    mode: Annotated[
        QuantMode,
        typer.Option(
            "--mode",
            "-m",
            help="static (calibrated integer kernels), dynamic (MatMul/Gemm inputs quantized at run "
            "time, no data needed), mixed (dynamic MatMul/Gemm + static rest), weight-only (int8 "
            "storage, float compute), auto (build each, keep the fastest within --max-drop, "
            "default bound 1 point).",
        ),
    ] = QuantMode.STATIC,
    metric: Annotated[
        GateMetric,
        typer.Option(
            "--metric",
            help="What --max-drop measures: accuracy (vs --labels), top1 (arg-max agreement), "
            "cosine (100 x (1 - mean cosine)); auto picks the first that applies.",
        ),
    ] = GateMetric.AUTO,
    max_drop: Annotated[
        float | None,
        typer.Option(
            "--max-drop",
            help="Accuracy gate in points of --metric: exit 3 if the quantized model loses more "
            "(the model and report are still written).",
        ),
    ] = None,
    batch_size: BatchOpt = 16,
    max_samples: MaxSamplesOpt = None,
    seed: SeedOpt = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write the report as JSON to this file.")
    ] = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Quantize MODEL to int8 (QDQ) and report size and fidelity."""
    console = _stderr(quiet, as_json)

    def run() -> ExitCode | None:
        chosen = method
        if chosen is None:  # flag, then the calibration file's choice, then the default
            chosen = (
                read_calibration(calibration).method if calibration is not None else CalibrationMethod.MINMAX
            )
        config = QuantConfig(
            activation_type=activation_type,
            method=chosen,
            percentile=percentile,
            weight_method=weight_method,
            per_channel=not per_tensor,
            batch_size=batch_size,
            max_samples=max_samples,
            seed=seed,
            exclude=frozenset(exclude or ()),
            mode=mode,
            metric=metric,
            max_drop=max_drop,
        )
        if report is not None:
            check_writable(report, force=force)
        bar, update = _progress(console, "calibrating")
        with bar or nullcontext():
            result = quantize(
                model,
                output,
                config=config,
                data=data,
                calibration=calibration,
                eval_data=eval_data,
                labels=labels,
                force=force,
                progress=update,
            )
        document = result.report.to_dict()
        if report is not None:
            write_atomic(
                (json.dumps(document, indent=2, sort_keys=True) + "\n").encode(), report, force=force
            )
        if as_json:
            _print_json(document)
        else:
            render_report(result.report, console)
        gate = result.report.gate
        return ExitCode.GATE_FAILED if gate is not None and not gate.passed else None

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
    data: Annotated[Path, typer.Option("--data", "-d", help=".npz file or folder of .npz/.npy files.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Calibration file to write (JSON).")],
    method: Annotated[
        CalibrationMethod,
        typer.Option("--method", help="Method convert uses by default with this file."),
    ] = CalibrationMethod.MINMAX,
    percentile: PercentileOpt = 99.99,
    batch_size: BatchOpt = 16,
    max_samples: MaxSamplesOpt = None,
    seed: SeedOpt = None,
    shard: Annotated[
        str | None,
        typer.Option("--shard", help="K/N: observe only the K-th of N disjoint parts of the samples."),
    ] = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run DATA through MODEL and record every tensor's min, max and histogram in a file."""
    console = _stderr(quiet, as_json)

    def run() -> None:
        config = QuantConfig(
            method=method, percentile=percentile, batch_size=batch_size, max_samples=max_samples, seed=seed
        )
        part = Shard.parse(shard) if shard is not None else None
        check_writable(output, force=force)
        bar, update = _progress(console, "calibrating")
        with bar or nullcontext():
            result = calibrate(model, data, config=config, shard=part, progress=update)
        write_calibration(result, output, force=force)
        if as_json:
            _print_json(
                {
                    "output": str(output),
                    "tensors": len(result.stats),
                    "samples": result.num_samples,
                    "method": result.method.value,
                    "shards": list(result.shards),
                }
            )
        else:
            render_calibration(result, str(output), console)

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
        if as_json:
            _print_json(
                {
                    "output": str(output),
                    "files": len(files),
                    "samples": result.num_samples,
                    "shards": list(result.shards),
                }
            )
        else:
            render_calibration(result, str(output), console)

    _finish(guarded(run, console, debug=debug))


@app.command("inspect")
def inspect_command(
    model: ModelArg,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", "-x", help="As for convert.")] = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show MODEL's inputs, outputs, size, ops, and what convert would quantize and why."""
    console = Console(stderr=True)

    def run() -> None:
        summary = inspect_model(model, QuantConfig(exclude=frozenset(exclude or ())))
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
