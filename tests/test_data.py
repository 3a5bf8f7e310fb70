"""Calibration data sources and their up-front validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quantcli.calibration.data import InputSpec, open_dataset
from quantcli.errors import CalibrationDataError

IMAGE = InputSpec("image", np.dtype(np.float32), (None, 3, 4, 4))
TOKENS = InputSpec("tokens", np.dtype(np.int64), (None, 5))


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, 4, 4)).astype(np.float32)


def test_npz_file_batches_in_order(tmp_path: Path) -> None:
    arrays = _images(10)
    np.savez(tmp_path / "d.npz", image=arrays)
    dataset = open_dataset(tmp_path / "d.npz", (IMAGE,))
    assert dataset.num_samples == 10
    batches = list(dataset.batches(4))
    assert [b.arrays["image"].shape[0] for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b.arrays["image"] for b in batches]), arrays)


def test_folder_of_single_samples_and_batches(tmp_path: Path) -> None:
    arrays = _images(5)
    np.savez(tmp_path / "a.npz", image=arrays[0])  # one sample, no batch axis
    np.savez(tmp_path / "b.npz", image=arrays[1:5])  # a batch of four
    dataset = open_dataset(tmp_path, (IMAGE,))
    assert dataset.num_samples == 5
    np.testing.assert_array_equal(np.concatenate([b.arrays["image"] for b in dataset.batches(3)]), arrays)


def test_folder_of_npy_for_single_input(tmp_path: Path) -> None:
    for i in range(3):
        np.save(tmp_path / f"{i}.npy", _images(1, seed=i)[0])
    assert open_dataset(tmp_path, (IMAGE,)).num_samples == 3
    with pytest.raises(CalibrationDataError, match="single-input model"):
        open_dataset(tmp_path, (IMAGE, TOKENS))


def test_split_is_disjoint_and_deterministic(tmp_path: Path) -> None:
    arrays = _images(10)
    np.savez(tmp_path / "d.npz", image=arrays)
    kept, held = open_dataset(tmp_path / "d.npz", (IMAGE,)).split(0.2)
    assert (kept.num_samples, held.num_samples) == (8, 2)
    np.testing.assert_array_equal(
        np.concatenate(list(b.arrays["image"] for b in held.batches(8))), arrays[8:]
    )


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"img": _images(2)}, "missing input(s) image; unknown name(s) img"),
        ({"image": _images(2).astype(np.float64)}, "expects float32[?,3,4,4], got float64[2,3,4,4]"),
        ({"image": _images(2)[:, :, :2]}, "expects float32[?,3,4,4], got float32[2,3,2,4]"),
        ({"image": _images(2)[:, 0]}, "expects float32[?,3,4,4], got float32[2,4,4]"),
        ({"image": np.zeros((0, 3, 4, 4), np.float32)}, "holds no samples"),
    ],
)
def test_mismatches_name_file_input_expected_and_got(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(CalibrationDataError) as info:
        open_dataset(path, (IMAGE,))
    assert str(path) in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_nan_is_refused(tmp_path: Path) -> None:
    arrays = _images(3)
    arrays[1, 0, 0, 0] = np.nan
    np.savez(tmp_path / "d.npz", image=arrays)
    with pytest.raises(CalibrationDataError, match="1 NaN or Inf"):
        open_dataset(tmp_path / "d.npz", (IMAGE,))


def test_pickled_objects_are_never_loaded(tmp_path: Path) -> None:
    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CalibrationDataError, match="pickled"):
        open_dataset(path, (IMAGE,))


def test_empty_folder_missing_path_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(CalibrationDataError, match=r"holds no \.npz or \.npy"):
        open_dataset(tmp_path, (IMAGE,))
    with pytest.raises(CalibrationDataError, match="no such file"):
        open_dataset(tmp_path / "nope.npz", (IMAGE,))
    garbage = tmp_path / "g.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(CalibrationDataError, match=r"not a readable numpy \.npz file"):
        open_dataset(garbage, (IMAGE,))


def test_fixed_batch_of_one_is_fed_sample_by_sample(tmp_path: Path) -> None:
    spec = InputSpec("image", np.dtype(np.float32), (1, 3, 4, 4))
    np.savez(tmp_path / "d.npz", image=_images(3))
    feeds = list(open_dataset(tmp_path / "d.npz", (spec,)).batches(16))
    assert [f.arrays["image"].shape for f in feeds] == [(1, 3, 4, 4)] * 3
