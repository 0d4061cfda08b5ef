"""run_feature_selection (Eq. 4 over `selection.batches` batches): every configured batch is
scored, each on its own draw of images, each anomalous sample against its own normal image, and
the per-channel losses are summed over the batches (not only the last one kept)."""

from types import SimpleNamespace

import numpy as np
import torch

from realnet.config import load_config
from realnet.engine import fit as fit_module
from realnet.engine.runtime import Stream, to_tensor
from realnet.model.afs import FeatureSelector, afs_loss


def _stub(n_images=6, size=8, seed=0):
    """Fit images, and per fit image a fixed 'synthetic' anomaly (image + mask) that make() returns
    for whichever indices it is asked for. Features are the pixels (3 channels)."""
    rng = np.random.default_rng(seed)
    normal = rng.integers(0, 150, (n_images, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n_images, size, size), np.float32)
    anomalous = normal.copy()
    for i in range(n_images):
        y, x = rng.integers(0, size - 3, 2)
        masks[i, y:y + 3, x:x + 3] = 1
        # every channel changes, by image-dependent amounts, so the losses depend on which images are drawn
        anomalous[i] = np.clip(normal[i] + rng.integers(0, 100, (1, 1, 3)) * masks[i][..., None]
                               + rng.integers(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    calls = []

    def make(indices, key, force_anomalous):
        calls.append((tuple(int(k) for k in key), np.array(indices)))
        return SimpleNamespace(images=anomalous[indices], masks=masks[indices])

    batches = SimpleNamespace(images=SimpleNamespace(fit=normal), make=make)
    return batches, calls, normal, anomalous, masks


def test_afs_scores_every_batch_on_its_own_draw_and_sums_the_losses():
    batches, calls, normal, anomalous, masks = _stub()
    model = SimpleNamespace(selector=FeatureSelector("afs", [3], [1]), backbone=lambda x: [x])
    config = load_config("tiny", overrides=["selection.batches=3", "selection.batch_size=4"])
    summary = fit_module.run_feature_selection(model, batches, config, torch.device("cpu"), progress=False)

    # exactly selection.batches batches, keyed 0, 1, 2
    assert [key for key, _ in calls] == [(int(Stream.AFS_SAMPLE), b) for b in range(3)]
    # each batch draws its own images (not one draw repeated)
    assert len({tuple(indices) for _, indices in calls}) > 1
    # with enough fit images a batch holds no image twice
    assert all(len(set(indices.tolist())) == len(indices) for _, indices in calls)
    # Eq. 4 summed over the batches, each anomalous image paired with its own normal image
    expected = sum(afs_loss(to_tensor(anomalous[idx]), to_tensor(normal[idx]), torch.from_numpy(masks[idx])).double()
                   for _, idx in calls)
    np.testing.assert_allclose(summary["losses"][0], expected.tolist(), rtol=1e-6)
    assert summary["indices"] == [[int(torch.argmin(expected))]]
