"""``compare``: a float model and a quantized one on the same samples, side by side.

Fidelity per output, accuracy against labels, sizes, latency (warm-up, then the two models
alternate run by run), and optionally the per-layer diagnosis, all on the engine of
``config.target`` (onnxruntime, or OpenVINO's CPU plugin with ``--target openvino``). Works on any
pair of models with the same inputs and outputs, whoever quantized them.
"""

from __future__ import annotations

from pathlib import Path

from quantcli.calibration.collect import Progress, reporting, stage
from quantcli.calibration.data import model_inputs
from quantcli.calibration.sources import DataSource, open_source, source_paths
from quantcli.config import CompareConfig
from quantcli.diagnose import diagnose
from quantcli.engine import require, summary
from quantcli.errors import ConfigError
from quantcli.evaluate import compare_models, first_sample, gate, load_labels, measure_latency
from quantcli.graph.guard import PathGuard
from quantcli.graph.io import (
    ModelFile,
    external_files,
    external_folder,
    load_model,
    open_session,
    serialize,
)
from quantcli.report import CompareReport, SizeSummary
from quantcli.target import TARGETS

__all__ = ["compare"]


def compare(
    float_path: Path,
    quantized_path: Path,
    data: DataSource,
    config: CompareConfig | None = None,
    *,
    labels: Path | None = None,
    progress: Progress | None = None,
    guard: PathGuard | None = None,
) -> CompareReport:
    """Measure ``quantized_path`` against ``float_path`` on the samples in ``data``; with a
    bound in ``config`` (``max_drop`` points of ``metric``, or ``min_sqnr`` dB) the report's gate
    says whether the quantized model meets it, exactly as ``quantize`` judges its own output.

    Each model's external data is read from its own folder, never the current one. ``guard``
    holds the files the caller will write (see :mod:`quantcli.graph.guard`).
    """
    config = config or CompareConfig()
    # Comparing for a target is timing on its engine: nothing else could answer it.
    require(TARGETS[config.target], f"compare --target {config.target}")
    guard = guard if guard is not None else PathGuard()
    guard.reads(float_path, "the float model")
    guard.reads(quantized_path, "the quantized model")
    for path in source_paths(data):
        guard.reads(path, "--data")
    if labels is not None:
        guard.reads(labels, "--labels")
    with reporting(progress):
        reference_file, candidate_file = _load_pair(float_path, quantized_path, guard)
        return _compare(reference_file, candidate_file, data, config, labels=labels)


def _load_pair(float_path: Path, quantized_path: Path, guard: PathGuard) -> tuple[ModelFile, ModelFile]:
    """Both models, refused unless they have the same inputs and outputs."""
    stage("load")
    reference_file, candidate_file = load_model(float_path), load_model(quantized_path)
    for loaded in (reference_file, candidate_file):
        for path in external_files(loaded.model):
            guard.reads(path, f"{loaded.path}'s external data")
    specs = model_inputs(reference_file.model)
    theirs = model_inputs(candidate_file.model)
    if [(s.name, s.dtype) for s in specs] != [(s.name, s.dtype) for s in theirs]:
        raise ConfigError(
            f"{quantized_path}: its inputs ({', '.join(s.describe() for s in theirs)}) differ from "
            f"{float_path}'s ({', '.join(s.describe() for s in specs)}); compare two versions of one model"
        )
    float_outputs = [v.name for v in reference_file.model.graph.outputs]
    quant_outputs = [v.name for v in candidate_file.model.graph.outputs]
    if float_outputs != quant_outputs:
        raise ConfigError(
            f"{quantized_path}: outputs {quant_outputs} differ from {float_path}'s {float_outputs}"
        )
    return reference_file, candidate_file


def _compare(
    reference_file: ModelFile,
    candidate_file: ModelFile,
    data: DataSource,
    config: CompareConfig,
    *,
    labels: Path | None,
) -> CompareReport:
    float_folder, quant_folder = external_folder(reference_file.model), external_folder(candidate_file.model)
    dataset = open_source(data, model_inputs(reference_file.model))
    float_proto, quant_proto = serialize(reference_file.model), serialize(candidate_file.model)
    runtime = TARGETS[config.target]
    reference = open_session(
        float_proto,
        config.threads,
        data_folder=float_folder,
        for_timing=True,
        target=runtime,
        label=str(reference_file.path),
    )
    candidate = open_session(
        quant_proto,
        config.threads,
        data_folder=quant_folder,
        for_timing=True,
        target=runtime,
        label=str(candidate_file.path),
    )
    label_array = load_labels(labels, dataset.num_samples) if labels is not None else None
    stage("evaluate")
    fidelity = compare_models(
        reference, candidate, dataset, batch_size=config.batch_size, source=str(data), labels=label_array
    )
    stage("time")
    latency = measure_latency(
        {"float": reference, "quantized": candidate}, first_sample(dataset), runs=config.latency_runs
    )
    if config.per_layer:
        stage("diagnose")
    diagnosis = (
        diagnose(
            float_proto,
            quant_proto,
            dataset,
            top_k=config.top_k,
            data_folder=float_folder,
            quant_folder=quant_folder,
            runtime=runtime,
        )
        if config.per_layer
        else None
    )
    verdict = None
    bounds = config.bounds
    if bounds.has_gate:
        measured, bound = bounds.gate(has_labels=label_array is not None)
        verdict = gate(fidelity, measured, bound)
    return CompareReport(
        float_model=str(reference_file.path),
        quantized_model=str(candidate_file.path),
        size=SizeSummary(reference_file.size_bytes, candidate_file.size_bytes),
        fidelity=fidelity,
        latency=latency,
        threads=config.threads,
        per_layer=diagnosis,
        gate=verdict,
        engine=summary(runtime, config.threads),
    )
