"""ONNX export of a finished run's whole inference graph, checked against PyTorch with onnxruntime.

The exported graph is RealNet's own ``predict``: images in [0, 1] of shape (B, 3, S, S) ->
backbone -> feature selection -> reconstruction -> residuals -> RRS (eval-mode BatchNorm, top-k
and gather) -> discriminator -> softmax -> (position normalisation or the fusion with the
feature-density and/or memory-bank maps, when the run has them) ->
anomaly map (B, S, S) and image score (B,). The spatial size S is the run's training size and is
fixed in the graph; the batch is 1, or dynamic on request. The run's threshold, image size and backbone identity travel in the model's
``metadata_props``, so a deployment knows when a score is anomalous.

We use torch's TorchScript-based exporter (``dynamo=False``): the torch.export-based one, the
default since torch 2.9, needs the ``onnxscript`` package. Nothing is written at the output path
unless the export and the parity check both succeed. Models over protobuf's 2 GiB limit (the
paper preset is about 2.4 GB in fp32) keep their weights in ``<name>.data`` beside the model.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from realnet import __version__
from realnet.config import TrainConfig, map_kind
from realnet.errors import RealnetError
from realnet.files import cut_to_bytes, missing_folders, remove_stale_staging, removed_on_failure
from realnet.model.realnet import RealNet
from realnet.report.panels import map_display_max

INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_map", "score")
DEFAULT_OPSET = 17
SUPPORTED_OPSETS = range(13, 21)  # 20 is the TorchScript exporter's newest opset in torch 2.x
MAP_TOLERANCE = 1e-4
SCORE_TOLERANCE = 1e-4
PARITY_IMAGES = 3
PARITY_SEED = 0
TRACE_BATCH = 2  # a dynamic graph is traced at 2 and checked at other sizes, so no size is baked in
PROTOBUF_LIMIT_BYTES = 2**31 - 1
INPUT_FORMAT = ("float32 RGB in [0, 1], shape (B, 3, S, S), each 8-bit image straight-resized (no crop) to "
                "S x S as PIL.Image.resize does with Image.BILINEAR, which antialiases when shrinking "
                "(cv2.resize INTER_LINEAR does not, and shifts the scores). Read as realnet predict reads "
                "files (realnet.data.io.read_image): EXIF orientation applied; transparency composited on "
                "black (each channel times alpha / 255, rounded); grey replicated to RGB; grey integer images "
                "wider than 8 bits scaled by round(v * 255 / (2**bits - 1)); colour images, and grey ones with "
                "alpha, of 16 bits a sample keep the high byte (v >> 8, as Pillow decodes them); float images clipped to [0, 1] "
                "and scaled by round(v * 255)")
MAP_FORMATS = {"probability": "anomaly_map float32 (B, S, S), probability in [0, 1]",
               "position": ("anomaly_map float32 (B, S, S), standardised per pixel position against "
                            "normal training images"),
               "fused": ("anomaly_map float32 (B, S, S), discriminator probability fused with the "
                         "feature-density and/or memory-bank distances, about 1 on held-out normal "
                         "training images")}


def score_format(config: Mapping) -> str:
    """How the exported score is computed, so a deployment that pools anomaly_map itself knows
    when it cannot (density.image_weight scores another fusion of the same maps)."""
    kernel = int(config["train"].get("score_kernel", TrainConfig.score_kernel))
    density = config.get("density", {})  # runs fitted before the density fusion have no section
    image_weight = density.get("image_weight")
    pooled = ("anomaly_map" if image_weight in (None, density.get("weight")) else
              f"the maps fused at density weight {image_weight:g} (anomaly_map is fused at "
              f"{density['weight']:g}, so the score is not anomaly_map's)")
    return (f"score float32 (B,), the max of the {kernel} x {kernel} mean of {pooled}; "
            "anomalous when score > threshold")


class InferenceGraph(nn.Module):
    """What is exported: images in [0, 1] (B, 3, S, S) -> (anomaly map (B, S, S), score (B,)),
    computed by the detector's own ``RealNet.predict``."""

    def __init__(self, model: RealNet):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.predict(images)


@dataclass(frozen=True)
class ParityReport:
    """onnxruntime (CPUExecutionProvider) against PyTorch on the same images."""

    n_images: int
    image_source: str  # "test images of <root>/<category>" or "random images"
    batch_sizes: tuple[int, ...]
    max_abs_map_difference: float
    max_abs_score_difference: float
    map_tolerance: float
    score_tolerance: float

    @property
    def passed(self) -> bool:
        return (self.max_abs_map_difference <= self.map_tolerance
                and self.max_abs_score_difference <= self.score_tolerance)


@dataclass(frozen=True)
class ExportReport:
    path: Path
    files: tuple[Path, ...]  # the model, then its external weights file when it has one
    opset: int
    dynamic_batch: bool
    metadata: dict[str, str]
    parity: ParityReport


def export_run(run_dir: str | Path, out: str | Path, *, opset: int = DEFAULT_OPSET,
               dynamic_batch: bool = False, parity_images: int = PARITY_IMAGES,
               map_tolerance: float = MAP_TOLERANCE, score_tolerance: float = SCORE_TOLERANCE,
               external_data: bool | None = None) -> ExportReport:
    """Export a finished run to ONNX at `out` after checking parity on a few of its test images
    (seeded random images when its data cannot be read any more)."""
    from realnet.engine.evaluate import load_run

    require_export_packages()
    check_opset(opset)
    run_dir = Path(run_dir)
    _refuse_a_folder(Path(out))
    _refuse_overwriting_the_run(run_dir, Path(out))
    model, meta = load_run(run_dir, torch.device("cpu"))
    size = int(meta["config"]["train"]["image_size"])
    images, source = parity_inputs(meta, size, parity_images)
    return export_onnx(model, out, image_size=size, metadata=run_metadata(meta), parity_images=images,
                       image_source=source, opset=opset, dynamic_batch=dynamic_batch,
                       map_tolerance=map_tolerance, score_tolerance=score_tolerance,
                       external_data=external_data)


def _refuse_a_folder(out: Path) -> None:
    if not out.name or out.is_dir():  # Path(".").name is empty
        raise RealnetError(f"--out {out} is a folder; give the path of the .onnx file to write")


def _refuse_overwriting_the_run(run_dir: Path, out: Path) -> None:
    """--out runs/x/model.safetensors replaced the run's trained weights with the ONNX graph. An
    earlier export into the run folder (a run writes no .onnx file itself) may be replaced."""
    for target in (out, out.with_name(out.name + ".data")):  # the graph and its external weights
        earlier_export = target.name.lower().endswith((".onnx", ".onnx.data"))
        if target.exists() and not earlier_export and target.resolve().parent == run_dir.resolve():
            raise RealnetError(f"--out {out}: {target.name} is a file of the run being exported; give a path "
                               "outside the run folder or a new name")


def require_export_packages() -> None:
    """The optional `export` extra, checked before any work rather than after tracing the graph."""
    for package in ("onnx", "onnxruntime"):
        try:
            importlib.import_module(package)
        except ImportError:
            raise RealnetError(f"realnet export needs the {package} package: pip install 'realnet[export]'") from None


def run_metadata(meta: Mapping) -> dict[str, str]:
    """The metadata_props a deployment needs, from a run's model.json."""
    data = meta.get("data", {})
    return {
        "realnet_version": __version__,
        "run_realnet_version": str(meta.get("realnet_version", "")),
        "threshold": repr(float(meta["threshold"])),
        # the map value realnet's heatmaps draw at full heat, so a deployment's overlays match predict's
        "map_display_max": repr(map_display_max(meta)),
        "image_size": str(int(meta["config"]["train"]["image_size"])),
        "backbone": str(meta["backbone"]["name"]),
        "backbone_sha256": str(meta["backbone"]["sha256"]),
        "category": str(data.get("category", "")),
        "dataset": str(data.get("dataset", "")),
        "input_format": INPUT_FORMAT,
        "output_format": f"{MAP_FORMATS[map_kind(meta['config'])]}; {score_format(meta['config'])}",
    }


def _data_description(data: Mapping) -> str:
    """Where the run's test images are: ROOT/CATEGORY, or a folder dataset's root and folders (its
    category is only a name)."""
    if data["dataset"] != "folder":
        return str(Path(data["root"]) / data["category"])
    folders = ", ".join(f"{name}={value}" for name, value in (data.get("folder_options") or {}).items()
                        if name.endswith("_dir"))
    return f"the folder dataset at {data['root']} ({folders})"


def parity_inputs(meta: Mapping, size: int, count: int) -> tuple[Tensor, str]:
    """`count` test images of the run's data, evenly spread over its sorted test split (so both
    normal and defective ones), as (N, 3, S, S) in [0, 1]; seeded random images when the data is
    gone or unreadable."""
    from realnet.data.layouts import load_dataset
    from realnet.engine.runtime import load_samples, to_tensor

    if count < 1:
        raise RealnetError(f"parity check needs at least one image, got {count}")
    data = meta.get("data", {})
    try:
        tests = [r for r in load_dataset(data["root"], data["category"], data["dataset"],
                                         **(data.get("folder_options") or {})) if r.split == "test"]
    except (KeyError, RealnetError, OSError):
        tests = []
    if tests:
        chosen = [tests[i] for i in np.unique(np.linspace(0, len(tests) - 1, count).round().astype(int))]
        images, _, kept, _ = load_samples(chosen, size, skip_bad=True, progress=False)
        if kept:
            return to_tensor(images), f"test images of {_data_description(data)}"
    generator = torch.Generator().manual_seed(PARITY_SEED)
    return torch.rand((count, 3, size, size), generator=generator), "random images"


def export_onnx(model: RealNet, out: str | Path, *, image_size: int, metadata: Mapping[str, str],
                parity_images: Tensor, image_source: str = "given images", opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = False, map_tolerance: float = MAP_TOLERANCE,
                score_tolerance: float = SCORE_TOLERANCE, external_data: bool | None = None) -> ExportReport:
    """Export `model` (on the CPU, in eval mode) for images of `image_size`, check parity on
    `parity_images` (N, 3, S, S), then move the files into place. `external_data` None decides by
    size (weights beyond 2 GiB go to ``<out name>.data``). Raises RealnetError when the parity
    is outside the tolerances; nothing is then written at `out`."""
    import onnx

    out = Path(out)
    check_opset(opset)
    _refuse_a_folder(out)
    created = missing_folders(out.parent)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RealnetError(f"--out {out}: cannot create its folder {out.parent} ({error.strerror})") from None
    data_name = f"{out.name}.data"
    # the name cut, so that a legal --out near the file system's 255-byte limit has room for the suffix
    staging_prefix = f".{cut_to_bytes(out.name, 200)}.export-"
    with removed_on_failure(created):  # a failed or interrupted export leaves none of the folders it made
        remove_stale_staging(out.parent, staging_prefix)  # a killed export's copies of the model
        try:
            staging_folder = tempfile.TemporaryDirectory(dir=out.parent, prefix=staging_prefix)
        except OSError as error:  # named by its folder, not by the staging name the user never chose
            raise RealnetError(f"--out {out}: cannot write in {out.parent} ({error.strerror})") from None
        with staging_folder as staging:
            traced = Path(staging) / "traced.onnx"
            trace_to_onnx(model, image_size, traced, opset=opset, dynamic_batch=dynamic_batch)
            proto = onnx.load(str(traced))
            onnx.helper.set_model_props(proto, dict(metadata))
            _declare_output_shapes(proto, image_size, dynamic_batch)
            separate = external_data if external_data is not None else _weight_bytes(proto) > PROTOBUF_LIMIT_BYTES
            staged = Path(staging) / out.name
            onnx.save_model(proto, str(staged), save_as_external_data=separate, all_tensors_to_one_file=True,
                            location=data_name)
            onnx.checker.check_model(str(staged))
            batch_sizes = (len(parity_images), 1) if dynamic_batch else (1,)
            parity = check_parity(model, staged, parity_images, batch_sizes=batch_sizes, image_source=image_source,
                                  map_tolerance=map_tolerance, score_tolerance=score_tolerance)
            if not parity.passed:
                raise RealnetError(
                    f"{out}: ONNX parity check failed on {parity.n_images} {parity.image_source}: max |map "
                    f"difference| {parity.max_abs_map_difference:.3g} (tolerance {map_tolerance:g}), max |score "
                    f"difference| {parity.max_abs_score_difference:.3g} (tolerance {score_tolerance:g}); not written")
            files = [out]
            if separate:
                shutil.copymode(staged, Path(staging) / data_name)  # onnx creates it owner-only
                os.replace(Path(staging) / data_name, out.parent / data_name)
                files.append(out.parent / data_name)
            os.replace(staged, out)  # the model last: it never points at a half-written weights file
        return ExportReport(out, tuple(files), opset, dynamic_batch, dict(metadata), parity)


def check_opset(opset: int) -> None:
    if opset not in SUPPORTED_OPSETS:
        raise RealnetError(f"--opset {opset} is not supported (use {SUPPORTED_OPSETS.start} to "
                           f"{SUPPORTED_OPSETS.stop - 1})")


def trace_to_onnx(model: RealNet, image_size: int, path: Path, *, opset: int, dynamic_batch: bool) -> None:
    """torch.onnx.export of `InferenceGraph(model)` with the TorchScript exporter.

    Its TracerWarnings come from the models' shape checks on the fixed spatial size, so they
    are silenced; a batch size baked in by mistake would show in the parity check, which runs at
    batch sizes other than the traced one."""
    model = model.cpu().eval()
    batch = TRACE_BATCH if dynamic_batch else 1
    example = torch.rand((batch, 3, image_size, image_size), generator=torch.Generator().manual_seed(PARITY_SEED))
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)} if dynamic_batch else None
    with warnings.catch_warnings(), _explicit_batchnorm_affine(model):
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        torch.onnx.export(InferenceGraph(model), (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_axes=axes,
                          do_constant_folding=True)


def check_parity(model: RealNet, onnx_path: str | Path, images: Tensor, *, batch_sizes: tuple[int, ...] = (1,),
                 image_source: str = "given images", map_tolerance: float = MAP_TOLERANCE,
                 score_tolerance: float = SCORE_TOLERANCE) -> ParityReport:
    """Max absolute differences between onnxruntime (CPU) and `model.predict` on `images`
    (N, 3, S, S) in [0, 1], run in consecutive chunks of each batch size in `batch_sizes`.

    The tolerances are absolute for outputs up to magnitude 1 and relative above it (multiplied by
    the largest |PyTorch output|): standardised and fused maps multiply float32 rounding by their
    scales (up to 1 / MIN_STD = 100), so a fixed bound refused correct graphs."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    images = images.detach().float().cpu()
    expected_maps, expected_scores = (t.numpy() for t in model.cpu().eval().predict(images))
    map_difference = score_difference = 0.0
    for batch in batch_sizes:
        for start in range(0, len(images) - batch + 1, batch):
            maps, scores = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images[start:start + batch].numpy()})
            map_difference = max(map_difference, _largest_difference(maps, expected_maps[start:start + batch]))
            score_difference = max(score_difference, _largest_difference(scores, expected_scores[start:start + batch]))
    return ParityReport(len(images), image_source, tuple(batch_sizes), map_difference, score_difference,
                        map_tolerance * max(1.0, float(np.abs(expected_maps).max())),
                        score_tolerance * max(1.0, float(np.abs(expected_scores).max())))


def _largest_difference(got: np.ndarray, expected: np.ndarray) -> float:
    """max |got - expected|, infinite where either is NaN: max(0.0, nan) is 0.0, so a graph that
    outputs NaN passed the parity check."""
    difference = np.abs(got.astype(np.float64) - expected)
    return float("inf") if np.isnan(difference).any() else float(difference.max(initial=0.0))


@contextmanager
def _explicit_batchnorm_affine(model: nn.Module) -> Iterator[None]:
    """While exporting, give every BatchNorm without affine parameters (RRS's ranking norm) an
    identity scale and shift on the CPU. The TorchScript exporter needs the channel count of an
    affine-free BatchNorm's input, which it loses after the bilinear residual resizing when the
    batch is dynamic; explicit ones and zeros give the same output. Removed again on exit."""
    patched = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.affine]
    try:
        for norm in patched:
            norm.weight = nn.Parameter(torch.ones(norm.num_features), requires_grad=False)
            norm.bias = nn.Parameter(torch.zeros(norm.num_features), requires_grad=False)
            norm.affine = True
        yield
    finally:
        for norm in patched:
            norm.weight = None
            norm.bias = None
            norm.affine = False


def _declare_output_shapes(proto, image_size: int, dynamic_batch: bool) -> None:
    """The tracer leaves the outputs' spatial sides symbolic; state them for deployment tools."""
    batch = "batch" if dynamic_batch else 1
    shapes = dict(zip(OUTPUT_NAMES, ((batch, image_size, image_size), (batch,)), strict=True))
    for output in proto.graph.output:
        for dim, value in zip(output.type.tensor_type.shape.dim, shapes[output.name], strict=True):
            if isinstance(value, int):
                dim.dim_value = value
            else:
                dim.dim_param = value


def _weight_bytes(proto) -> int:
    return sum(len(t.raw_data) for t in proto.graph.initializer)
