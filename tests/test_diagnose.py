"""Per-layer diagnosis (quantcli.diagnose) on models whose weights and parameters are external."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from quantcli import QuantConfig, quantize
from quantcli.calibration.data import model_inputs
from quantcli.calibration.sources import open_source
from quantcli.config import QuantMode
from quantcli.diagnose import diagnose
from quantcli.graph.io import load_model
from tests.models import save, tiny_cnn, tiny_cnn_data


def _external(model: onnx.ModelProto, folder: Path) -> onnx.ModelProto:
    """``model`` saved with every tensor (scales and zero points too) in a data file, reloaded
    without it: diagnosis must read them from ``folder``."""
    folder.mkdir()
    onnx.save(model, str(folder / "m.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0)
    return onnx.load(str(folder / "m.onnx"), load_external_data=False)


def test_diagnosis_reads_external_weights_and_parameters(tmp_path: Path) -> None:
    model = save(tiny_cnn(), tmp_path)
    calib = tmp_path / "calib.npz"
    np.savez(calib, **tiny_cnn_data(16))
    quantized = tmp_path / "q.onnx"
    quantize(model, quantized, config=QuantConfig(mode=QuantMode.STATIC), data=calib)
    dataset = open_source(calib, model_inputs(load_model(model).model))
    float_proto, quant_proto = onnx.load(str(model)), onnx.load(str(quantized))
    inline = diagnose(float_proto, quant_proto, dataset, top_k=3, max_samples=4)
    external = diagnose(
        _external(float_proto, tmp_path / "float"),
        _external(quant_proto, tmp_path / "quant"),
        dataset,
        top_k=3,
        max_samples=4,
        data_folder=tmp_path / "float",
        quant_folder=tmp_path / "quant",
    )
    kinds = {t.kind for t in inline.tensors}
    assert kinds == {"weight", "activation"}
    assert sum(t.alone_sqnr_db is not None for t in inline.tensors) == 3
    assert external.tensors == inline.tensors
