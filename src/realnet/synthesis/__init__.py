"""Training-time anomaly synthesis (paper Sec. 3.1, Eq. 3): Perlin masks, foreground rules, the
opacity blend, anomaly sources (dtd, sia, cutpaste, nsa; shade and crack, ours) and the per-sample synthesizer."""

from realnet.synthesis.blend import blend_anomaly
from realnet.synthesis.foreground import FOREGROUND_RULES, ForegroundRule, foreground_mask, foreground_rule
from realnet.synthesis.perlin import perlin_mask, perlin_noise
from realnet.synthesis.sources import CutPasteSource, DTDSource, NSASource, SIASource
from realnet.synthesis.synthesizer import AnomalySynthesizer, SynthesisConfig, SynthesizedSample

__all__ = [
    "FOREGROUND_RULES",
    "AnomalySynthesizer",
    "CutPasteSource",
    "DTDSource",
    "ForegroundRule",
    "NSASource",
    "SIASource",
    "SynthesisConfig",
    "SynthesizedSample",
    "blend_anomaly",
    "foreground_mask",
    "foreground_rule",
    "perlin_mask",
    "perlin_noise",
]
