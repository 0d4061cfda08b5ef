"""realnet: RealNet (CVPR 2024) industrial visual anomaly detection."""

__version__ = "0.1.0"
