"""Pure metric functions on numpy arrays or torch tensors: exact AUROC, AUPRO, AP and F1-max."""

from realnet.metrics.aupro import aupro
from realnet.metrics.ranking import (
    average_precision,
    f1_max,
    f1_max_threshold,
    image_auroc,
    pixel_auroc,
)

__all__ = [
    "aupro",
    "average_precision",
    "f1_max",
    "f1_max_threshold",
    "image_auroc",
    "pixel_auroc",
]
