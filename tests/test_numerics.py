"""Float64 statistics on devices without float64 (Apple's MPS) are kept on the CPU."""

import torch

from realnet.model.density import gaussian_statistics
from realnet.model.discriminator import position_statistics
from realnet.numerics import as_float64, float64_device


def test_statistics_stay_on_their_device_unless_it_has_no_float64():
    # regression: density, position and LPIPS statistics called .double() on the device, which
    # MPS refuses; a torch.device needs no hardware to be described
    assert float64_device(torch.device("mps")) == torch.device("cpu")
    assert float64_device(torch.device("mps", 0)) == torch.device("cpu")
    assert float64_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert float64_device(torch.device("cpu")) == torch.device("cpu")
    tensor = torch.ones(2, requires_grad=True)
    converted = as_float64(tensor)
    assert converted.dtype == torch.float64 and not converted.requires_grad


def test_statistics_go_through_the_float64_helper(monkeypatch):
    import realnet.model.density as density
    import realnet.model.discriminator as discriminator

    calls = []

    def counting(tensor):
        calls.append(tensor.shape)
        return as_float64(tensor)

    monkeypatch.setattr(density, "as_float64", counting)
    monkeypatch.setattr(discriminator, "as_float64", counting)
    batches = [torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    mean, covariance = gaussian_statistics(batches)
    position_statistics(b[:, 0] for b in batches)
    assert len(calls) == 4 and mean.dtype == covariance.dtype == torch.float64
