"""`realnet predict`: score single images or folders with a finished run."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

from realnet.data.io import read_image, resize_image
from realnet.data.layouts import IMAGE_EXTENSIONS
from realnet.engine.evaluate import load_run
from realnet.engine.runtime import resolve_device, to_tensor
from realnet.errors import BadFileError, RealnetError


def expand_inputs(paths: list[str]) -> Iterator[Path]:
    for name in paths:
        path = Path(name)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*")
                              if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())
        else:
            yield path


def predict(run_dir: Path, inputs: list[str], *, save_maps: Path | None = None, device: str = "auto",
            out=None, err=None) -> int:
    """Prints one JSON line per image; returns the number of images that failed. Maps are saved
    as `<position>_<stem>.png`, so inputs that share a file name never overwrite each other."""
    from PIL import Image

    from realnet.report.panels import map_display_max, map_to_uint8

    out, err = out or sys.stdout, err or sys.stderr
    torch_device = resolve_device(device)
    model, meta = load_run(Path(run_dir), torch_device)
    size, threshold = meta["config"]["train"]["image_size"], meta["threshold"]
    display_max = map_display_max(meta)
    failures = 0
    paths = list(expand_inputs(inputs))
    if not paths:
        raise RealnetError(f"no image files in {', '.join(str(i) for i in inputs)} (pass image files or folders "
                           "holding them)")
    created = False
    if save_maps is not None:
        save_maps = Path(save_maps)
        created = not save_maps.exists()
        try:
            save_maps.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RealnetError(f"--save-maps {save_maps}: cannot create the folder ({error.strerror})") from None
    for position, path in enumerate(paths):
        try:
            if not path.exists():
                raise BadFileError(path, "file not found")
            image = resize_image(read_image(path), size)
        except BadFileError as error:
            print(f"realnet: error: {error}", file=err)
            failures += 1
            continue
        maps, scores = model.predict(to_tensor(image[None], torch_device))
        score = float(scores[0])
        result = {"path": str(path), "score": round(score, 6), "is_anomalous": score > threshold,
                  "threshold": round(threshold, 6)}
        if save_maps is not None:
            map_path = save_maps / f"{position:05d}_{path.stem}.png"
            Image.fromarray(map_to_uint8(maps[0].cpu().numpy(), display_max)).save(map_path)
            result["map"] = str(map_path)
        print(json.dumps(result), file=out, flush=True)
    if created and failures == len(paths):
        save_maps.rmdir()  # created for maps of which none came
    return failures
