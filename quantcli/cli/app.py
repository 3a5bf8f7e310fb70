"""quantcli's command line. Each command parses flags, builds a config, calls one library
function and renders; exit codes come from :mod:`quantcli.cli.exits`.

numpy, onnx and onnxruntime are imported inside the commands that use them, never at the top
of this module: ``quantcli --version``, ``--help`` and shell completion stay fast.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from quantcli import __version__
from quantcli.cli.exits import ExitCode, guarded
from quantcli.cli.progress import StageDisplay
from quantcli.cli.text import markup, shown
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
    pattern_files,
    recipe_from_report,
)
from quantcli.errors import ConfigError

if TYPE_CHECKING:
    from quantcli.batch import JobResult
    from quantcli.calibration.file import CalibrationFile
    from quantcli.calibration.sampling import Shard
    from quantcli.calibration.sources import DataSource
    from quantcli.evaluate import GateResult
    from quantcli.pipeline import Collector

# Help panels, in the order a user meets them.
INPUT = "Input and data"
MODE = "Mode and precision"
GATE = "Accuracy gate"
DIAGNOSIS = "Diagnosis"
OUTPUT = "Output"
DISTRIBUTED = "More than one machine"

app = typer.Typer(
    name="quantcli",
    help="Post-training int8 quantization of ONNX models (QDQ format for onnxruntime).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",  # help text is markup: a literal bracket is written \[
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _default(value: object) -> str:
    """Every default in help looks the same, Typer's own style (show_default is off
    everywhere: a flag left at None defers to a recipe, so Typer cannot know the default)."""
    return f" [dim]\\[default: {value}][/dim]"


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
        help="Evaluation data." + _default("the last 20% of --data, held back"),
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
        help="Samples per onnxruntime run when the batch axis is dynamic." + _default(16),
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
        help="Use at most this many calibration samples." + _default("all"),
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
        help="Shuffle samples with this seed before --max-samples/--shard pick them."
        + _default("file order"),
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
        "float compute." + _default("auto"),
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
        + _default("the calibration file's, else minmax"),
        rich_help_panel=MODE,
        show_default=False,
    ),
]
PercentileOpt = Annotated[
    float | None,
    typer.Option(
        "--percentile",
        help="Percent of values the percentile method keeps in range." + _default(99.99),
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
        help="Weight channel ranges: minmax or mse." + _default("minmax"),
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
        "15 dB." + _default("auto"),
        rich_help_panel=GATE,
        show_default=False,
    ),
]
MaxDropOpt = Annotated[
    float | None,
    typer.Option(
        "--max-drop",
        help="Fail (exit 3) if the quantized model loses more than this, in points of --metric "
        "(the model and report are still written)." + _default("no gate"),
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
        "flag, or channel-sqnr) reaches DB." + _default("no gate"),
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
        help="How many of the worst tensors to measure alone and show." + _default(10),
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
        help="With --ray: the cluster." + _default("$RAY_ADDRESS, else a local Ray started for this run"),
        metavar="ADDRESS",
        rich_help_panel=DISTRIBUTED,
        show_default=False,
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        help="With --ray: Ray tasks the samples are split into." + _default("the cluster's CPUs"),
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
        help="With --ray: CPUs per task, and onnxruntime's threads in it." + _default(1),
        min=1,
        metavar="C",
        rich_help_panel=DISTRIBUTED,
        show_default=False,
    ),
]


@contextmanager
def _on_ray(enabled: bool, address: str | None, workers: int | None, cpus: int) -> Iterator[Any]:
    """Ray's options for the run, connected for its duration (None without --ray). quantcli's
    Ray code, and ray itself, are imported only here."""
    if not enabled:
        if address is not None or workers is not None or cpus != 1:
            raise typer.BadParameter("--ray-address, --workers and --worker-cpus go with --ray")
        yield None
        return
    from quantcli import distributed  # ray is optional: only --ray imports it

    options = distributed.RayOptions(address=address, workers=workers, cpus_per_task=cpus)
    with distributed.ray_session(options):
        yield options


def _collector(options: Any) -> Collector | None:
    if options is None:
        return None
    from quantcli import distributed

    return distributed.RayCollector(options)


def _flag(name: str, help_text: str, panel: str, *aliases: str, hidden: bool = False) -> Any:
    """A boolean flag, off unless given (no ``<bool>`` metavar, no default shown)."""
    return typer.Option(
        name, *aliases, help=help_text, metavar="", rich_help_panel=panel, show_default=False, hidden=hidden
    )


def _path(name: str, help_text: str, panel: str, *aliases: str) -> Any:
    return typer.Option(
        name, *aliases, help=help_text, metavar="PATH", rich_help_panel=panel, show_default=False
    )


def _source(data: Path | None, loader: str | None, preprocess: str | None) -> DataSource | None:
    """The data source the flags name: files, an image folder, or the user's loader."""
    from quantcli.calibration.sources import ImageFolder, Preprocess, UserLoader

    if loader is not None:
        if data is not None:
            raise typer.BadParameter("give --data or --data-loader, not both")
        return UserLoader(loader)
    if preprocess is not None:
        if data is None:
            raise typer.BadParameter("--preprocess describes the images of a --data folder; give --data")
        return ImageFolder(data, Preprocess.parse(preprocess))
    return data


def _stderr(quiet: bool, as_json: bool) -> Console:
    """Tables and progress for people. A log (not a terminal) gets COLUMNS, or the terminal's
    width, or 160: wide tables stay whole instead of wrapping names into fragments."""
    # --quiet prints nothing on success: the library's warnings too (errors still print).
    logging.getLogger("quantcli").setLevel(logging.ERROR if quiet else logging.NOTSET)
    console = Console(stderr=True, quiet=quiet or as_json)
    if not console.is_terminal:
        console = Console(
            stderr=True, quiet=quiet or as_json, width=shutil.get_terminal_size((160, 24)).columns
        )
    return console


def _print_json(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")


def _versions() -> dict[str, str]:
    """What made a report, for a reviewer: quantcli and the libraries that did the work."""
    from importlib import metadata

    found = {"quantcli": __version__}
    for package in ("onnx", "onnxruntime", "onnx-ir", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def _command_line(ctx: typer.Context) -> str:
    """The command as it could be typed again, from the parsed parameters rather than
    ``sys.argv`` (the same under CliRunner, in a subprocess and for ``python -m quantcli``):
    arguments, then every option that is not at its default, in declared order."""
    words = ["quantcli", *ctx.command_path.split()[1:]]
    options: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if value is None or value is False or value in (param.default, []):
            continue
        items = value if isinstance(value, list | tuple) else [value]
        if param.param_type_name == "argument":
            words += [_word(v) for v in items]
        elif value is True:
            options.append(next((o for o in param.opts if o.startswith("--")), param.opts[0]))
        else:
            flag = next((o for o in param.opts if o.startswith("--")), param.opts[0])
            for item in items:
                options += [flag, _word(item)]
    return shlex.join(shown(w) for w in [*words, *options])


def _word(value: object) -> str:
    return value.value if isinstance(value, Enum) else str(value)


def _outputs(
    staging: Any,
    document: dict[str, Any],
    *,
    report: Path | None,
    markdown: Path | None,
    page: Path | None,
) -> None:
    """Stage the report files that were asked for: JSON, Markdown, HTML."""
    from quantcli.pages import html_report, markdown_report

    dated = document | {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
    if report is not None:
        staging.write_bytes(report, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())
    if markdown is not None:
        staging.write_bytes(markdown, markdown_report(dated).encode())
    if page is not None:
        staging.write_bytes(page, html_report(dated).encode())


def _report_flags(
    report: Path | None, markdown: Path | None, page: Path | None, exclude: Path | None
) -> dict[str, Path | None]:
    return {"--report": report, "--report-md": markdown, "--report-html": page, "--write-exclude": exclude}


def _config(recipe: Path | None, from_report: Path | None = None, **flags: Any) -> QuantConfig:
    """Flags over the recipe (or a report's settings) over the defaults; a flag left at None
    was not given. Flags that contradict each other are a usage error (exit 2)."""
    try:
        QuantConfig(**{k: v for k, v in flags.items() if v is not None})
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if recipe is not None and from_report is not None:
        raise typer.BadParameter("give --recipe or --from-report, not both")
    if recipe is not None:
        loaded = load_recipe(recipe)
    elif from_report is not None:
        loaded = recipe_from_report(from_report)
    else:
        loaded = Recipe(path="", defaults={}, skip=frozenset(), per_tensor=frozenset())
    return loaded.config(**flags)


def _finish(result: Any) -> None:
    if isinstance(result, ExitCode):
        raise typer.Exit(int(result))


def _gate_outcome(verdict: GateResult | None, quiet: bool) -> ExitCode | None:
    """Exit 3 on a failed gate; under --quiet its one line is all that is printed."""
    if verdict is None or verdict.passed:
        return None
    if quiet:
        from quantcli.cli.render import gate_line

        Console(stderr=True).print(gate_line(verdict), markup=False, highlight=False)
    return ExitCode.GATE_FAILED


def _warn(warnings: tuple[str, ...], quiet: bool) -> None:
    """A report's warnings, one line each on stderr (also under --json: stdout stays data)."""
    if quiet:
        return
    console = Console(stderr=True)
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {markup(warning)}", highlight=False, soft_wrap=True)


@app.command(no_args_is_help=True)
def convert(
    ctx: typer.Context,
    model: ModelArg,
    data: DataOpt = None,
    data_loader: LoaderOpt = None,
    preprocess: PreprocessOpt = None,
    calibration: Annotated[
        Path | None,
        _path(
            "--calibration", "Calibration file from 'quantcli calibrate' (instead of --data).", INPUT, "-c"
        ),
    ] = None,
    eval_data: EvalDataOpt = None,
    labels: LabelsOpt = None,
    batch_size: BatchOpt = None,
    max_samples: MaxSamplesOpt = None,
    seed: SeedOpt = None,
    skip_nonfinite: SkipNonfiniteOpt = False,
    from_report: Annotated[
        Path | None,
        _path(
            "--from-report",
            "Rerun the settings a JSON report records (its config, in the mode it wrote); flags win.",
            INPUT,
        ),
    ] = None,
    mode: ModeOpt = None,
    recipe: Annotated[
        Path | None,
        _path("--recipe", "TOML recipe: \\[defaults] and \\[\\[override]] tables (flags win over it).", MODE),
    ] = None,
    activation_type: Annotated[
        ActivationType | None,
        typer.Option(
            "--activation-type",
            metavar="TYPE",
            help="uint8 (asymmetric) or int8 (symmetric)." + _default("uint8"),
            rich_help_panel=MODE,
            show_default=False,
        ),
    ] = None,
    per_tensor: Annotated[
        bool, _flag("--per-tensor", "One weight scale per tensor instead of per channel.", MODE)
    ] = False,
    exclude: Annotated[
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
    ] = None,
    include: Annotated[
        list[str] | None,
        typer.Option(
            "--include",
            help="Quantize only these (name, glob, op type or @FILE). Repeatable.",
            metavar="PATTERN",
            rich_help_panel=MODE,
            show_default=False,
        ),
    ] = None,
    method: MethodOpt = None,
    percentile: PercentileOpt = None,
    weight_method: WeightMethodOpt = None,
    bias_correction: Annotated[
        bool,
        _flag(
            "--bias-correction",
            "Subtract from each int8 Conv's bias the mean shift quantization adds (measured on --data).",
            MODE,
        ),
    ] = False,
    allow_noop: Annotated[
        bool, _flag("--allow-noop", "Write a model with nothing to quantize unchanged (exit 0).", MODE)
    ] = False,
    metric: MetricOpt = None,
    max_drop: MaxDropOpt = None,
    min_sqnr: MinSqnrOpt = None,
    auto_fallback: Annotated[
        bool,
        _flag(
            "--auto-fallback",
            "If the gate fails, return the most harmful nodes to float a few at a time until it passes.",
            GATE,
        ),
    ] = False,
    auto_alias: Annotated[
        bool, _flag("--auto", "Old spelling of --auto-fallback (not --mode auto).", GATE, hidden=True)
    ] = False,
    max_trials: Annotated[
        int | None,
        typer.Option(
            "--max-trials",
            help="Models --auto-fallback may build and measure." + _default(8),
            min=1,
            metavar="N",
            rich_help_panel=GATE,
            show_default=False,
        ),
    ] = None,
    speed: Annotated[
        SpeedSource | None,
        typer.Option(
            "--speed",
            metavar="HOW",
            help="How auto compares candidates' speed: predicted (cost model, reproducible) "
            "or measured (timed on this machine; can change with machine load)." + _default("predicted"),
            rich_help_panel=MODE,
            show_default=False,
        ),
    ] = None,
    per_layer: PerLayerOpt = False,
    top_k: TopKOpt = None,
    write_exclude: WriteExcludeOpt = None,
    output: Annotated[Path, _path("--output", "Where to write the int8 model.", OUTPUT, "-o")] = ...,  # type: ignore[assignment]  # required; declared here to list it in the Output panel
    report: ReportOpt = None,
    report_md: ReportMdOpt = None,
    report_html: ReportHtmlOpt = None,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = None,
    worker_cpus: WorkerCpusOpt = 1,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Quantize MODEL to int8 (QDQ) and report size and fidelity."""
    console = _stderr(quiet, as_json)
    command = _command_line(ctx)

    def run() -> ExitCode | None:
        from quantcli.calibration.file import read_calibration
        from quantcli.cli.render import render_report
        from quantcli.graph.output import StagedOutput, check_writable
        from quantcli.pipeline import quantize

        chosen = method
        if chosen is None and calibration is not None:  # flag, the file's choice, the recipe, minmax
            chosen = read_calibration(calibration).method
        config = _config(
            recipe,
            from_report,
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
            auto_fallback=auto_fallback or auto_alias or None,
            max_trials=max_trials,
            speed=speed,
            per_layer=per_layer or write_exclude is not None or report_html is not None or None,
            top_k=top_k,
        )
        source = _source(data, data_loader, preprocess)
        evaluation = _source(eval_data, None, preprocess) if eval_data is not None else None
        for path in (report, report_md, report_html, write_exclude):
            if path is not None:
                check_writable(path, force=force)
        # The model and the report files are moved into place together, or none is.
        with (
            _on_ray(ray, ray_address, workers, worker_cpus) as on_ray,
            StageDisplay(console) as progress,
            StagedOutput(force=force) as staging,
        ):
            staging.guard.declare(
                reads={
                    "--recipe": [recipe],
                    "--from-report": [from_report],
                    "@FILE": pattern_files([*(exclude or ()), *(include or ())]),
                },
                writes=_report_flags(report, report_md, report_html, write_exclude),
            )
            result = quantize(
                model,
                output,
                config=config,
                data=source,
                calibration=calibration,
                eval_data=evaluation,
                labels=labels,
                force=force,
                progress=progress,
                staging=staging,
                collector=_collector(on_ray),
            )
            progress.stage("write")
            document = result.report.to_dict() | {"versions": _versions(), "command": command}
            _outputs(staging, document, report=report, markdown=report_md, page=report_html)
            if write_exclude is not None and result.report.per_layer is not None:
                staging.write_bytes(write_exclude, result.report.per_layer.exclude_file().encode())
            staging.commit()
        if as_json:
            _print_json(document)
        else:
            render_report(result.report, console)
        _warn(result.report.barely_changed, quiet)  # the library logs its own warnings
        return _gate_outcome(result.report.gate, quiet)

    _finish(guarded(run, console, debug=debug))


@app.command("convert-many", no_args_is_help=True)
def convert_many_command(
    models: Annotated[
        list[Path],
        typer.Argument(
            help="Model files, folders of them, or one TOML manifest with per-model data, recipe and gate.",
            show_default=False,
            metavar="MODELS...",
        ),
    ],
    data: Annotated[
        Path | None, _path("--data", "Calibration data for every model (as for convert).", INPUT, "-d")
    ] = None,
    data_loader: LoaderOpt = None,
    preprocess: PreprocessOpt = None,
    eval_data: EvalDataOpt = None,
    labels: LabelsOpt = None,
    max_samples: MaxSamplesOpt = None,
    seed: SeedOpt = None,
    mode: ModeOpt = None,
    recipe: Annotated[Path | None, _path("--recipe", "TOML recipe for every model.", MODE)] = None,
    method: MethodOpt = None,
    metric: MetricOpt = None,
    max_drop: MaxDropOpt = None,
    min_sqnr: MinSqnrOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="Models converted at once here (1: one after another)." + _default("one per CPU"),
            min=1,
            metavar="N",
            rich_help_panel=DISTRIBUTED,
            show_default=False,
        ),
    ] = None,
    ray: Annotated[
        bool, _flag("--ray", "Convert each model as a Ray task (needs 'quantcli\\[ray]').", DISTRIBUTED)
    ] = False,
    ray_address: RayAddressOpt = None,
    worker_cpus: WorkerCpusOpt = 1,
    output_dir: Annotated[
        Path, _path("--output-dir", "Folder for NAME.int8.onnx and NAME.report.json.", OUTPUT, "-o")
    ] = ...,  # type: ignore[assignment]  # required; declared here to list it in the Output panel
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Convert every model with its own settings; one failure never stops the others. Ends with a
    summary table (and one JSON document with --json) and exits with the worst model's code."""
    console = _stderr(quiet, as_json)

    def run() -> ExitCode:
        from quantcli.batch import Settings, jobs_from_manifest, jobs_from_paths, run_local
        from quantcli.cli.exits import exit_code
        from quantcli.cli.render import render_batch

        manifests = [m for m in models if m.suffix == ".toml"]
        if manifests and len(models) > 1:
            raise typer.BadParameter(f"{shown(manifests[0])}: a manifest lists every model; give it alone")
        if ray and workers is not None:
            raise typer.BadParameter("--workers sizes the local pool; with --ray the cluster decides")
        settings = Settings(
            out_dir=output_dir,
            data=_source(data, data_loader, preprocess),
            eval_data=eval_data,
            labels=labels,
            recipe=recipe,
            flags={
                "mode": mode,
                "metric": metric,
                "max_drop": max_drop,
                "min_sqnr": min_sqnr,
                "method": method,
                "max_samples": max_samples,
                "seed": seed,
            },
            force=force,
        )
        jobs = jobs_from_manifest(manifests[0], settings) if manifests else jobs_from_paths(models, settings)
        if output_dir.exists() and not output_dir.is_dir():
            raise ConfigError(f"{output_dir}: not a folder")
        output_dir.mkdir(parents=True, exist_ok=True)
        results: list[JobResult] = []

        def finished(result: JobResult) -> None:
            results.append(result)
            console.print(
                f"\\[{len(results)}/{len(jobs)}] {markup(result.name)}: {result.outcome}", highlight=False
            )

        with _on_ray(ray, ray_address, None, worker_cpus) as on_ray:
            if on_ray is None:
                run_local(jobs, workers=workers, on_result=finished)
            else:
                from quantcli import distributed

                distributed.convert_on_ray(jobs, on_ray, finished)
        order = {job.name: index for index, job in enumerate(jobs)}
        results.sort(key=lambda r: order[r.name])
        codes = [exit_code(r.outcome) for r in results]
        worst = max(codes, default=ExitCode.OK)
        rows = [r.to_dict() | {"exit_code": int(code)} for r, code in zip(results, codes, strict=True)]
        if as_json:
            _print_json({"exit_code": int(worst), "models": rows})
        else:
            render_batch(rows, console)
        return worst

    _finish(guarded(run, console, debug=debug))


@app.command("compare", no_args_is_help=True)
def compare_command(
    ctx: typer.Context,
    float_model: Annotated[
        Path, typer.Argument(help="The fp32 ONNX model.", show_default=False, metavar="FLOAT_MODEL")
    ],
    quantized_model: Annotated[
        Path, typer.Argument(help="Its quantized version.", show_default=False, metavar="QUANTIZED_MODEL")
    ],
    data: Annotated[Path, _path("--data", "Evaluation samples (.npz or folder).", INPUT, "-d")],
    labels: LabelsOpt = None,
    batch_size: BatchOpt = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            help="onnxruntime intra-op threads for both models." + _default("onnxruntime's"),
            min=1,
            metavar="N",
            rich_help_panel=INPUT,
            show_default=False,
        ),
    ] = None,
    runs: Annotated[
        int,
        typer.Option(
            "--runs",
            help="Timed runs per model, after warm-up." + _default(30),
            min=1,
            metavar="N",
            rich_help_panel=INPUT,
            show_default=False,
        ),
    ] = 30,
    metric: Annotated[
        GateMetric,
        typer.Option(
            "--metric",
            metavar="METRIC",
            help="What the gate measures: auto, accuracy, top1, cosine, sqnr or channel-sqnr, as for convert."
            + _default("auto"),
            rich_help_panel=GATE,
            show_default=False,
        ),
    ] = GateMetric.AUTO,
    max_drop: MaxDropOpt = None,
    min_sqnr: MinSqnrOpt = None,
    per_layer: PerLayerOpt = False,
    top_k: TopKOpt = None,
    write_exclude: WriteExcludeOpt = None,
    report: ReportOpt = None,
    report_md: ReportMdOpt = None,
    report_html: ReportHtmlOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run FLOAT_MODEL and QUANTIZED_MODEL on the same samples: fidelity, size, latency; with
    --max-drop or --min-sqnr, PASSED or FAILED (exit 3) like convert's gate."""
    console = _stderr(quiet, as_json)
    command = _command_line(ctx)

    def run() -> ExitCode | None:
        from quantcli.cli.render import gate_line, render_compare
        from quantcli.comparison import compare
        from quantcli.graph.guard import PathGuard
        from quantcli.graph.output import StagedOutput, check_writable

        try:
            QuantConfig(metric=metric, max_drop=max_drop, min_sqnr=min_sqnr)
        except ConfigError as exc:
            raise typer.BadParameter(str(exc)) from exc
        for path in (report, report_md, report_html, write_exclude):
            if path is not None:
                check_writable(path, force=force)
        guard = PathGuard()
        guard.declare(reads={}, writes=_report_flags(report, report_md, report_html, write_exclude))
        with StageDisplay(console) as progress:
            result = compare(
                float_model,
                quantized_model,
                data,
                labels=labels,
                threads=threads,
                batch_size=16 if batch_size is None else batch_size,
                latency_runs=runs,
                per_layer=per_layer or write_exclude is not None or report_html is not None,
                top_k=10 if top_k is None else top_k,
                metric=metric,
                max_drop=max_drop,
                min_sqnr=min_sqnr,
                progress=progress,
                guard=guard,
            )
            progress.stage("write")
            document = result.to_dict() | {"versions": _versions(), "command": command}
            with StagedOutput(force=force, guard=guard) as staging:
                _outputs(staging, document, report=report, markdown=report_md, page=report_html)
                if write_exclude is not None and result.per_layer is not None:
                    staging.write_bytes(write_exclude, result.per_layer.exclude_file().encode())
                staging.commit()
        if as_json:
            _print_json(document)
        else:
            render_compare(result, console)
            if result.gate is not None:
                console.print(gate_line(result.gate), markup=False, highlight=False)
        return _gate_outcome(result.gate, quiet)

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


def _shard(value: str | None) -> Shard | None:
    """``--shard K/N``; a malformed or impossible one is a usage error (exit 2)."""
    if value is None:
        return None
    from quantcli.calibration.sampling import Shard

    try:
        return Shard.parse(value)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--shard'") from exc


@calibrate_app.command("run", no_args_is_help=True)
def calibrate_command(
    model: ModelArg,
    data: DataOpt = None,
    data_loader: LoaderOpt = None,
    preprocess: PreprocessOpt = None,
    eval_data: EvalDataOpt = None,
    labels: LabelsOpt = None,
    batch_size: BatchOpt = None,
    max_samples: MaxSamplesOpt = None,
    skip_nonfinite: SkipNonfiniteOpt = False,
    seed: SeedOpt = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            help="K/N: observe only the K-th of N disjoint parts of the samples." + _default("all"),
            metavar="K/N",
            rich_help_panel=INPUT,
            show_default=False,
        ),
    ] = None,
    mode: ModeOpt = None,
    method: Annotated[
        CalibrationMethod,
        typer.Option(
            "--method",
            metavar="METHOD",
            help="Method convert uses by default with this file: minmax, percentile, entropy or mse."
            + _default("minmax"),
            rich_help_panel=MODE,
            show_default=False,
        ),
    ] = CalibrationMethod.MINMAX,
    percentile: PercentileOpt = None,
    metric: MetricOpt = None,
    max_drop: Annotated[
        float | None,
        typer.Option(
            "--max-drop",
            help="The bound --mode auto chooses within, in points of --metric." + _default(1),
            min=0.0,
            metavar="POINTS",
            rich_help_panel=GATE,
            show_default=False,
        ),
    ] = None,
    output: Annotated[Path, _path("--output", "Calibration file to write (JSON).", OUTPUT, "-o")] = ...,  # type: ignore[assignment]  # required; declared here to list it in the Output panel
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = None,
    worker_cpus: WorkerCpusOpt = 1,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run DATA through MODEL, record every tensor's min, max and histogram in a file, and decide
    the mode (--mode auto measures the candidates, as convert would) so that a later
    'convert --calibration FILE' replays the decision without timing anything."""
    console = _stderr(quiet, as_json)
    part = _shard(shard)

    def run() -> None:
        from quantcli.calibration.file import write_calibration
        from quantcli.graph.guard import PathGuard
        from quantcli.graph.output import check_writable
        from quantcli.pipeline import calibrate

        defaults = QuantConfig()
        try:
            config = QuantConfig(
                method=method,
                percentile=defaults.percentile if percentile is None else percentile,
                batch_size=defaults.batch_size if batch_size is None else batch_size,
                max_samples=max_samples,
                seed=seed,
                skip_nonfinite=skip_nonfinite,
                mode=defaults.mode if mode is None else mode,
                metric=defaults.metric if metric is None else metric,
                max_drop=max_drop,
            )
        except ConfigError as exc:
            raise typer.BadParameter(str(exc)) from exc
        if part is not None and (eval_data is not None or labels is not None):
            raise typer.BadParameter(
                "--shard observes part of the data; the mode is decided over all of it (no --eval-data)"
            )
        source = _source(data, data_loader, preprocess)
        if source is None:
            raise typer.BadParameter("calibrate needs samples: give --data or --data-loader")
        check_writable(output, force=force)
        guard = PathGuard()
        guard.writes(output, "-o")
        evaluation = _source(eval_data, None, preprocess) if eval_data is not None else None
        if ray and part is not None:
            raise typer.BadParameter("--shard observes one part here; --ray splits the samples itself")
        with _on_ray(ray, ray_address, workers, worker_cpus) as on_ray, StageDisplay(console) as progress:
            result = calibrate(
                model,
                source,
                config=config,
                shard=part,
                eval_data=evaluation,
                labels=labels,
                progress=progress,
                collector=_collector(on_ray),
                guard=guard,
            )
            progress.stage("write")
            write_calibration(result, output, force=force, guard=guard)
        _show_calibration(result, output, console, as_json=as_json)

    _finish(guarded(run, console, debug=debug))


@calibrate_app.command("merge", no_args_is_help=True)
def merge_command(
    files: Annotated[
        list[Path],
        typer.Argument(help="Calibration files of disjoint shards.", show_default=False, metavar="FILES..."),
    ],
    output: Annotated[Path, _path("--output", "Merged calibration file to write.", OUTPUT, "-o")],
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Merge calibration files of disjoint shards into the file one run over all the data gives."""
    console = _stderr(quiet, as_json)

    def run() -> None:
        from quantcli.calibration.file import merge_calibrations, read_calibration, write_calibration
        from quantcli.graph.guard import PathGuard
        from quantcli.graph.output import check_writable

        check_writable(output, force=force)
        guard = PathGuard()
        guard.declare(reads={"a merged file": files}, writes={"-o": output})
        result = merge_calibrations([(path, read_calibration(path)) for path in files])
        write_calibration(result, output, force=force, guard=guard)
        _show_calibration(result, output, console, as_json=as_json, files=len(files))

    _finish(guarded(run, console, debug=debug))


def _show_calibration(
    result: CalibrationFile, output: Path, console: Console, *, as_json: bool, files: int | None = None
) -> None:
    """What calibrate run and merge print: a JSON summary, or tables."""
    from quantcli.cli.render import render_calibration

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


@app.command("inspect", no_args_is_help=True)
def inspect_command(
    model: ModelArg,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", "-x", help="As for convert.", metavar="PATTERN", show_default=False),
    ] = None,
    include: Annotated[
        list[str] | None,
        typer.Option("--include", help="As for convert.", metavar="PATTERN", show_default=False),
    ] = None,
    recipe: Annotated[
        Path | None, typer.Option("--recipe", help="As for convert.", metavar="PATH", show_default=False)
    ] = None,
    mode: Annotated[
        QuantMode | None,
        typer.Option(
            "--mode",
            "-m",
            metavar="MODE",
            help="The plan of this mode: static, dynamic, mixed, weight-only, or auto (the static plan, or "
            "--calibration's)." + _default("auto"),
            show_default=False,
        ),
    ] = None,
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration",
            "-c",
            help="Show the mode decision this calibration file records.",
            metavar="PATH",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show MODEL's inputs, outputs, size, ops, and what convert would quantize and why."""
    console = Console(stderr=True)

    def run() -> None:
        from quantcli.cli.render import render_summary
        from quantcli.pipeline import inspect_model
        from quantcli.plan import NodeRole

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
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", metavar="", show_default=False)
    ] = False,
) -> None:
    if version:
        sys.stdout.write(f"quantcli {__version__}\n")
        raise typer.Exit(0)


class _ShownFormatter(logging.Formatter):
    """Log lines quote node names and paths too: their control characters are shown, not sent."""

    def format(self, record: logging.LogRecord) -> str:
        return shown(super().format(record))


class _CurrentStderr:
    """sys.stderr as it is when a line is logged: the live progress display swaps it for a
    proxy that prints above the display, and a handler holding the original would break it."""

    def write(self, line: str) -> int:
        return sys.stderr.write(line)

    def flush(self) -> None:
        sys.stderr.flush()


def main() -> None:
    handler = logging.StreamHandler(_CurrentStderr())
    handler.setFormatter(_ShownFormatter("%(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    app()


if __name__ == "__main__":
    main()
