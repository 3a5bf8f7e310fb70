"""quantcli's command line. Each command parses flags, builds its config (recipe, then
:class:`~quantcli.config.Overrides` from the flags), calls one library function and renders;
exit codes come from :mod:`quantcli.cli.exits`, options from :mod:`quantcli.cli.options`.

numpy, onnx and onnxruntime are imported inside the commands that use them, never at the top
of this module: ``quantcli --version``, ``--help`` and shell completion stay fast.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from quantcli import __version__
from quantcli.cli.exits import ExitCode, guarded
from quantcli.cli.options import (
    ActivationTypeOpt,
    AllowNoopOpt,
    AutoAliasOpt,
    AutoFallbackOpt,
    BatchOpt,
    BiasCorrectionOpt,
    BlockMethodOpt,
    BlockSizeOpt,
    CalibrationOpt,
    CalibrationOutputOpt,
    ChoiceMaxDropOpt,
    CompareMetricOpt,
    CompareTargetOpt,
    DataOpt,
    DebugOpt,
    EvalDataOpt,
    EvalSamplesOpt,
    ExcludeOpt,
    FloatModelArg,
    ForceOpt,
    FromReportOpt,
    IncludeOpt,
    InspectCalibrationOpt,
    InspectExcludeOpt,
    InspectIncludeOpt,
    InspectModeOpt,
    InspectRecipeOpt,
    JsonOpt,
    LabelsOpt,
    LoaderOpt,
    ManyDataOpt,
    ManyRayOpt,
    ManyRecipeOpt,
    MaxDropOpt,
    MaxSamplesOpt,
    MaxTrialsOpt,
    MergedOutputOpt,
    MethodOpt,
    MetricOpt,
    MinSqnrOpt,
    ModelArg,
    ModelOutputOpt,
    ModelsArg,
    ModeOpt,
    OutputDirOpt,
    PercentileOpt,
    PerLayerOpt,
    PerTensorOpt,
    PoolWorkersOpt,
    PreprocessOpt,
    QuantizedModelArg,
    QuietOpt,
    RayAddressOpt,
    RayOpt,
    RecipeOpt,
    RecordedMethodOpt,
    ReportHtmlOpt,
    ReportMdOpt,
    ReportOpt,
    RunsOpt,
    SeedOpt,
    ShardFilesArg,
    ShardOpt,
    SkipNonfiniteOpt,
    SpeedOpt,
    TargetOpt,
    ThreadsOpt,
    TopKOpt,
    VersionOpt,
    WeightBitsOpt,
    WeightMethodOpt,
    WeightSymmetricOpt,
    WorkerCpusOpt,
    WorkersOpt,
    WriteExcludeOpt,
)
from quantcli.cli.progress import StageDisplay
from quantcli.cli.text import markup, shown
from quantcli.config import (
    CompareConfig,
    GateMetric,
    Overrides,
    QuantConfig,
    Recipe,
    TargetName,
    expand_patterns,
    load_recipe,
    merge,
    pattern_files,
    recipe_from_report,
)
from quantcli.errors import ConfigError

if TYPE_CHECKING:
    from quantcli.batch import BatchJob, JobResult, Settings
    from quantcli.build import Builds
    from quantcli.calibration.file import CalibrationFile
    from quantcli.calibration.sampling import Shard
    from quantcli.calibration.sources import DataSource
    from quantcli.diagnose import LayerDiagnosis
    from quantcli.evaluate import GateResult
    from quantcli.graph.output import StagedOutput
    from quantcli.pipeline import Collector

app = typer.Typer(
    name="quantcli",
    help="Post-training int8 quantization of ONNX models (QDQ format for onnxruntime).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",  # help text is markup: a literal bracket is written \[
    context_settings={"help_option_names": ["-h", "--help"]},
)


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


def _builds(options: Any) -> Builds | None:
    if options is None:
        return None
    from quantcli import distributed

    return distributed.RayBuilds(options)


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
    for package in ("onnx", "onnxruntime", "onnx-ir", "numpy", "openvino"):
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


@dataclass(frozen=True)
class _Sink:
    """Where a command's results go: tables on ``console`` (stderr), or one JSON document."""

    console: Console
    as_json: bool
    quiet: bool

    @classmethod
    def of(cls, quiet: bool, as_json: bool) -> _Sink:
        return cls(_stderr(quiet, as_json), as_json, quiet)

    def result(self, document: dict[str, Any], render: Callable[[], None]) -> None:
        """The JSON document on stdout under --json, else the tables ``render`` prints."""
        if self.as_json:
            _print_json(document)
        else:
            render()


@dataclass(frozen=True)
class _Ray:
    """--ray and its options, as given."""

    enabled: bool
    address: str | None
    workers: int | None
    cpus: int

    def session(self) -> Any:
        return _on_ray(self.enabled, self.address, self.workers, self.cpus)


@dataclass(frozen=True)
class _Inputs:
    """The data flags of convert and calibrate."""

    data: Path | None
    loader: str | None
    preprocess: str | None
    eval_data: Path | None
    labels: Path | None

    def source(self) -> DataSource | None:
        return _source(self.data, self.loader, self.preprocess)

    def evaluation(self) -> DataSource | None:
        """The evaluation data, preprocessed as the calibration data is."""
        return _source(self.eval_data, None, self.preprocess) if self.eval_data is not None else None


@dataclass(frozen=True)
class _ReportFiles:
    """The report files convert and compare write beside their result: staged with it, so all
    are moved into place together or none is."""

    report: Path | None
    markdown: Path | None
    page: Path | None
    exclude: Path | None  # --write-exclude

    @property
    def flags(self) -> dict[str, Path | None]:
        return {
            "--report": self.report,
            "--report-md": self.markdown,
            "--report-html": self.page,
            "--write-exclude": self.exclude,
        }

    @property
    def need_diagnosis(self) -> bool:
        """The exclude file and the HTML page's chart come from the per-layer diagnosis."""
        return self.exclude is not None or self.page is not None

    def check(self, *, force: bool) -> None:
        from quantcli.graph.output import check_writable

        for path in self.flags.values():
            if path is not None:
                check_writable(path, force=force)

    def stage(
        self, staging: StagedOutput, report: dict[str, Any], command: str, per_layer: LayerDiagnosis | None
    ) -> dict[str, Any]:
        """Stage every file asked for; returns the report document (as --json prints it)."""
        from quantcli.pages import html_report, markdown_report

        document = report | {"versions": _versions(), "command": command}
        dated = document | {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
        if self.report is not None:
            staging.write_bytes(self.report, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())
        if self.markdown is not None:
            staging.write_bytes(self.markdown, markdown_report(dated).encode())
        if self.page is not None:
            staging.write_bytes(self.page, html_report(dated).encode())
        if self.exclude is not None and per_layer is not None:
            staging.write_bytes(self.exclude, per_layer.exclude_file().encode())
        return document


def _base(recipe: Path | None, from_report: Path | None) -> QuantConfig | Recipe:
    """What flags are laid over: a recipe, a report's settings, or the defaults."""
    if recipe is not None and from_report is not None:
        raise typer.BadParameter("give --recipe or --from-report, not both")
    if recipe is not None:
        return load_recipe(recipe)
    if from_report is not None:
        return recipe_from_report(from_report)
    return QuantConfig()


def _config(
    overrides: Overrides,
    recipe: Path | None,
    from_report: Path | None = None,
    calibration: CalibrationFile | None = None,
) -> QuantConfig:
    """Flags over the calibration file's method over the recipe (or a report's settings) over
    the defaults (:func:`quantcli.config.merge`). Flags that contradict each other are a usage
    error (exit 2); a recipe that contradicts a flag, a user error (exit 1)."""
    try:
        merge(QuantConfig(), overrides)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from exc
    return merge(_base(recipe, from_report), overrides, calibration=calibration)


def _recorded(calibration: Path | None, method: object) -> CalibrationFile | None:
    """The calibration file whose method is the default, read only when --method is not given."""
    from quantcli.calibration.file import read_calibration

    return read_calibration(calibration) if calibration is not None and method is None else None


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


@dataclass(frozen=True, kw_only=True)
class _ConvertJob:
    """Everything convert does besides its config: what to read, where to write, how to run."""

    model: Path
    output: Path
    calibration: Path | None
    inputs: _Inputs
    files: _ReportFiles
    reads: dict[str, list[Path | None] | list[Path]]  # the files read besides the model and data
    ray: _Ray
    force: bool
    command: str


@app.command(no_args_is_help=True)
def convert(
    ctx: typer.Context,
    model: ModelArg,
    data: DataOpt = None,
    data_loader: LoaderOpt = None,
    preprocess: PreprocessOpt = None,
    calibration: CalibrationOpt = None,
    eval_data: EvalDataOpt = None,
    labels: LabelsOpt = None,
    batch_size: BatchOpt = None,
    max_samples: MaxSamplesOpt = None,
    seed: SeedOpt = None,
    skip_nonfinite: SkipNonfiniteOpt = False,
    from_report: FromReportOpt = None,
    mode: ModeOpt = None,
    recipe: RecipeOpt = None,
    target: TargetOpt = None,
    activation_type: ActivationTypeOpt = None,
    per_tensor: PerTensorOpt = False,
    exclude: ExcludeOpt = None,
    include: IncludeOpt = None,
    method: MethodOpt = None,
    percentile: PercentileOpt = None,
    weight_method: WeightMethodOpt = None,
    weight_bits: WeightBitsOpt = None,
    block_size: BlockSizeOpt = None,
    weight_symmetric: WeightSymmetricOpt = None,
    block_method: BlockMethodOpt = None,
    bias_correction: BiasCorrectionOpt = False,
    allow_noop: AllowNoopOpt = False,
    metric: MetricOpt = None,
    max_drop: MaxDropOpt = None,
    min_sqnr: MinSqnrOpt = None,
    auto_fallback: AutoFallbackOpt = False,
    auto_alias: AutoAliasOpt = False,
    max_trials: MaxTrialsOpt = None,
    speed: SpeedOpt = None,
    per_layer: PerLayerOpt = False,
    top_k: TopKOpt = None,
    write_exclude: WriteExcludeOpt = None,
    output: ModelOutputOpt = ...,  # type: ignore[assignment]  # required; declared here to list it in the Output panel
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
    out = _Sink.of(quiet, as_json)
    files = _ReportFiles(report, report_md, report_html, write_exclude)
    patterns = [*(exclude or ()), *(include or ())]
    job = _ConvertJob(
        model=model,
        output=output,
        calibration=calibration,
        inputs=_Inputs(data, data_loader, preprocess, eval_data, labels),
        files=files,
        reads={"--recipe": [recipe], "--from-report": [from_report], "@FILE": pattern_files(patterns)},
        ray=_Ray(ray, ray_address, workers, worker_cpus),
        force=force,
        command=_command_line(ctx),
    )

    def run() -> ExitCode | None:
        recorded = _recorded(calibration, method)  # its method is the default: flag > file > recipe
        flags = Overrides(
            target=target,
            activation_type=activation_type,
            per_channel=False if per_tensor else None,
            batch_size=batch_size,
            max_samples=max_samples,
            exclude=expand_patterns(exclude or ()),
            include=expand_patterns(include or ()) or None,
            skip_nonfinite=skip_nonfinite or None,
            allow_noop=allow_noop or None,
            method=method,
            percentile=percentile,
            weight_method=weight_method,
            weight_bits=weight_bits,
            block_size=block_size,
            weight_symmetric=weight_symmetric,
            block_method=block_method,
            bias_correction=bias_correction or None,
            seed=seed,
            mode=mode,
            metric=metric,
            max_drop=max_drop,
            min_sqnr=min_sqnr,
            auto_fallback=auto_fallback or auto_alias or None,
            max_trials=max_trials,
            speed=speed,
            per_layer=per_layer or files.need_diagnosis or None,
            top_k=top_k,
        )
        return _convert(job, _config(flags, recipe, from_report, recorded), out)

    _finish(guarded(run, out.console, debug=debug))


def _convert(job: _ConvertJob, config: QuantConfig, out: _Sink) -> ExitCode | None:
    from quantcli.cli.render import render_report
    from quantcli.graph.output import StagedOutput
    from quantcli.pipeline import quantize

    source, evaluation = job.inputs.source(), job.inputs.evaluation()
    job.files.check(force=job.force)
    # The model and the report files are moved into place together, or none is.
    with (
        job.ray.session() as on_ray,
        StageDisplay(out.console) as progress,
        StagedOutput(force=job.force) as staging,
    ):
        staging.guard.declare(reads=job.reads, writes=job.files.flags)
        result = quantize(
            job.model,
            job.output,
            config=config,
            data=source,
            calibration=job.calibration,
            eval_data=evaluation,
            labels=job.inputs.labels,
            force=job.force,
            progress=progress,
            staging=staging,
            collector=_collector(on_ray),
            builds=_builds(on_ray),
        )
        progress.stage("write")
        document = job.files.stage(staging, result.report.to_dict(), job.command, result.report.per_layer)
        staging.commit()
    out.result(document, lambda: render_report(result.report, out.console))
    _warn(result.report.barely_changed, out.quiet)  # the library logs its own warnings
    return _gate_outcome(result.report.gate, out.quiet)


@app.command("convert-many", no_args_is_help=True)
def convert_many_command(
    models: ModelsArg,
    data: ManyDataOpt = None,
    data_loader: LoaderOpt = None,
    preprocess: PreprocessOpt = None,
    eval_data: EvalDataOpt = None,
    labels: LabelsOpt = None,
    max_samples: MaxSamplesOpt = None,
    seed: SeedOpt = None,
    mode: ModeOpt = None,
    recipe: ManyRecipeOpt = None,
    method: MethodOpt = None,
    metric: MetricOpt = None,
    max_drop: MaxDropOpt = None,
    min_sqnr: MinSqnrOpt = None,
    workers: PoolWorkersOpt = None,
    ray: ManyRayOpt = False,
    ray_address: RayAddressOpt = None,
    worker_cpus: WorkerCpusOpt = 1,
    output_dir: OutputDirOpt = ...,  # type: ignore[assignment]  # required; declared here to list it in the Output panel
    force: ForceOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Convert every model with its own settings; one failure never stops the others. Ends with a
    summary table (and one JSON document with --json) and exits with the worst model's code."""
    out = _Sink.of(quiet, as_json)
    flags = Overrides(
        mode=mode,
        metric=metric,
        max_drop=max_drop,
        min_sqnr=min_sqnr,
        method=method,
        max_samples=max_samples,
        seed=seed,
    )

    def run() -> ExitCode:
        from quantcli.batch import Settings

        manifest = _manifest(models)
        if ray and workers is not None:
            raise typer.BadParameter("--workers sizes the local pool; with --ray the cluster decides")
        settings = Settings(
            out_dir=output_dir,
            data=_source(data, data_loader, preprocess),
            eval_data=eval_data,
            labels=labels,
            recipe=recipe,
            overrides=flags,
            force=force,
        )
        jobs = _batch_jobs(models, manifest, settings)
        results = _convert_all(jobs, _Ray(ray, ray_address, None, worker_cpus), workers, out.console)
        return _show_batch(results, out)

    _finish(guarded(run, out.console, debug=debug))


def _manifest(models: Sequence[Path]) -> Path | None:
    """The TOML manifest given, if one is (then alone)."""
    manifests = [m for m in models if m.suffix == ".toml"]
    if manifests and len(models) > 1:
        raise typer.BadParameter(f"{shown(manifests[0])}: a manifest lists every model; give it alone")
    return manifests[0] if manifests else None


def _batch_jobs(models: Sequence[Path], manifest: Path | None, settings: Settings) -> list[BatchJob]:
    """The batch's jobs, from paths or one manifest; the output folder made ready."""
    from quantcli.batch import jobs_from_manifest, jobs_from_paths

    jobs = jobs_from_manifest(manifest, settings) if manifest else jobs_from_paths(models, settings)
    if settings.out_dir.exists() and not settings.out_dir.is_dir():
        raise ConfigError(f"{settings.out_dir}: not a folder")
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    return jobs


def _convert_all(
    jobs: Sequence[BatchJob], ray: _Ray, workers: int | None, console: Console
) -> list[JobResult]:
    """Every job's result, in the jobs' order; a line on stderr as each one ends."""
    from quantcli.batch import run_local

    results: list[JobResult] = []

    def finished(result: JobResult) -> None:
        results.append(result)
        console.print(
            f"\\[{len(results)}/{len(jobs)}] {markup(result.name)}: {result.outcome}", highlight=False
        )

    with ray.session() as on_ray:
        if on_ray is None:
            run_local(jobs, workers=workers, on_result=finished)
        else:
            from quantcli import distributed

            distributed.convert_on_ray(jobs, on_ray, finished)
    order = {job.name: index for index, job in enumerate(jobs)}
    return sorted(results, key=lambda r: order[r.name])


def _show_batch(results: Sequence[JobResult], out: _Sink) -> ExitCode:
    """The summary table or document; the worst model's exit code."""
    from quantcli.cli.exits import exit_code
    from quantcli.cli.render import render_batch

    codes = [exit_code(r.outcome) for r in results]
    worst = max(codes, default=ExitCode.OK)
    rows = [r.to_dict() | {"exit_code": int(code)} for r, code in zip(results, codes, strict=True)]
    out.result({"exit_code": int(worst), "models": rows}, lambda: render_batch(rows, out.console))
    return worst


@app.command("compare", no_args_is_help=True)
def compare_command(
    ctx: typer.Context,
    float_model: FloatModelArg,
    quantized_model: QuantizedModelArg,
    data: EvalSamplesOpt,
    labels: LabelsOpt = None,
    batch_size: BatchOpt = None,
    threads: ThreadsOpt = None,
    runs: RunsOpt = 30,
    target: CompareTargetOpt = TargetName.ORT_CPU,
    metric: CompareMetricOpt = GateMetric.AUTO,
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
    out = _Sink.of(quiet, as_json)
    files = _ReportFiles(report, report_md, report_html, write_exclude)
    job = _CompareJob(float_model, quantized_model, data, labels, files, force, _command_line(ctx))

    def run() -> ExitCode | None:
        try:
            config = CompareConfig(
                threads=threads,
                batch_size=CompareConfig.batch_size if batch_size is None else batch_size,
                latency_runs=runs,
                per_layer=per_layer or files.need_diagnosis,
                top_k=CompareConfig.top_k if top_k is None else top_k,
                metric=metric,
                max_drop=max_drop,
                min_sqnr=min_sqnr,
                target=target,
            )
        except ConfigError as exc:
            raise typer.BadParameter(str(exc)) from exc
        return _compare(job, config, out)

    _finish(guarded(run, out.console, debug=debug))


@dataclass(frozen=True)
class _CompareJob:
    """Everything compare does besides its config."""

    float_model: Path
    quantized_model: Path
    data: Path
    labels: Path | None
    files: _ReportFiles
    force: bool
    command: str


def _compare(job: _CompareJob, config: CompareConfig, out: _Sink) -> ExitCode | None:
    from quantcli.cli.render import gate_line, render_compare
    from quantcli.comparison import compare
    from quantcli.graph.guard import PathGuard
    from quantcli.graph.output import StagedOutput

    job.files.check(force=job.force)
    guard = PathGuard()
    guard.declare(reads={}, writes=job.files.flags)
    with StageDisplay(out.console) as progress:
        result = compare(
            job.float_model,
            job.quantized_model,
            job.data,
            config,
            labels=job.labels,
            progress=progress,
            guard=guard,
        )
        progress.stage("write")
        with StagedOutput(force=job.force, guard=guard) as staging:
            document = job.files.stage(staging, result.to_dict(), job.command, result.per_layer)
            staging.commit()

    def render() -> None:
        render_compare(result, out.console)
        if result.gate is not None:
            out.console.print(gate_line(result.gate), markup=False, highlight=False)

    out.result(document, render)
    return _gate_outcome(result.gate, out.quiet)


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
    shard: ShardOpt = None,
    mode: ModeOpt = None,
    recipe: RecipeOpt = None,
    target: TargetOpt = None,
    method: RecordedMethodOpt = None,
    percentile: PercentileOpt = None,
    metric: MetricOpt = None,
    max_drop: ChoiceMaxDropOpt = None,
    output: CalibrationOutputOpt = ...,  # type: ignore[assignment]  # required; declared here to list it in the Output panel
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
    out = _Sink.of(quiet, as_json)
    job = _CalibrateJob(
        model=model,
        output=output,
        inputs=_Inputs(data, data_loader, preprocess, eval_data, labels),
        shard=_shard(shard),
        ray=_Ray(ray, ray_address, workers, worker_cpus),
        force=force,
    )
    flags = Overrides(
        method=method,
        percentile=percentile,
        batch_size=batch_size,
        max_samples=max_samples,
        seed=seed,
        skip_nonfinite=skip_nonfinite or None,
        mode=mode,
        target=target,
        metric=metric,
        max_drop=max_drop,
    )
    _finish(guarded(lambda: _calibrate(job, _config(flags, recipe), out), out.console, debug=debug))


@dataclass(frozen=True, kw_only=True)
class _CalibrateJob:
    """Everything calibrate does besides its config."""

    model: Path
    output: Path
    inputs: _Inputs
    shard: Shard | None
    ray: _Ray
    force: bool


def _calibrate(job: _CalibrateJob, config: QuantConfig, out: _Sink) -> None:
    from quantcli.calibration.file import write_calibration
    from quantcli.graph.guard import PathGuard
    from quantcli.graph.output import check_writable
    from quantcli.pipeline import calibrate

    if job.shard is not None and (job.inputs.eval_data is not None or job.inputs.labels is not None):
        raise typer.BadParameter(
            "--shard observes part of the data; the mode is decided over all of it (no --eval-data)"
        )
    source = job.inputs.source()
    if source is None:
        raise typer.BadParameter("calibrate needs samples: give --data or --data-loader")
    check_writable(job.output, force=job.force)
    guard = PathGuard()
    guard.writes(job.output, "-o")
    evaluation = job.inputs.evaluation()
    if job.ray.enabled and job.shard is not None:
        raise typer.BadParameter("--shard observes one part here; --ray splits the samples itself")
    with job.ray.session() as on_ray, StageDisplay(out.console) as progress:
        result = calibrate(
            job.model,
            source,
            config=config,
            shard=job.shard,
            eval_data=evaluation,
            labels=job.inputs.labels,
            progress=progress,
            collector=_collector(on_ray),
            guard=guard,
        )
        progress.stage("write")
        write_calibration(result, job.output, force=job.force, guard=guard)
    _show_calibration(result, job.output, out.console, as_json=out.as_json)


@calibrate_app.command("merge", no_args_is_help=True)
def merge_command(
    files: ShardFilesArg,
    output: MergedOutputOpt,
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
    exclude: InspectExcludeOpt = None,
    include: InspectIncludeOpt = None,
    recipe: InspectRecipeOpt = None,
    mode: InspectModeOpt = None,
    target: TargetOpt = None,
    calibration: InspectCalibrationOpt = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show MODEL's inputs, outputs, size, ops, and what convert would quantize and why."""

    def run() -> None:
        from quantcli.cli.render import render_summary
        from quantcli.inspection import inspect_model

        flags = Overrides(
            exclude=expand_patterns(exclude or ()),
            include=expand_patterns(include or ()) or None,
            mode=mode,
            target=target,
        )
        summary = inspect_model(model, _config(flags, recipe), calibration=calibration)
        if as_json:
            _print_json(summary.to_dict())
        else:
            render_summary(summary, Console())  # the summary is this command's data: stdout

    _finish(guarded(run, Console(stderr=True), debug=debug))


@app.callback(invoke_without_command=True)
def main_callback(
    version: VersionOpt = False,
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
