"""Eq. 6 with train.focal_gamma: realnet_loss's L_seg is the focal loss -(1 - p_t)^gamma log p_t
(computed here by hand from the softmax), not the cross-entropy, and L = L_recon + L_seg."""

import torch
import torch.nn.functional as F

from realnet.model.realnet import RealNetOutput, realnet_loss


def test_realnet_loss_uses_the_focal_gamma_it_is_given():
    torch.manual_seed(0)
    logits, masks = torch.randn(2, 2, 4, 4), torch.rand(2, 4, 4) > 0.5
    features = [torch.randn(2, 3, 4, 4)]
    output = RealNetOutput(reconstructions=[features[0] + 0.5], logits=logits)
    p_true = torch.where(masks, logits.softmax(1)[:, 1], logits.softmax(1)[:, 0])
    focal = (-(1 - p_true) ** 2 * p_true.log()).mean()
    loss, parts = realnet_loss(output, features, masks, 2.0)
    torch.testing.assert_close(torch.tensor(parts["seg"]), focal)
    torch.testing.assert_close(loss, torch.tensor(0.25) + focal)  # L_recon: mean of 0.5^2
    _, plain = realnet_loss(output, features, masks)
    torch.testing.assert_close(torch.tensor(plain["seg"]), F.cross_entropy(logits, masks.long()))
    assert abs(plain["seg"] - parts["seg"]) > 1e-3
