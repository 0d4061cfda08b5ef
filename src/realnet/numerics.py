"""Numerical helpers shared by the models, the engine and the metrics (pure, no I/O)."""

from __future__ import annotations

import torch
from torch import Tensor

DEVICES_WITHOUT_FLOAT64 = ("mps",)


def float64_device(device: torch.device) -> torch.device:
    """Where float64 statistics of tensors on `device` are accumulated: on the device itself,
    or on the CPU for devices that have no float64 (Apple's MPS)."""
    return torch.device("cpu") if device.type in DEVICES_WITHOUT_FLOAT64 else device


def as_float64(tensor: Tensor) -> Tensor:
    """`tensor`, detached, in float64 on `float64_device` of its device."""
    return tensor.detach().to(float64_device(tensor.device), torch.float64)
