"""An earlier export into the run folder, with its external weights file
(model.onnx.data), is replaced; the run's own files are still refused."""

from __future__ import annotations

import pytest

pytest.importorskip("onnx")
from realnet.export.onnx import _refuse_overwriting_the_run  # noqa: E402
from realnet.errors import RealnetError  # noqa: E402


def test_an_earlier_export_with_external_weights_in_the_run_folder_may_be_replaced(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "model.safetensors").write_bytes(b"weights")
    (run_dir / "model.onnx").write_bytes(b"graph")
    (run_dir / "model.onnx.data").write_bytes(b"external weights")
    (run_dir / "Model.ONNX").write_bytes(b"graph")
    _refuse_overwriting_the_run(run_dir, run_dir / "model.onnx")  # graph and .data both an earlier export
    _refuse_overwriting_the_run(run_dir, run_dir / "Model.ONNX")
    with pytest.raises(RealnetError, match="model.safetensors is a file of the run being exported"):
        _refuse_overwriting_the_run(run_dir, run_dir / "model.safetensors")
