"""Heatmap panels: image | ground truth | anomaly-map overlay, for the best and worst cases."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from realnet.config import map_kind
from realnet.data.io import read_sample
from realnet.data.records import Record
from realnet.errors import BadFileError
from realnet.files import cut_to_bytes

PANEL_MAX_SIDE = 1024  # a panel is three of these side by side
_CASE_BYTES = 200  # of a panel name's 255 for the defect and image stem: room for the kind, rank and score


def map_display_max(meta: dict) -> float:
    """The map value drawn at full heat, the same for every image of a run: 1 for probability
    maps; for position-normalised or fused maps (unbounded) twice the image threshold, which
    puts the threshold mid-scale."""
    if map_kind(meta["config"]) == "probability":
        return 1.0
    return max(2.0 * float(meta["threshold"]), 1e-6)


def map_to_uint8(anomaly_map: np.ndarray, display_max: float = 1.0) -> np.ndarray:
    """[0, display_max] -> 0..255, clipped (negative standardised values are below normal; +inf
    is drawn at full heat, -inf at none)."""
    return np.clip(np.round(anomaly_map / display_max * 255), 0, 255).astype(np.uint8)


def heatmap_overlay(image: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.5,
                    display_max: float = 1.0) -> np.ndarray:
    """Blend a JET-coloured map (on the fixed scale [0, display_max], not rescaled per image)
    over an RGB uint8 image."""
    import cv2

    heat = cv2.applyColorMap(map_to_uint8(anomaly_map, display_max), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return (image.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).astype(np.uint8)


def map_at_input_size(anomaly_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The run's square map stretched back (bilinear) onto the input's own (H, W), undoing the
    straight resize the image went through. Infinite values (a fused or normalised map can
    overflow) stay infinite at their nearest pixels, and the bilinear values around them come
    from the map's finite range: interpolated, they would turn their neighbours into NaN (inf * 0)."""
    import cv2

    height, width = shape
    anomaly_map = anomaly_map.astype(np.float32)
    infinite = np.isinf(anomaly_map)
    if not infinite.any():
        return cv2.resize(anomaly_map, (width, height), interpolation=cv2.INTER_LINEAR)
    finite = anomaly_map[np.isfinite(anomaly_map)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    stretched = cv2.resize(np.clip(anomaly_map, low, high), (width, height), interpolation=cv2.INTER_LINEAR)
    nearest = cv2.resize(anomaly_map, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
    return np.where(np.isinf(nearest), nearest, stretched)


def case_at_input_size(record: Record, anomaly_map: np.ndarray,
                       max_side: int = PANEL_MAX_SIDE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The case's image, mask and map at the file's own size and aspect (scaled down to `max_side`
    on the longer side if larger): a panel shows the part as the inspector sees it, not the
    network's square input."""
    import cv2

    image, mask = read_sample(record)
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    shape = (max(1, round(height * scale)), max(1, round(width * scale)))
    if shape != (height, width):
        image = cv2.resize(image, shape[::-1], interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask.astype(np.uint8), shape[::-1], interpolation=cv2.INTER_NEAREST) != 0
    return image, mask, map_at_input_size(anomaly_map, shape)


CAPTION_HEIGHT = 14  # one line of Pillow's default bitmap font
CAPTION_MARGIN = 2  # pixels left of the text


def caption_lines(caption: str, width: int) -> list[str]:
    """The caption wrapped at spaces into lines at most `width` pixels wide in Pillow's default
    font, so that a narrow part's panel keeps its threshold and colour scale; only a single word
    wider than the panel is cut."""
    from PIL import Image, ImageDraw

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def fits(text: str) -> bool:
        return draw.textlength(text) <= width

    def cut(word: str) -> str:
        while len(word) > 1 and not fits(word):
            word = word[:-1]
        return word

    lines: list[str] = []
    for word in caption.split():
        if lines and fits(f"{lines[-1]} {word}"):
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(cut(word))
    return lines


def panel(image: np.ndarray, mask: np.ndarray, anomaly_map: np.ndarray, display_max: float = 1.0,
          caption: str | None = None) -> np.ndarray:
    """image | ground truth | overlay, under an optional caption wrapped to the panel's width."""
    gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
    truth = np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2)
    row = np.concatenate([image, gap, truth, gap, heatmap_overlay(image, anomaly_map, display_max=display_max)],
                         axis=1)
    if caption is None:
        return row
    from PIL import Image, ImageDraw

    lines = caption_lines(caption, row.shape[1] - CAPTION_MARGIN) or [""]
    strip = Image.new("RGB", (row.shape[1], CAPTION_HEIGHT * len(lines)), "white")
    draw = ImageDraw.Draw(strip)
    for number, line in enumerate(lines):
        draw.text((CAPTION_MARGIN, 1 + CAPTION_HEIGHT * number), line, fill="black")
    return np.concatenate([np.asarray(strip), row], axis=0)


def caption_for(defect: str, score: float, threshold: float | None, display_max: float) -> str:
    """What a reader of a panel needs beside the pixels: the case, its score against the
    threshold, and the map's colour scale (the overlay's full heat is `display_max`)."""
    verdict = "" if threshold is None else f" {'>' if score > threshold else '<='} threshold {threshold:.3f}"
    return f"{defect}: score {score:.3f}{verdict}; map 0..{display_max:.3g}"


def pick_cases(labels: np.ndarray, scores: np.ndarray, count: int) -> dict[str, np.ndarray]:
    """Indices of the most instructive cases: missed anomalies and false alarms (worst), and the
    clearest detections (best)."""
    anomalous = np.flatnonzero(labels == 1)
    normal = np.flatnonzero(labels == 0)
    return {
        "worst_anomalous": anomalous[np.argsort(scores[anomalous])][:count],
        "worst_normal": normal[np.argsort(-scores[normal])][:count],
        "best_anomalous": anomalous[np.argsort(-scores[anomalous])][:count],
    }


def write_panels(out_dir: Path, split, maps: np.ndarray, scores: np.ndarray, count: int = 6,
                 display_max: float = 1.0, threshold: float | None = None) -> list[Path]:
    """Writes the captioned panels of `pick_cases`, each at its image's own size, into `out_dir`
    (created if missing) and returns their paths. `realnet test` writes them into a staging folder
    that replaces the run's panels/ as a whole, so they never mix with an earlier test's (their
    names carry scores)."""
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, indices in pick_cases(split.labels, scores, count).items():
        for rank, index in enumerate(indices):
            record = split.records[index]
            case = cut_to_bytes(f"{record.defect}_{record.image.stem}", _CASE_BYTES)
            name = f"{kind}_{rank:02d}_{case}_{scores[index]:.3f}.png"
            caption = caption_for(record.defect, float(scores[index]), threshold, display_max)
            try:
                image, mask, anomaly_map = case_at_input_size(record, maps[index])
            except BadFileError as error:  # moved or replaced since it was scored: draw the pixels scored
                sys.stderr.write(f"realnet: warning: panel {name} drawn at the run's image size: {error}\n")
                image, mask, anomaly_map = split.images[index], split.masks[index], maps[index]
            Image.fromarray(panel(image, mask, anomaly_map, display_max, caption)).save(out_dir / name, format="PNG")
            written.append(out_dir / name)
    return written
