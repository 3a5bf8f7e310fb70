"""Observers, histograms, calibration methods, calibration files, shards and merging."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from quantcli.calibration.collect import collect_stats
from quantcli.calibration.data import Dataset, model_inputs, open_dataset
from quantcli.calibration.histogram import BINS, Histogram, exponent_for
from quantcli.calibration.methods import (
    entropy_range,
    kl_divergences,
    mse_range,
    percentile_range,
)
from quantcli.calibration.observers import HistogramObserver, MinMaxObserver, TensorStats
from quantcli.calibration.sampling import Part, Selection, Shard, select_samples
from quantcli.cli.app import app
from quantcli.errors import ConfigError
from quantcli.pipeline import ShardWork, observe_shard
from quantcli.scheme import dequantize, quantize, weight_qparams

runner = CliRunner()
HALF = BINS // 2


def observe(*batches: np.ndarray) -> TensorStats:
    observer = HistogramObserver()
    for batch in batches:
        observer.update(np.asarray(batch, np.float32))
    return observer.result()


# --------------------------------------------------------------------------- histogram


def test_exponent_is_the_narrowest_power_of_two_that_holds_the_magnitude() -> None:
    assert exponent_for(1.0) == -10  # 1.0 < 2048 * 2**-10 = 2, and not < 2048 * 2**-11 = 1
    assert exponent_for(0.999) == -11
    assert exponent_for(0.0) == exponent_for(1e-40)


def test_values_land_in_hand_computed_bins() -> None:
    hist = Histogram.empty().added(np.array([0.5, -0.25, 1.0, -1e-45], np.float32))
    assert hist.exponent == -10
    nonzero = {int(i) - HALF: int(hist.counts[i]) for i in np.flatnonzero(hist.counts)}
    # 0.5 / 2**-10 = 512, -0.25 -> -256, 1.0 -> 1024; a tiny negative value is in bin -1, not 0
    assert nonzero == {512: 1, -256: 1, 1024: 1, -1: 1}


def test_widening_keeps_every_count_and_equals_a_direct_pass() -> None:
    small = np.array([0.1, -0.3, 0.7], np.float32)
    large = np.array([5.0, -40.0], np.float32)
    stepwise = Histogram.empty().added(small).added(large)
    direct = Histogram.empty().added(np.concatenate([small, large]))
    assert stepwise.exponent == direct.exponent == exponent_for(40.0)
    assert np.array_equal(stepwise.counts, direct.counts) and stepwise.total == 5


arrays = st.lists(
    st.tuples(
        st.floats(-8, 8, allow_nan=False), st.floats(0.001, 1000), st.integers(1, 50), st.integers(0, 2**16)
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(batches=arrays, shards=st.integers(1, 4))
def test_merging_shards_equals_one_pass(batches: list[tuple[float, float, int, int]], shards: int) -> None:
    data = [
        np.random.default_rng(seed).normal(loc, scale, size).astype(np.float32)
        for loc, scale, size, seed in batches
    ]
    whole = observe(*data)
    parts = [observe(*data[k::shards]) for k in range(shards) if data[k::shards]]
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.merged(part)
    assert merged.min == whole.min and merged.max == whole.max and merged.count == whole.count
    assert merged.histogram is not None and whole.histogram is not None
    assert merged.histogram.exponent == whole.histogram.exponent
    assert np.array_equal(merged.histogram.counts, whole.histogram.counts)
    # and the order of batches does not matter either
    reverse = observe(*data[::-1])
    assert reverse.histogram is not None and np.array_equal(reverse.histogram.counts, whole.histogram.counts)


# --------------------------------------------------------------------------- observers and methods


def test_minmax_observer_is_exact() -> None:
    observer = MinMaxObserver()
    observer.update(np.array([1.5, -2.25], np.float32))
    observer.update(np.array([[7.0]], np.float32))
    result = observer.result()
    assert (result.min, result.max, result.count) == (-2.25, 7.0, 3)


def test_percentile_clips_each_tail() -> None:
    # 990 values in [0, 1) and 10 at 100: the 99th percentile is below 1, the 100th is 100.
    values = np.concatenate([np.linspace(0, 0.99, 990), np.full(10, 100.0)])
    stats = observe(values)
    assert stats.histogram is not None
    kept = percentile_range(stats, 99.0)
    width = stats.histogram.width
    assert kept.min == 0.0 and 0.99 <= kept.max <= 0.99 + width
    assert percentile_range(stats, 100.0).max == 100.0


def test_percentile_of_symmetric_data_is_symmetric() -> None:
    values = np.arange(-1000, 1001, dtype=np.float32)  # 2001 values
    stats = observe(values)
    kept = percentile_range(stats, 99.0)  # about 20 values off each end
    assert kept.min == pytest.approx(-980, abs=2) and kept.max == pytest.approx(980, abs=2)


def test_entropy_ignores_a_lone_outlier() -> None:
    values = np.concatenate([np.random.default_rng(0).uniform(-1, 1, 100_000), [50.0]])
    stats = observe(values)
    entropy = entropy_range(stats)
    # bins are 2**-5 wide (50 < 2048 * 2**-5) and the narrowest threshold is 128 bins: 4.0
    assert 0.9 < entropy.max <= 4.0 and -4.0 <= entropy.min < -0.9
    # mse keeps it: one value clipped by 46 costs more than the rounding noise of 100,000 values
    # in a range 25 times wider (100000 * (51 / 255) ** 2 / 12 = 333 < 46 ** 2)
    assert mse_range(stats).max > 40


def test_mse_clips_heavy_tails() -> None:
    stats = observe(np.random.default_rng(0).standard_t(4, 200_000))
    mse = mse_range(stats)
    assert stats.max > mse.max > 1.0 and stats.min < mse.min < -1.0
    symmetric = mse_range(stats, symmetric=True)
    assert symmetric.max > 1.0
    # on an outlier-free uniform tensor they keep (nearly) the whole range
    uniform = observe(np.random.default_rng(1).uniform(-1, 1, 100_000))
    assert entropy_range(uniform).max > 0.9 and mse_range(uniform).max > 0.9


def test_methods_never_widen_the_observed_range() -> None:
    stats = observe(np.array([0.0, 0.5, 3.0], np.float32))
    for chosen in (entropy_range(stats), mse_range(stats), percentile_range(stats, 99.0)):
        assert stats.min <= chosen.min <= chosen.max <= stats.max


def _naive_kl(magnitudes: np.ndarray, bins: int) -> float:
    kept = magnitudes[:bins]
    reference = kept.copy()
    reference[-1] += magnitudes[bins:].sum()
    bounds = (np.arange(129) * bins) // 128
    candidate = np.zeros(bins)
    for k in range(128):
        segment = kept[bounds[k] : bounds[k + 1]]
        if (segment > 0).any():
            candidate[bounds[k] : bounds[k + 1]][segment > 0] = segment.sum() / (segment > 0).sum()
    if candidate[-1] == 0:  # the smoothing of the last bin, a 1e-4 share of an average bin
        candidate[-1] = 1e-4 * kept.sum() / bins
    p, q = reference / reference.sum(), candidate / kept.sum()
    support = p > 0
    if np.any(q[support] == 0):
        return float("inf")
    return float(np.sum(p[support] * np.log(p[support] / q[support])))


def test_vectorized_kl_equals_the_direct_sum() -> None:
    rng = np.random.default_rng(0)
    magnitudes = rng.integers(0, 50, 400).astype(np.float64)
    magnitudes[rng.random(400) < 0.2] = 0
    magnitudes[-1] = 3
    direct = [_naive_kl(magnitudes, b) for b in range(128, 401)]
    assert np.allclose(kl_divergences(magnitudes), direct, rtol=1e-9, atol=1e-12)


def test_weight_mse_clips_an_outlier_channel_and_lowers_the_error() -> None:
    rng = np.random.default_rng(0)
    weight = (0.05 * rng.standard_t(3, (4, 4096))).astype(np.float32)  # heavy tails
    plain = weight_qparams(weight, 0)
    clipped = weight_qparams(weight, 0, minimize_mse=True)
    assert np.all(clipped.scale <= plain.scale) and np.any(clipped.scale < plain.scale)

    def error(qparams: object) -> float:
        return float(np.sum((dequantize(quantize(weight, qparams), qparams) - weight) ** 2))  # type: ignore[arg-type]

    assert error(clipped) < error(plain)


# --------------------------------------------------------------------------- collection, sampling


def test_memory_budget_splits_passes_without_changing_the_result(cnn: tuple[Path, Path]) -> None:
    model_path, data = cnn
    model = ir.load(model_path)
    dataset = open_dataset(data, model_inputs(model))
    names = ["c1", "r1", "c2", "sum", "logits"]
    one = collect_stats(model, names, dataset, batch_size=8, histograms=True)
    passes: list[int] = []
    many = collect_stats(
        model, names, dataset, batch_size=8, histograms=True, budget=1, progress=lambda d, t: passes.append(t)
    )
    assert passes[-1] == 5 * dataset.num_samples  # one pass per tensor
    for name in names:
        assert one[name].min == many[name].min and one[name].max == many[name].max
        assert np.array_equal(one[name].histogram.counts, many[name].histogram.counts)  # type: ignore[union-attr]


def test_seeded_shards_are_disjoint_and_cover_the_selection(cnn: tuple[Path, Path]) -> None:
    model_path, data = cnn
    dataset = open_dataset(data, model_inputs(ir.load(model_path)))
    sizes = [
        select_samples(dataset, max_samples=30, seed=3, shard=Shard(k, 4)).num_samples for k in (1, 2, 3, 4)
    ]
    assert sum(sizes) == 30
    with pytest.raises(ConfigError):
        Shard.parse("5/4")
    with pytest.raises(ConfigError):
        Shard.parse("half")


# --------------------------------------------------------------------------- files and CLI


def test_shards_merged_equal_one_run_through_the_cli(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    whole, a, b, merged = (tmp_path / f"{n}.json" for n in ("whole", "a", "b", "merged"))
    base = ["calibrate", str(model), "--data", str(data), "--seed", "7", "--batch-size", "3"]
    assert runner.invoke(app, [*base, "-o", str(whole)]).exit_code == 0
    assert runner.invoke(app, [*base, "--shard", "1/2", "-o", str(a)]).exit_code == 0
    assert runner.invoke(app, [*base, "--shard", "2/2", "-o", str(b)]).exit_code == 0
    result = runner.invoke(app, ["calibrate", "merge", str(a), str(b), "-o", str(merged), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["shards"] == ["1/2", "2/2"]
    one, two = json.loads(whole.read_text()), json.loads(merged.read_text())
    assert one["tensors"] == two["tensors"] and one["num_samples"] == two["num_samples"] == 40
    again = runner.invoke(app, ["calibrate", "merge", str(a), str(a), "-o", str(tmp_path / "x.json")])
    assert again.exit_code == 1 and "merged once" in again.stderr
    copy = tmp_path / "copy.json"
    copy.write_bytes(a.read_bytes())
    twice = runner.invoke(app, ["calibrate", "merge", str(a), str(copy), "-o", str(tmp_path / "x.json")])
    assert twice.exit_code == 1 and "shard 1/2" in twice.stderr


def test_convert_chooses_the_method_after_calibration(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    calib = tmp_path / "c.json"
    assert (
        runner.invoke(
            # static: the file then records a mode that uses the ranges whatever the timings say
            app,
            [
                "calibrate",
                str(model),
                "-d",
                str(data),
                "-o",
                str(calib),
                "--method",
                "mse",
                "--mode",
                "static",
            ],
        ).exit_code
        == 0
    )
    methods = {}
    for flag in ([], ["--method", "entropy"], ["--method", "percentile", "--percentile", "99.9"]):
        out = tmp_path / f"q{len(methods)}.onnx"
        result = runner.invoke(
            app,
            [
                "convert",
                str(model),
                "-o",
                str(out),
                "-c",
                str(calib),
                "--eval-data",
                str(data),
                "--json",
                *flag,
            ],
        )
        assert result.exit_code == 0, result.output
        document = json.loads(result.stdout)
        methods[document["calibration"]["method"]] = document["fidelity"]["outputs"][0]["cosine_mean"]
    assert set(methods) == {"mse", "entropy", "percentile(99.9)"}  # no flag: the file's method
    assert methods["mse"] > 0.99 and methods["percentile(99.9)"] > 0.99
    assert methods["entropy"] > 0.9  # clips hard on this random-input network: it is no panacea


def test_other_file_versions_are_refused_in_one_line(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    calib = tmp_path / "c.json"
    assert runner.invoke(app, ["calibrate", str(model), "-d", str(data), "-o", str(calib)]).exit_code == 0
    document = json.loads(calib.read_text())
    document["version"] = 2
    calib.write_text(json.dumps(document))
    result = runner.invoke(app, ["convert", str(model), "-o", str(tmp_path / "q.onnx"), "-c", str(calib)])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "version 2 is not supported" in result.stderr and str(calib) in result.stderr


def test_convert_with_data_and_histogram_method(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    out = tmp_path / "q.onnx"
    result = runner.invoke(
        app,
        [
            "convert",
            str(model),
            "-o",
            str(out),
            "-d",
            str(data),
            "--method",
            "entropy",
            "--weight-method",
            "mse",
            "--max-samples",
            "20",
            "--seed",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["calibration"]["method"] == "entropy" and document["calibration"]["samples"] == 16


def test_infinities_saturate_and_nan_is_reported() -> None:
    observer = HistogramObserver()
    observer.update(np.array([-np.inf, -1.0, 2.0], np.float32))  # an attention mask's -inf
    result = observer.result()
    assert (result.min, result.max, result.count) == (-1.0, 2.0, 2)
    observer.update(np.array([np.nan, 0.0], np.float32))
    assert not observer.finite


def test_an_empty_tensor_gets_a_zero_range() -> None:
    observer = HistogramObserver()
    observer.update(np.zeros((0,), np.float32))
    result = observer.result()
    assert (result.min, result.max, result.count) == (0.0, 0.0, 0)


def test_recipe_sets_the_method_and_a_flag_overrides_it(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    recipe = tmp_path / "r.toml"
    recipe.write_text('[defaults]\nmethod = "percentile"\npercentile = 99.9\nweight_method = "mse"\n')
    base = ["convert", str(model), "-d", str(data), "--recipe", str(recipe), "--json", "--force"]
    result = runner.invoke(app, [*base, "-o", str(tmp_path / "a.onnx")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["calibration"]["method"] == "percentile(99.9)"
    result = runner.invoke(app, [*base, "-o", str(tmp_path / "b.onnx"), "--method", "mse"])
    assert json.loads(result.stdout)["calibration"]["method"] == "mse"


@pytest.mark.parametrize("part", list(Part))
def test_a_selection_splits_each_part_into_disjoint_shards_that_cover_it(
    cnn: tuple[Path, Path], part: Part
) -> None:
    model_path, data = cnn
    dataset = open_dataset(data, model_inputs(ir.load(model_path)))
    selection = Selection(max_samples=33, seed=5, part=part, eval_fraction=0.2)

    def rows(chosen: Dataset) -> list[bytes]:
        return [row.tobytes() for feed in chosen.batches(64) for row in feed.arrays["image"]]

    whole = rows(selection.apply(dataset))
    shards = [rows(selection.apply(dataset, Shard(k, 3))) for k in (1, 2, 3)]
    assert sorted(whole) == sorted(r for shard in shards for r in shard)
    assert len(whole) == {Part.ALL: 33, Part.KEPT: 26, Part.HELD_BACK: 7}[part]
    if part is Part.ALL:  # exactly --shard K/N
        assert shards[1] == rows(select_samples(dataset, max_samples=33, seed=5, shard=Shard(2, 3)))


def test_shards_observed_apart_merge_into_the_stats_of_one_pass(cnn: tuple[Path, Path]) -> None:
    model_path, data = cnn
    tensors = ("c1", "sum", "logits")
    work = ShardWork(model_path, data, tensors, Selection(None, 3), False, 4, True, "", 40)
    one = observe_shard(work).stats
    parts = [observe_shard(work, Shard(k, 3), threads=1) for k in (3, 1, 2)]
    assert sum(p.num_samples for p in parts) == 40
    merged = parts[0].stats
    for part in parts[1:]:
        merged = {name: s.merged(part.stats[name]) for name, s in merged.items()}
    for name in tensors:
        assert (merged[name].min, merged[name].max, merged[name].count) == (
            one[name].min,
            one[name].max,
            one[name].count,
        )
        assert np.array_equal(merged[name].histogram.counts, one[name].histogram.counts)  # type: ignore[union-attr]
