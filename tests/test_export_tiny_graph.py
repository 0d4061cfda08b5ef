"""export_onnx on a tiny stand-in detector (anything with `predict`): a dynamic-batch graph is
checked at more than one batch size, declares its outputs' shapes, and carries the metadata given."""

from __future__ import annotations

import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from realnet.export.onnx import export_onnx  # noqa: E402

SIZE = 8


class TinyDetector(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)

    @torch.no_grad()
    def predict(self, images):
        maps = torch.sigmoid(self.conv(images))[:, 0]
        return maps, maps.flatten(1).amax(dim=1)


@pytest.mark.parametrize("dynamic", [True, False])
def test_parity_batch_sizes_metadata_and_output_shapes(tmp_path, dynamic):
    torch.manual_seed(0)
    images = torch.rand((3, 3, SIZE, SIZE))
    out = tmp_path / "m.onnx"
    metadata = {"threshold": "0.25", "image_size": str(SIZE)}
    report = export_onnx(TinyDetector(), out, image_size=SIZE, metadata=metadata, parity_images=images,
                         dynamic_batch=dynamic)
    # a dynamic graph is traced at one batch size and must be checked at others: all images at
    # once, and one by one
    assert report.parity.batch_sizes == ((3, 1) if dynamic else (1,))
    assert report.parity.passed
    proto = onnx.load(str(out))
    assert {p.key: p.value for p in proto.metadata_props} == metadata
    batch = "batch" if dynamic else 1
    shapes = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in proto.graph.output}
    assert shapes == {"anomaly_map": [batch, SIZE, SIZE], "score": [batch]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]

