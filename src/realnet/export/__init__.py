"""Deployable exports of a finished run (ONNX: `realnet.export.onnx`)."""
